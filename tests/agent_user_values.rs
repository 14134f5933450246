//! Issue 14 end to end: a real vault process (logging at trace level), a real agent, its
//! socket and (when FUSE is here) its mount. User-vault secrets are read per user on the
//! socket, never appear in the mount or `.env`, rotate with grace and revoke per user; apps
//! get connect links through the socket; reads are audited with the user id; a canary user
//! value never reaches the vault's database file or logs.

mod agent_support;
#[allow(clippy::duplicate_mod)]
mod common_fuse;

use std::path::Path;
use std::process::Command;

use agent_support::vault::{Log, VaultProc, World};
use agent_support::{as_nobody, eventually, get, post_json, request, ship_all};
use common_fuse::{MountGuard, fuse_available};
use fyvault::api::{AuditQuery, SecretPolicy};
use fyvault::crypto::{PrivateKey, aad};
use fyvault::vault::store::sqlite::SqliteStore;
use fyvault::vault::store::{AuditContext, Store, WriteKind, WriteVersion};
use serde_json::json;

const NAME: &str = "OPENAI_KEY";

/// A user's value pushed (or rotated, with `grace`) by the world's provider.
async fn user_write(w: &World, method: &str, user: &str, value: &str, grace: Option<u64>) -> u64 {
    let mut body =
        json!({"secret_name": NAME, "environment": w.env, "value": value, "user_id": user});
    if let Some(g) = grace {
        body["grace_period_seconds"] = json!(g);
    }
    let path = match method {
        "POST" => format!("/api/v1/orgs/{}/providers/{}/push", w.org, w.provider_id),
        _ => format!("/api/v1/orgs/{}/providers/{}", w.org, w.provider_id),
    };
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", w.vault.url))
        .bearer_auth(String::from_utf8(w.provider_token.expose().to_vec()).unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let j: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status}: {j}");
    j["version"].as_u64().unwrap()
}

async fn revoke_user(w: &World, user: Option<&str>) {
    let mut body = json!({ "secret_name": NAME });
    if let Some(u) = user {
        body["user_id"] = json!(u);
    }
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/orgs/{}/providers/{}",
            w.vault.url, w.org, w.provider_id
        ))
        .bearer_auth(String::from_utf8(w.provider_token.expose().to_vec()).unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

/// `GET /v1/secrets/NAME?user=…` until it answers `status` (with `body` when given).
async fn until(sock: &Path, path: &str, status: u16, body: Option<&str>) -> agent_support::Answer {
    eventually(path, || async {
        let a = get(sock, path).await;
        (a.status == status && body.is_none_or(|b| a.text() == b)).then_some(a)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_values_end_to_end() {
    let log = Log::default();
    let w = World::new("trace", &log).await;
    // The admin declares the secret user-vault with the CLI.
    let admin_file = w.dir.path().join("admin.token");
    let out = Command::new(agent_support::fyvault())
        .args([
            "admin",
            "secret",
            "policy",
            "--url",
            &w.vault.url,
            "--token-file",
        ])
        .arg(&admin_file)
        .args([
            "--org",
            &w.org,
            "--environment",
            &w.env,
            "--name",
            NAME,
            "--policy",
            "user",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy user"));
    w.push("SHARED_KEY", b"shared-value").await;
    let canary = "sk-canary-7f3a9e1c5b";
    user_write(&w, "POST", "alice", canary, None).await;
    user_write(&w, "POST", "bob", "sk-bob-1", None).await;

    let fuse = fuse_available("user_values_end_to_end");
    let mount = w.dir.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    let _guard = MountGuard(mount.clone());
    let extra = if fuse {
        format!("fuse = true\nmount = \"{}\"\n", mount.display())
    } else {
        "fuse = false\n".to_owned()
    };
    let agent = w.start_agent(&extra).await;
    let sock = w.socket();

    // Reading: per user; the missing case says "connect"; no user is a 400.
    let a = until(
        &sock,
        &format!("/v1/secrets/{NAME}?user=alice"),
        200,
        Some(canary),
    )
    .await;
    assert_eq!(a.headers["fyvault-version"], "1");
    let j = request(
        &sock,
        "GET",
        &format!("/v1/secrets/{NAME}?user=bob"),
        Some("application/json"),
    )
    .await;
    assert_eq!(
        (j.json()["value"].as_str(), j.json()["version"].as_u64()),
        (Some("sk-bob-1"), Some(1))
    );
    let missing = get(&sock, &format!("/v1/secrets/{NAME}?user=carol")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "user_secret_missing");
    assert_eq!(missing.json()["error"]["connect"], true);
    let required = get(&sock, &format!("/v1/secrets/{NAME}")).await;
    assert_eq!(
        (required.status, required.error_code().as_str()),
        (400, "user_required")
    );
    let bad = get(&sock, &format!("/v1/secrets/{NAME}?user=a%2Fb")).await;
    assert_eq!(bad.status, 400);
    // A creator secret read with a user is the one shared value.
    let shared = get(&sock, "/v1/secrets/SHARED_KEY?user=alice").await;
    assert_eq!(shared.text(), "shared-value");
    // Not in the listing, the mount or .env.
    let list = get(&sock, "/v1/secrets").await.text();
    assert!(
        !list.contains(NAME) && list.contains("SHARED_KEY"),
        "{list}"
    );
    if fuse {
        let names: Vec<String> = std::fs::read_dir(&mount)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"SHARED_KEY".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains(NAME)), "{names:?}");
        let env = std::fs::read_to_string(mount.join(".env")).unwrap();
        assert!(env.contains("SHARED_KEY=") && !env.contains(NAME) && !env.contains(canary));
        assert!(!mount.join(NAME).exists());
    }

    // Rotation with grace, per user: bob's previous value stays readable; alice is untouched.
    user_write(&w, "PATCH", "bob", "sk-bob-2", Some(300)).await;
    until(
        &sock,
        &format!("/v1/secrets/{NAME}?user=bob"),
        200,
        Some("sk-bob-2"),
    )
    .await;
    let prev = get(
        &sock,
        &format!("/v1/secrets/{NAME}?user=bob&version=previous"),
    )
    .await;
    assert_eq!((prev.status, prev.text().as_str()), (200, "sk-bob-1"));
    assert_eq!(
        get(&sock, &format!("/v1/secrets/{NAME}?user=alice"))
            .await
            .text(),
        canary
    );

    // Connect links through the socket: the same access rule as reading.
    let link = post_json(
        &sock,
        "/v1/connect",
        &json!({"secret_name": NAME, "user_id": "carol"}),
    )
    .await;
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/connect/fvlink_", w.vault.url)),
        "{url}"
    );
    let not_user = post_json(
        &sock,
        "/v1/connect",
        &json!({"secret_name": "SHARED_KEY", "user_id": "carol"}),
    )
    .await;
    assert_eq!(
        (not_user.status, not_user.error_code().as_str()),
        (409, "not_user_vault")
    );
    let garbage = post_json(&sock, "/v1/connect", &json!({"secret_name": NAME})).await;
    assert_eq!(garbage.status, 400);
    let s = sock.to_str().unwrap().to_owned();
    let denied = tokio::task::spawn_blocking(move || {
        as_nobody(
            Path::new("/usr/bin/curl"),
            &[
                "-sS",
                "--max-time",
                "5",
                "--unix-socket",
                &s,
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"secret_name":"OPENAI_KEY","user_id":"mallory"}"#,
                "-w",
                "\n%{http_code}",
                "http://x/v1/connect",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    if let Some(d) = &denied {
        let out = String::from_utf8_lossy(&d.stdout);
        assert!(out.ends_with("403") && out.contains("forbidden"), "{out}");
        assert!(!out.contains("fvlink_"));
    }
    // Carol follows the link: the page's calls, sealed here as the browser would.
    let token = url.rsplit('/').next().unwrap();
    let api = format!("{}/api/v1/connect/{token}", w.vault.url);
    let http = reqwest::Client::new();
    let info: serde_json::Value = http.get(&api).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["user_id"], "carol");
    let pk = fyvault::crypto::PublicKey::from_base64(info["public_key"].as_str().unwrap()).unwrap();
    let sealed = pk
        .seal(b"sk-carol-own", &aad(&w.org, &w.env, NAME))
        .unwrap();
    let r = http
        .post(&api)
        .json(&json!({"sealed_value": sealed}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until(
        &sock,
        &format!("/v1/secrets/{NAME}?user=carol"),
        200,
        Some("sk-carol-own"),
    )
    .await;
    let r = http
        .post(&api)
        .json(&json!({"sealed_value": sealed}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "single use");

    // Revoke one user at once (no grace), then the secret for everyone.
    revoke_user(&w, Some("bob")).await;
    until(&sock, &format!("/v1/secrets/{NAME}?user=bob"), 404, None).await;
    let gone = get(
        &sock,
        &format!("/v1/secrets/{NAME}?user=bob&version=previous"),
    )
    .await;
    assert_eq!(gone.status, 404, "no grace after a revoke");
    assert_eq!(
        get(&sock, &format!("/v1/secrets/{NAME}?user=alice"))
            .await
            .text(),
        canary
    );

    // Access events carry the user id: the vault counts distinct users read in 7 days.
    ship_all(&agent).await;
    let counts = eventually("users read in the listing", || async {
        let list = w.admin.list_secrets(&w.org, &w.env).await.unwrap();
        let row = list.secrets.into_iter().find(|s| s.secret_name == NAME)?;
        assert_eq!(row.policy, SecretPolicy::User);
        let u = row.users?;
        (u.read_7d == 3).then_some(u)
    })
    .await;
    assert_eq!(counts.with_value, 2, "alice and carol hold a value");
    let records = w
        .admin
        .audit(
            &w.org,
            &AuditQuery {
                secret: Some(NAME.into()),
                action: Some("accessed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .records;
    assert!(
        records
            .iter()
            .any(|r| r.user_id.as_deref() == Some("alice"))
    );
    assert!(records.iter().all(|r| r.user_id.is_some()));

    revoke_user(&w, None).await;
    until(&sock, &format!("/v1/secrets/{NAME}?user=alice"), 404, None).await;
    agent.shutdown().await.unwrap();

    // The canary user value is in neither the vault's database files nor its trace log.
    let mut files = 0;
    for entry in std::fs::read_dir(&w.data_dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            files += 1;
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(canary.len()).any(|x| x == canary.as_bytes()),
                "canary in {}",
                p.display()
            );
        }
    }
    assert!(files >= 1);
    let text = log.lock().unwrap().clone();
    assert!(
        text.contains("TRACE") || text.contains("trace"),
        "the vault logged at trace level"
    );
    assert!(!text.contains(canary), "canary in the vault's log");
    assert!(!text.contains(token), "a link token in the vault's log");
}

/// 10,000 users' values sync to a fresh agent; one user's rotation reaches it as one small
/// change (one user value in the sync answer), not a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_users_sync_and_one_rotation_is_one_change() {
    const USERS: usize = 10_000;
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    w.admin
        .set_policy(&w.org, &w.env, NAME, SecretPolicy::User)
        .await
        .unwrap();
    let key = PrivateKey::from_file_contents(&std::fs::read(&w.key_file).unwrap()).unwrap();
    let pk = key.public_key();
    let place = aad(&w.org, &w.env, NAME);
    // Seeded through the store itself (the vault stopped, then started again on the same
    // data and port): the same write transaction as the push route, without 10,000 HTTP round
    // trips. The AAD names the secret, not the user, so one sealed value serves the users
    // whose values are not read back.
    let shared = pk.seal(b"sk-user-shared", &place).unwrap();
    let port = w.vault.port;
    w.vault.stop();
    {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SqliteStore::open(&w.data_dir).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..USERS {
            let sealed = if [0, 4_321, USERS - 1].contains(&i) {
                pk.seal(format!("sk-user-{i}").as_bytes(), &place).unwrap()
            } else {
                shared.clone()
            };
            let write = WriteVersion {
                org_id: w.org.clone(),
                environment: w.env.clone(),
                secret_name: NAME.into(),
                provider_id: w.provider_id.clone(),
                kind: WriteKind::Push,
                sealed_value: sealed,
                grace_seconds: None,
                idempotency: None,
                user_id: Some(format!("user-{i}")),
                now_ms: fyvault::vault::clock::now_ms(),
                audit: AuditContext {
                    actor: format!("provider:{}", w.provider_id),
                    source_ip: None,
                },
            };
            let store = store.clone();
            tasks.spawn(async move { store.write_version(write).await.unwrap() });
            while tasks.len() >= 256 {
                tasks.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }
    let (d, l) = (w.data_dir.clone(), log.clone());
    w.vault = tokio::task::spawn_blocking(move || VaultProc::start(&d, port, "info", &l))
        .await
        .unwrap();
    let agent = w.start_agent("").await;
    let sock = w.socket();
    let health = get(&sock, "/v1/health").await.json();
    assert_eq!(health["user_values"], USERS, "all synced before ready");
    for i in [0, 4_321, USERS - 1] {
        let a = get(&sock, &format!("/v1/secrets/{NAME}?user=user-{i}")).await;
        assert_eq!(a.text(), format!("sk-user-{i}"));
    }
    // One user's rotation: the feed after the agent's revision carries that one value.
    let agent_client = fyvault::client::VaultClient::new(&w.vault.url)
        .unwrap()
        .with_token(fyvault::secret::Secret::new(
            std::fs::read(&w.token_file).unwrap().trim_ascii().to_vec(),
        ));
    let before = agent_client
        .sync(&w.org, &w.env, 0, 0)
        .await
        .unwrap()
        .revision;
    user_write(&w, "PATCH", "user-4321", "sk-user-4321-rotated", Some(60)).await;
    let delta = agent_client.sync(&w.org, &w.env, before, 0).await.unwrap();
    assert!(!delta.full && delta.secrets.is_empty());
    assert_eq!(delta.user_values.len(), 1);
    assert_eq!(delta.user_values[0].user_id, "user-4321");
    assert!(
        serde_json::to_vec(&delta).unwrap().len() < 2_000,
        "a small change"
    );
    until(
        &sock,
        &format!("/v1/secrets/{NAME}?user=user-4321"),
        200,
        Some("sk-user-4321-rotated"),
    )
    .await;
    let health = get(&sock, "/v1/health").await.json();
    assert_eq!(health["user_values"], USERS);
    agent.shutdown().await.unwrap();
}
