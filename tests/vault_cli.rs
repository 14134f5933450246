//! `fyvault dev` (its printed curl commands, run with the real curl), `fyvault provider`, and
//! state surviving a restart.

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ENV, TestVault, loopback0, open, tok};
use fyvault::api::SecretState;
use fyvault::client::{VaultClient, WriteRequest, WriteValue};
use fyvault::secret::Secret;
use fyvault::vault::{self, ServerConfig};
use serde_json::Value;

/// A `fyvault dev` process; killed on drop if a test fails before stopping it.
struct Dev {
    child: Child,
    stdout: Vec<String>,
}

impl Dev {
    fn start(data: &std::path::Path, extra: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fyvault"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                // The vault alone: the dev agent is tested in tests/dev_mode.rs.
                "--no-agent",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("fyvault dev did not get ready");
            let ready = line.starts_with("Ready.");
            stdout.push(line);
            if ready {
                break;
            }
        }
        Dev { child, stdout }
    }

    /// Ctrl-C, then a clean exit.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "dev did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The printed curl commands, continuation lines joined.
    fn curl_commands(&self) -> Vec<String> {
        let mut cmds = Vec::new();
        let mut cur: Option<String> = None;
        for line in &self.stdout {
            match cur.as_mut() {
                Some(c) => c.push_str(line.trim_end_matches('\\')),
                None if line.starts_with("curl ") => {
                    cur = Some(line.trim_end_matches('\\').to_string())
                }
                None => continue,
            }
            if !line.ends_with('\\') {
                cmds.extend(cur.take());
            }
        }
        cmds
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(cmd: &str) -> Value {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn facts(data: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(data.join("dev.json")).unwrap()).unwrap()
}

#[test]
fn dev_prints_curl_commands_that_work_and_keeps_state_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = Dev::start(&data, &["--grace", "120"]);
    let f = facts(&data);
    for key in [
        "url",
        "org_id",
        "environment",
        "provider_id",
        "provider_token",
        "admin_token",
    ] {
        assert!(
            f[key].as_str().is_some_and(|v| !v.is_empty()),
            "dev.json lacks {key}: {f}"
        );
    }
    assert_eq!(f["environment"], "production");
    for file in ["dev.json", "production.key", "vault.db"] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }
    let printed = dev.stdout.join("\n");
    assert!(printed.contains(f["url"].as_str().unwrap()));

    let cmds = dev.curl_commands();
    assert_eq!(cmds.len(), 3, "{printed}");
    assert!(cmds[0].contains("-X POST") && cmds[0].contains("/push"));
    assert!(cmds[1].contains("-X PATCH") && cmds[2].contains("-X DELETE"));
    let pushed = sh(&cmds[0]);
    assert_eq!(
        (pushed["secret_name"].as_str(), pushed["version"].as_u64()),
        (Some("STRIPE_SK"), Some(1))
    );
    let rotated = sh(&cmds[1]);
    assert_eq!(rotated["version"], 2);
    assert!(rotated["previous_version_expires_at"].is_string());
    // Between rotate and revoke, an agent of the environment reads both values.
    let key = fyvault::crypto::PrivateKey::from_file_contents(
        &std::fs::read(data.join("production.key")).unwrap(),
    )
    .unwrap();
    let org = f["org_id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = VaultClient::new(f["url"].as_str().unwrap())
        .unwrap()
        .with_token(Secret::copy_from(
            f["admin_token"].as_str().unwrap().as_bytes(),
        ));
    let sync = rt.block_on(async {
        let agent = admin
            .create_agent_token(&org, "production", &Default::default())
            .await
            .unwrap();
        admin
            .clone()
            .with_token(agent.token)
            .sync(&org, "production", 0, 0)
            .await
            .unwrap()
    });
    let s = sync.secrets.iter().find(|s| s.name == "STRIPE_SK").unwrap();
    assert_eq!(
        open(
            &key,
            &org,
            "production",
            "STRIPE_SK",
            s.sealed_value.as_ref().unwrap()
        ),
        b"sk_test_second"
    );
    let prev = s.previous.as_ref().unwrap();
    assert_eq!(
        open(&key, &org, "production", "STRIPE_SK", &prev.sealed_value),
        b"sk_test_first"
    );
    assert!(prev.grace_remaining_ms <= 120_000, "--grace 120 applies");
    // The demo secret is there and opens.
    let demo = sync
        .secrets
        .iter()
        .find(|s| s.name == "DEMO_GREETING")
        .unwrap();
    assert_eq!(
        open(
            &key,
            &org,
            "production",
            "DEMO_GREETING",
            demo.sealed_value.as_ref().unwrap()
        ),
        b"hello from fyvault"
    );
    let revoked = sh(&cmds[2]);
    assert_eq!(
        revoked["revoked_environments"],
        serde_json::json!(["production"])
    );
    dev.stop();

    // Same data dir again: same org, provider and tokens; the secret history is kept.
    let dev = Dev::start(&data, &["--grace", "7"]);
    let g = facts(&data);
    for key in [
        "org_id",
        "environment",
        "provider_id",
        "provider_token",
        "admin_token",
    ] {
        assert_eq!(f[key], g[key], "{key} changed across runs");
    }
    let admin = VaultClient::new(g["url"].as_str().unwrap())
        .unwrap()
        .with_token(Secret::copy_from(
            g["admin_token"].as_str().unwrap().as_bytes(),
        ));
    let envs = rt.block_on(admin.list_environments(&org)).unwrap();
    assert_eq!(envs.environments[0].default_grace_seconds, 7);
    let again = sh(&dev.curl_commands()[0]);
    assert_eq!(again["version"], 3, "history survived the restart");
    dev.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_command_seals_client_side_from_file_or_stdin() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let value_file = dir.path().join("value.bin");
    let value: &[u8] = b"sk_live_\x00\xff binary\n";
    std::fs::write(&value_file, value).unwrap();
    let token = tok(&f.provider_token);
    let run = |args: Vec<String>, stdin: Option<&'static [u8]>| {
        let url = tv.url.clone();
        let (org, provider, token) = (f.org.clone(), f.provider.clone(), token.clone());
        async move {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyvault"));
            cmd.args([
                "provider",
                "--url",
                &url,
                "--org",
                &org,
                "--provider",
                &provider,
                "--json",
            ])
            .args(&args)
            .env("FYVAULT_PROVIDER_TOKEN", &token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            if let Some(bytes) = stdin {
                tokio::io::AsyncWriteExt::write_all(&mut pipe, bytes)
                    .await
                    .unwrap();
            }
            drop(pipe);
            child.wait_with_output().await.unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = run(
        s(&[
            "push",
            "--environment",
            ENV,
            "--name",
            "BIN",
            "--file",
            value_file.to_str().unwrap(),
        ]),
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["version"], 1);

    let out = run(
        s(&[
            "rotate",
            "--environment",
            ENV,
            "--name",
            "BIN",
            "--grace",
            "0",
            "--trim-newline",
        ]),
        Some(b"from-stdin\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = tv.client(&f.agent_token);
    let sync = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    let bin = &sync.secrets[0];
    assert_eq!(bin.version, 2);
    assert_eq!(
        open(
            &f.key,
            &f.org,
            ENV,
            "BIN",
            bin.sealed_value.as_ref().unwrap()
        ),
        b"from-stdin"
    );
    assert!(bin.previous.is_none(), "--grace 0");
    let history = tv
        .admin
        .audit(&f.org, &Default::default())
        .await
        .unwrap()
        .records;
    assert!(
        history
            .iter()
            .any(|r| r.action == "rotated" && r.version == Some(2))
    );

    // Exact bytes from a file (binary, trailing newline kept) round-trip through sealing.
    let out = run(
        s(&[
            "push",
            "--environment",
            ENV,
            "--name",
            "EXACT",
            "--file",
            value_file.to_str().unwrap(),
        ]),
        None,
    )
    .await;
    assert!(out.status.success());
    let sync = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    let exact = sync.secrets.iter().find(|s| s.name == "EXACT").unwrap();
    assert_eq!(
        open(
            &f.key,
            &f.org,
            ENV,
            "EXACT",
            exact.sealed_value.as_ref().unwrap()
        ),
        value
    );

    // --plaintext lets the vault seal it.
    let out = run(
        s(&[
            "push",
            "--environment",
            ENV,
            "--name",
            "PLAIN",
            "--plaintext",
        ]),
        Some(b"p-value"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refusals: an empty value, a value on the command line, a bad name (server's message).
    let out = run(
        s(&["push", "--environment", ENV, "--name", "EMPTY"]),
        Some(b""),
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    let out = run(
        s(&[
            "push",
            "--environment",
            ENV,
            "--name",
            "X",
            "--value",
            "oops",
        ]),
        None,
    )
    .await;
    assert!(!out.status.success());
    let out = run(
        s(&[
            "push",
            "--environment",
            ENV,
            "--name",
            "bad-name",
            "--plaintext",
        ]),
        Some(b"v"),
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_secret_name"));

    let out = run(s(&["revoke", "--name", "BIN"]), None).await;
    assert!(out.status.success());
    let sync = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    let bin = sync.secrets.iter().find(|s| s.name == "BIN").unwrap();
    assert_eq!(bin.state, SecretState::Revoked);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let handle = vault::start(ServerConfig::new(dir.path().join("data"), loopback0()))
        .await
        .unwrap();
    let tv = TestVault::around(handle, dir).await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let req = |v: &str| WriteRequest {
        secret_name: "KEEP".into(),
        environment: ENV.into(),
        value: WriteValue::Plaintext(Secret::copy_from(v.as_bytes())),
        grace_period_seconds: Some(3600),
        idempotency_key: Some(format!("key-{v}")),
    };
    prov.push(&f.org, &f.provider, &req("one")).await.unwrap();
    let first = prov.rotate(&f.org, &f.provider, &req("two")).await.unwrap();
    let before = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();

    let TestVault {
        handle,
        dir,
        admin_token,
        ..
    } = tv;
    handle.shutdown().await;
    let handle = vault::start(ServerConfig::new(dir.path().join("data"), loopback0()))
        .await
        .unwrap();
    let url = handle.url();
    let client = |t: &Secret| VaultClient::new(&url).unwrap().with_token(t.clone());

    let after = client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.secrets[0].version, 2);
    assert_eq!(
        after.secrets[0].sealed_value,
        before.secrets[0].sealed_value
    );
    let prev = after.secrets[0].previous.as_ref().unwrap();
    assert_eq!(
        open(&f.key, &f.org, ENV, "KEEP", &prev.sealed_value),
        b"one"
    );
    // Tokens and idempotency records survived too.
    client(&admin_token).whoami().await.unwrap();
    let replay = client(&f.provider_token)
        .rotate(&f.org, &f.provider, &req("two"))
        .await
        .unwrap();
    assert_eq!(replay, first);
    // And incremental sync continues from the old revision.
    let next = client(&f.provider_token)
        .rotate(&f.org, &f.provider, &req("three"))
        .await
        .unwrap();
    assert_eq!(next.version, 3);
    let inc = client(&f.agent_token)
        .sync(&f.org, ENV, before.revision, 0)
        .await
        .unwrap();
    assert!(!inc.full);
    assert_eq!(inc.secrets[0].version, 3);
    handle.shutdown().await;
    drop(dir);
}
