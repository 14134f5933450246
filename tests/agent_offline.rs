//! Real processes (`fyvault server`, `fyvault agent`): the agent restarted while the vault is
//! down serves its sealed offline cache (and says so), the cache holds no plaintext, the agent
//! catches up when the vault returns, and a vault restored from an older copy never makes it
//! serve an older value — across restarts of both.

mod agent_support;

use std::process::Command;

use agent_support::agent_bin::*;
use agent_support::vault::{Log, World};
use agent_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_start_catch_up_and_no_rollback_after_a_restore() {
    let vault_log = Log::default();
    let mut w = World::new("info", &vault_log).await;
    let port = w.vault.port;
    let canary1 = b"CANARY-offline-first-5b1e";
    let canary2 = b"CANARY-offline-second-5b1e";
    w.push("API_KEY", canary1).await;
    let cfg = w.agent_config("");
    let sock = w.socket();
    let state_dir = w.dir.path().join("state");

    // Vault and agent: the agent serves v1.
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;
    assert_eq!(value(&sock, "API_KEY").await, (200, canary1.to_vec()));
    // Stop both; keep a copy of the vault's data (only v1 in it) for a "restore" later.
    agent.stop();
    w.vault.stop();
    let backup = w.dir.path().join("vault-backup");
    copy_dir(&w.data_dir, &backup);

    // The sealed cache holds no plaintext.
    let state_files = files(&state_dir);
    assert!(
        state_files.iter().any(|p| p.ends_with("cache")),
        "{state_files:?}"
    );
    for f in &state_files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(canary1.len()).any(|w| w == canary1),
            "plaintext in {}",
            f.display()
        );
    }

    // The agent alone: it answers at once, serves the cache and says degraded, and why.
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to serve its cache", |h| {
        h["status"] == "degraded"
            && h["reason"]
                .as_str()
                .is_some_and(|r| r.contains("serving cache from") && r.contains("unreachable"))
    })
    .await;
    assert_eq!(value(&sock, "API_KEY").await, (200, canary1.to_vec()));
    let status = Command::new(fyvault())
        .arg("status")
        .env("FYVAULT_SOCKET", &sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("serving cache from"), "{text}");

    // The vault returns: the agent catches up, and a rotation arrives.
    w.vault = start_vault(&w.data_dir, port, &vault_log).await;
    wait_health(&sock, "the agent to catch up", |h| h["status"] == "ready").await;
    let v2 = w.rotate("API_KEY", canary2, 600).await;
    eventually("the rotation to arrive", || async {
        (value(&sock, "API_KEY").await == (200, canary2.to_vec())).then_some(())
    })
    .await;
    agent.stop();
    w.vault.stop();

    // Restore the vault's older copy (v1 only) and restart both: the agent never serves v1.
    restore_dir(&backup, &w.data_dir);
    w.vault = start_vault(&w.data_dir, port, &vault_log).await;
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to refuse the rollback", |h| {
        h["status"] == "degraded"
            && h["reason"]
                .as_str()
                .is_some_and(|r| r.contains("API_KEY") && r.contains(&format!("serving v{v2}")))
    })
    .await;
    let (status, body) = value(&sock, "API_KEY").await;
    assert_ne!(
        body,
        canary1.to_vec(),
        "the restored older value was served"
    );
    assert_eq!((status, body), (200, canary2.to_vec()));
    // The vault is told: an `undeliverable` event, reason `older_than_served`, carrying the
    // version the agent holds (v2).
    let query = fyvault::api::AuditQuery {
        action: Some("undeliverable".into()),
        ..Default::default()
    };
    eventually("the refusal to reach the vault's audit trail", || async {
        let records = w.admin.audit(&w.org, &query).await.ok()?.records;
        records
            .iter()
            .any(|r| {
                r.secret.as_deref() == Some("API_KEY")
                    && r.reason.as_deref() == Some("older_than_served")
                    && r.version == Some(v2)
            })
            .then_some(())
    })
    .await;

    // The vault side: that report raised the secret's version floor, so the next rotation on
    // the restored vault is numbered above v2 (the restored rows alone would give v2 again,
    // which this agent would take for the value it holds and keep serving the old one).
    let canary3 = b"CANARY-offline-third-5b1e";
    let v3 = w.rotate("API_KEY", canary3, 0).await;
    assert_eq!(v3, v2 + 1, "a restored vault reused a version number");
    eventually("the new rotation to be served", || async {
        (value(&sock, "API_KEY").await == (200, canary3.to_vec())).then_some(())
    })
    .await;
    wait_health(&sock, "the agent to be ready again", |h| {
        h["status"] == "ready"
    })
    .await;
    agent.stop();
}
