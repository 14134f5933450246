//! The real vault (subprocess) and the real agent (in-process, or the binary) on loopback:
//! sync, rotation with grace, revocation, events, access by uid, outages, token changes.

mod agent_support;

use std::path::Path;

use agent_support::vault::{Log, VaultProc, World, write_private};
use agent_support::*;
use fyvault::api::CreateTokenRequest;

async fn value(sock: &Path, path: &str) -> Option<Vec<u8>> {
    let r = get(sock, path).await;
    (r.status == 200).then_some(r.body)
}

async fn wait_value(sock: &Path, path: &str, want: &[u8]) {
    eventually(
        &format!("{path} to read {:?}", String::from_utf8_lossy(want)),
        || async { (value(sock, path).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

async fn wait_status(sock: &Path, path: &str, status: u16) {
    eventually(&format!("{path} to answer {status}"), || async {
        (get(sock, path).await.status == status).then_some(())
    })
    .await;
}

async fn health(sock: &Path) -> serde_json::Value {
    get(sock, "/v1/health").await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rotate_grace_revoke_through_the_socket() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("STRIPE_SK", b"sk_one").await;
    let agent = w.start_agent("").await;
    let sock = agent.socket().to_owned();
    // The first sync is done before start returns.
    let r = get(&sock, "/v1/secrets/STRIPE_SK").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"sk_one"[..]));
    assert_eq!(r.headers["fyvault-version"], "1");
    assert_eq!(health(&sock).await["status"], "ready");

    // Rotation with a long grace: new value for new reads, the old one as previous.
    let v2 = w.rotate("STRIPE_SK", b"sk_two", 600).await;
    wait_value(&sock, "/v1/secrets/STRIPE_SK", b"sk_two").await;
    let r = get(&sock, "/v1/secrets/STRIPE_SK").await;
    assert_eq!(r.headers["fyvault-version"], v2.to_string().as_str());
    let r = get(&sock, "/v1/secrets/STRIPE_SK?version=previous").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"sk_one"[..]));

    // Rotation with a short grace: the previous goes away when it ends.
    w.push("AWS_KEY", b"aws_one").await;
    wait_value(&sock, "/v1/secrets/AWS_KEY", b"aws_one").await;
    w.rotate("AWS_KEY", b"aws_two", 1).await;
    wait_value(&sock, "/v1/secrets/AWS_KEY", b"aws_two").await;
    wait_status(&sock, "/v1/secrets/AWS_KEY?version=previous", 404).await;
    let r = get(&sock, "/v1/secrets/AWS_KEY?version=previous").await;
    assert_eq!(r.error_code(), "no_previous");
    assert_eq!(
        value(&sock, "/v1/secrets/AWS_KEY").await.unwrap(),
        b"aws_two"
    );

    // Revoke: current and previous are gone together.
    w.revoke("STRIPE_SK").await;
    wait_status(&sock, "/v1/secrets/STRIPE_SK", 404).await;
    assert_eq!(
        get(&sock, "/v1/secrets/STRIPE_SK?version=previous")
            .await
            .status,
        404
    );
    let names: Vec<String> = get(&sock, "/v1/secrets").await.json()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["AWS_KEY".to_owned()]);
    agent.shutdown().await.unwrap();
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_deliver_rotated_and_revoked() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("EV_KEY", b"one").await;
    let agent = w.start_agent("").await;
    let mut ev = Events::open(agent.socket()).await;
    let v2 = w.rotate("EV_KEY", b"two", 600).await;
    let d = ev.expect("rotated", "EV_KEY").await;
    assert_eq!(d["version"].as_u64(), Some(v2));
    assert_eq!(d["previous_version"].as_u64(), Some(v2 - 1));
    w.push("NEW_KEY", b"n").await;
    ev.expect("added", "NEW_KEY").await;
    w.revoke("EV_KEY").await;
    let d = ev.expect("revoked", "EV_KEY").await;
    assert!(d["version"].as_u64().unwrap() >= v2);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_denied_and_a_rule_grants() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("PRIVATE_KEY", b"private-canary").await;
    w.push("APP_TOKEN", b"app-value").await;
    let agent = w
        .start_agent("[[access.rule]]\nsecrets = [\"APP_*\"]\nusers = [65534]\n")
        .await;
    let sock = agent.socket().to_str().unwrap().to_owned();
    let res = tokio::task::spawn_blocking(move || {
        let env = [("FYVAULT_SOCKET", sock.as_str())];
        let bin = fyvault();
        Some((
            as_nobody(&bin, &["get", "PRIVATE_KEY"], &env)?,
            as_nobody(&bin, &["ls"], &env)?,
            as_nobody(&bin, &["get", "APP_TOKEN"], &env)?,
            as_nobody(
                Path::new("/usr/bin/curl"),
                &[
                    "-s",
                    "--unix-socket",
                    &sock,
                    "http://x/v1/secrets/PRIVATE_KEY",
                ],
                &[],
            )?,
        ))
    })
    .await
    .unwrap();
    let Some((denied, ls, granted, curl)) = res else {
        agent_support::skip::skip(
            "another_uid_is_denied_and_a_rule_grants",
            "cannot switch to uid 65534 here",
        );
        return;
    };
    assert!(!denied.status.success());
    let e = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("may not read PRIVATE_KEY"), "{e}");
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(!listing.contains("PRIVATE_KEY"), "{listing}");
    assert!(listing.contains("APP_TOKEN"));
    assert_eq!(granted.stdout, b"app-value");
    let body: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(!String::from_utf8_lossy(&curl.stdout).contains("canary"));
    // Root still reads it.
    assert_eq!(
        value(agent.socket(), "/v1/secrets/PRIVATE_KEY")
            .await
            .unwrap(),
        b"private-canary"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_keeps_serving_and_recovers_without_restart() {
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    w.push("DB_PASSWORD", b"pw-one").await;
    let agent = w.start_agent("").await;
    let sock = agent.socket().to_owned();

    let port = w.vault.port;
    tokio::task::block_in_place(|| w.vault.stop());
    let h = eventually("health to say degraded", || async {
        let h = health(&sock).await;
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    assert!(h["reason"].as_str().unwrap().contains("unreachable"), "{h}");
    assert!(h["since"].is_string());
    // Reads keep working while the vault is down.
    assert_eq!(
        value(&sock, "/v1/secrets/DB_PASSWORD").await.unwrap(),
        b"pw-one"
    );

    // The vault comes back on the same data dir and port; a rotation made now arrives.
    w.vault = tokio::task::block_in_place(|| VaultProc::start(&w.data_dir, port, "info", &log));
    w.rotate("DB_PASSWORD", b"pw-two", 600).await;
    wait_value(&sock, "/v1/secrets/DB_PASSWORD", b"pw-two").await;
    eventually("health to say ready", || async {
        (health(&sock).await["status"] == "ready").then_some(())
    })
    .await;
    assert_eq!(
        value(&sock, "/v1/secrets/DB_PASSWORD?version=previous")
            .await
            .unwrap(),
        b"pw-one"
    );
    agent.shutdown().await.unwrap();
}

/// With long-polls of 120 s, the agent is `ready` again as soon as the vault answers after an
/// outage, not when a long-poll would end (the retry after a failure does not wait for news).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_back_means_ready_at_once_even_with_long_polls() {
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    w.push("DB_PASSWORD", b"pw-one").await;
    let agent = w.start_agent("sync_wait_seconds = 120\n").await;
    let sock = agent.socket().to_owned();
    let port = w.vault.port;
    tokio::task::block_in_place(|| w.vault.stop());
    eventually("health to say degraded", || async {
        (health(&sock).await["status"] == "degraded").then_some(())
    })
    .await;
    // Read while the vault is down: an access event waits in the spool.
    assert_eq!(
        value(&sock, "/v1/secrets/DB_PASSWORD").await.unwrap(),
        b"pw-one"
    );
    w.vault = tokio::task::block_in_place(|| VaultProc::start(&w.data_dir, port, "info", &log));
    // Nothing changes in the vault, so only a fresh request can tell (DEADLINE < 120 s).
    eventually("health to say ready", || async {
        (health(&sock).await["status"] == "ready").then_some(())
    })
    .await;
    eventually("the waiting access event to ship", || async {
        (health(&sock).await["audit"]["backlog_events"] == 0).then_some(())
    })
    .await;
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoked_upstream_is_reported_and_a_new_token_file_is_used() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("TK_KEY", b"one").await;
    let agent = w.start_agent("").await;
    let sock = agent.socket().to_owned();

    w.admin.revoke_token(&w.agent_token_id).await.unwrap();
    // Something must happen upstream for a waiting long-poll to come back early; either way
    // the next poll is refused.
    w.rotate("TK_KEY", b"two-while-refused", 600).await;
    let h = eventually("health to report the refused token", || async {
        let h = health(&sock).await;
        (h["status"] == "degraded"
            && h["reason"]
                .as_str()
                .unwrap_or("")
                .contains("refused the agent token (401)"))
        .then_some(h)
    })
    .await;
    assert!(h["since"].is_string());
    // Still serving what it had.
    assert!(value(&sock, "/v1/secrets/TK_KEY").await.is_some());

    // A new token is written to the file (replaced, as editors and installers do).
    let t2 = w
        .admin
        .create_agent_token(&w.org, &w.env, &CreateTokenRequest::default())
        .await
        .unwrap();
    write_private(&w.token_file, t2.token.expose());
    wait_value(&sock, "/v1/secrets/TK_KEY", b"two-while-refused").await;
    eventually("health to say ready", || async {
        (health(&sock).await["status"] == "ready").then_some(())
    })
    .await;
    agent.shutdown().await.unwrap();
}

/// The whole flow with the real binaries at trace level: no value (and no token) is ever
/// printed by the agent or the vault; SIGTERM stops the agent cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_show_values_or_tokens() {
    let vault_log = Log::default();
    let w = World::new("trace", &vault_log).await;
    let canary1 = b"CANARY-7f3a9-first";
    let canary2 = b"CANARY-7f3a9-second";
    let canary3 = b"CANARY-7f3a9-pushed-later";
    w.push("CANARY_KEY", canary1).await;
    let cfg = w.agent_config("");
    let agent_log = Log::default();
    // Stand in for systemd's notify socket.
    let notify_path = w.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = std::process::Command::new(fyvault());
    cmd.arg("agent")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("FYVAULT_LOG", "trace");
    let (mut child, _rx) = agent_support::vault::spawn_logged(cmd, &agent_log);
    let sock = w.socket();
    eventually("the agent binary to be ready", || async {
        if !sock.exists() {
            return None;
        }
        (health(&sock).await["status"] == "ready").then_some(())
    })
    .await;
    let h = health(&sock).await;
    assert_eq!(
        h["mlock"]["state"], "locked",
        "root with CAP_IPC_LOCK locks: {h}"
    );
    let notify = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within the deadline");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return notify;
            }
        }
    })
    .await
    .unwrap();
    let mut ev = Events::open(&sock).await;
    assert_eq!(
        value(&sock, "/v1/secrets/CANARY_KEY").await.unwrap(),
        canary1
    );
    w.rotate("CANARY_KEY", canary2, 600).await;
    ev.expect("rotated", "CANARY_KEY").await;
    w.push("OTHER_KEY", canary3).await;
    ev.expect("added", "OTHER_KEY").await;
    let j = request(
        &sock,
        "GET",
        "/v1/secrets/CANARY_KEY",
        Some("application/json"),
    )
    .await
    .json();
    assert_eq!(j["value"].as_str().unwrap().as_bytes(), canary2);
    assert_eq!(
        value(&sock, "/v1/secrets/CANARY_KEY?version=previous")
            .await
            .unwrap(),
        canary1
    );
    let s = sock.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(fyvault())
            .args(["get", "OTHER_KEY", "--socket"])
            .arg(&s)
            .env("FYVAULT_LOG", "trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.stdout, canary3);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("CANARY"));
    w.revoke("OTHER_KEY").await;
    ev.expect("revoked", "OTHER_KEY").await;

    let clean = tokio::task::spawn_blocking(move || agent_support::vault::terminate(&mut child))
        .await
        .unwrap();
    assert!(clean, "the agent exits 0 on SIGTERM");
    let mut buf = [0u8; 4096];
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
        {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 was sent");
    assert!(!sock.exists(), "the socket file is removed");

    let agent_text = agent_log.lock().unwrap().clone();
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        eprintln!("{agent_text}");
    }
    let vault_text = vault_log.lock().unwrap().clone();
    assert!(
        agent_text.contains("TRACE") || agent_text.contains("DEBUG"),
        "trace level is on"
    );
    assert!(agent_text.contains("CANARY_KEY"), "names may be logged");
    let token = std::fs::read(&w.token_file).unwrap();
    let token = String::from_utf8_lossy(token.trim_ascii()).into_owned();
    for (who, text) in [("agent", &agent_text), ("vault", &vault_text)] {
        assert!(!text.contains("CANARY-7f3a9"), "{who} log shows a value");
        assert!(!text.contains(&token), "{who} log shows the agent token");
        assert!(!text.contains("fvagent_"), "{who} log shows a token");
        assert!(!text.contains("fvprov_"), "{who} log shows a token");
    }
}

/// `grace_seconds` in the config caps how long this agent serves previous versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_cap_from_the_config() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("CAPPED", b"one").await;
    let agent = w.start_agent("grace_seconds = 0\n").await;
    let sock = agent.socket().to_owned();
    w.rotate("CAPPED", b"two", 600).await;
    wait_value(&sock, "/v1/secrets/CAPPED", b"two").await;
    let r = get(&sock, "/v1/secrets/CAPPED?version=previous").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_previous"));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_loose_token_file_modes() {
    use std::os::unix::fs::PermissionsExt;
    let log = Log::default();
    let w = World::new("info", &log).await;
    std::fs::set_permissions(&w.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = w.agent_config("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(fyvault())
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("token_file") && e.contains("0644"), "{e}");
    assert!(!w.socket().exists());
}

/// A key file of another environment is refused at start, in one line naming `key_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_key_of_another_environment() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    let (other, _) = fyvault::crypto::PrivateKey::generate();
    write_private(&w.key_file, other.to_file_contents().expose());
    let cfg = w.agent_config("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(fyvault())
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .env("FYVAULT_LOG", "off")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("key_file") && e.contains("not the private key"),
        "{e}"
    );
    assert!(!w.socket().exists());
}
