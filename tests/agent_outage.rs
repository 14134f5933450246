//! Real processes (`fyvault server`, `fyvault agent`) through a vault outage: a previous
//! version's grace ends by the wall clock even when the agent restarts during the outage (it
//! serves its offline cache), and a revoke made while the agent cannot reach the vault takes
//! effect the moment the agent reaches it again.

mod agent_support;

use std::time::{Duration, SystemTime};

use agent_support::agent_bin::*;
use agent_support::vault::{Log, World};
use agent_support::*;
use fyvault::client::VaultClient;

async fn previous(sock: &std::path::Path, name: &str) -> (u16, Vec<u8>) {
    let r = get(sock, &format!("/v1/secrets/{name}?version=previous")).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_ends_by_the_wall_clock_across_an_agent_restart_during_an_outage() {
    const GRACE: Duration = Duration::from_secs(12);
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    w.push("DB_PASS", b"old-value").await;
    let cfg = w.agent_config("");
    let sock = w.socket();
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;

    // The vault starts the grace between `before` and `after` (its own clock is this one).
    let before = SystemTime::now();
    w.rotate("DB_PASS", b"new-value", GRACE.as_secs()).await;
    let after = SystemTime::now();
    eventually("the rotation to arrive", || async {
        (previous(&sock, "DB_PASS").await == (200, b"old-value".to_vec())).then_some(())
    })
    .await;

    // The outage: vault down. Half-way through the grace, the agent restarts (a reboot).
    w.vault.stop();
    wait_health(&sock, "the agent to see the outage", |h| {
        h["status"] == "degraded"
    })
    .await;
    agent.stop();
    let half = before + GRACE / 2;
    if let Ok(left) = half.duration_since(SystemTime::now()) {
        // Positions the restart in time (the clock is what this test is about).
        tokio::time::sleep(left).await;
    }
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to serve its cache", |h| {
        h["status"] == "degraded"
            && h["reason"]
                .as_str()
                .is_some_and(|r| r.contains("serving cache from"))
    })
    .await;
    let restarted = SystemTime::now();
    assert!(
        restarted + Duration::from_secs(1) < before + GRACE,
        "the restart took too long for this test ({:?} after the rotation)",
        restarted.duration_since(before).unwrap()
    );
    // Inside the grace: the previous version is still readable, from the cache.
    assert_eq!(
        previous(&sock, "DB_PASS").await,
        (200, b"old-value".to_vec())
    );
    assert_eq!(value(&sock, "DB_PASS").await, (200, b"new-value".to_vec()));

    // The grace ends when the vault said, by the wall clock: not restarted from the restart
    // (that would keep it until about `restarted + GRACE / 2` later than due).
    let ended = eventually("the grace to end", || async {
        (previous(&sock, "DB_PASS").await.0 == 404).then(SystemTime::now)
    })
    .await;
    assert!(
        ended >= before + GRACE,
        "the grace ended early: {:?} after the rotation",
        ended.duration_since(before).unwrap()
    );
    let due = after + GRACE;
    assert!(
        ended <= due + Duration::from_millis(2500),
        "the grace ended {:?} after it was due (restarted from the agent's restart?)",
        ended.duration_since(due).unwrap()
    );
    assert_eq!(value(&sock, "DB_PASS").await, (200, b"new-value".to_vec()));
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_made_during_an_outage_takes_effect_when_the_vault_returns() {
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    let port = w.vault.port;
    w.push("TOKEN", b"revoke-me").await;
    w.push("KEEP", b"keep-me").await;
    let cfg = w.agent_config("");
    let sock = w.socket();
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;
    assert_eq!(value(&sock, "TOKEN").await, (200, b"revoke-me".to_vec()));

    // The outage: the agent keeps serving.
    w.vault.stop();
    wait_health(&sock, "the agent to see the outage", |h| {
        h["status"] == "degraded"
    })
    .await;
    assert_eq!(value(&sock, "TOKEN").await, (200, b"revoke-me".to_vec()));

    // Meanwhile the vault runs where the agent cannot reach it, and the provider revokes.
    let mut elsewhere = start_vault(&w.data_dir, 0, &log).await;
    VaultClient::new(&elsewhere.url)
        .unwrap()
        .with_token(w.provider_token.clone())
        .revoke(&w.org, &w.provider_id, "TOKEN")
        .await
        .unwrap();
    elsewhere.stop();
    assert_eq!(
        value(&sock, "TOKEN").await,
        (200, b"revoke-me".to_vec()),
        "the agent cannot know yet"
    );

    // The vault returns on its address: from the first sync on, TOKEN is gone.
    w.vault = start_vault(&w.data_dir, port, &log).await;
    eventually("the revoke to take effect", || async {
        let synced = health(&sock).await?["status"] == "ready";
        let (status, _) = value(&sock, "TOKEN").await;
        assert!(
            !(synced && status == 200),
            "the agent synced with the returned vault and still served a revoked secret"
        );
        (status == 404).then_some(())
    })
    .await;
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;
    assert_eq!(value(&sock, "TOKEN").await.0, 404);
    assert_eq!(value(&sock, "KEEP").await, (200, b"keep-me".to_vec()));
    agent.stop();
}
