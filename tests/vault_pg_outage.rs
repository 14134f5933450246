//! PostgreSQL goes away while vault instances serve: requests get a 503
//! `database_unavailable` JSON answer (never a hang, a 500 or a panic), then the instances
//! recover by themselves, LISTEN included (a long-poll held across the outage on instance A
//! wakes for a push through instance B).
//!
//! This stops and restarts the local PostgreSQL cluster, so it must not overlap any other test
//! that uses the database: it is the only test of this binary (cargo runs test binaries one
//! after another). It runs with `FYVAULT_TEST_POSTGRES` set and `FYVAULT_TEST_PG_CLUSTER`
//! naming the cluster of that URL for `pg_ctlcluster` (e.g. `15 main`; `scripts/pg-test-setup`
//! prints both); without them it skips, or fails under `FYVAULT_REQUIRE_POSTGRES=1`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{TestDb, base_url};
use common::{ENV, TestVault, assert_error, eventually, raw, tok};
use fyvault::api::MAX_WAIT_SECONDS;
use fyvault::vault::store::postgres::DatabaseUrl;

/// A request that does not answer within this is a hang (a safety net, not a measurement).
const HANG: Duration = Duration::from_secs(30);

struct Cluster {
    version: String,
    name: String,
}

impl Cluster {
    fn from_env() -> Option<Cluster> {
        let spec = std::env::var("FYVAULT_TEST_PG_CLUSTER").unwrap_or_default();
        let mut it = spec.split_whitespace();
        match (it.next(), it.next()) {
            (Some(v), Some(n)) => Some(Cluster {
                version: v.into(),
                name: n.into(),
            }),
            _ => None,
        }
    }

    fn ctl(&self, action: &str) {
        let out = Command::new("pg_ctlcluster")
            .args([&self.version, &self.name, action])
            .args(if action == "start" {
                &[][..]
            } else {
                &["-m", "fast"][..]
            })
            .output()
            .expect("run pg_ctlcluster");
        assert!(
            out.status.success(),
            "pg_ctlcluster {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts the cluster again whatever happens to the test.
struct RestartGuard<'a>(&'a Cluster);

impl Drop for RestartGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args([&self.0.version, &self.0.name, "start"])
            .output();
    }
}

/// POST …/push; returns status and body, failing on a hang.
async fn push(tv: &TestVault, f: &common::Fixture, value: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/push", tv.provider_base(f));
    let body =
        serde_json::json!({"secret_name":"STRIPE_SK","value":value,"environment":ENV}).to_string();
    let started = Instant::now();
    let r = tokio::time::timeout(
        HANG,
        raw(
            "POST",
            &url,
            Some(&tok(&f.provider_token)),
            Some(&body),
            &[],
        ),
    )
    .await
    .expect("a request hung while the database was away");
    eprintln!("push answered {} in {:?}", r.0, started.elapsed());
    assert!(
        r.0 == 201 || r.0 == 503,
        "only 201 or 503 are acceptable: {} {}",
        r.0,
        r.2
    );
    if r.0 == 503 {
        assert_error(&r, 503, "database_unavailable");
    }
    (r.0, r.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_gives_fast_503s_then_instances_recover() {
    let Some(base) = base_url("database_outage_gives_fast_503s_then_instances_recover") else {
        return;
    };
    let Some(cluster) = Cluster::from_env() else {
        assert!(
            std::env::var("FYVAULT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "FYVAULT_REQUIRE_POSTGRES=1 but FYVAULT_TEST_PG_CLUSTER is not set"
        );
        common::skip::skip(
            "database_outage_gives_fast_503s_then_instances_recover",
            "set FYVAULT_TEST_PG_CLUSTER (e.g. '15 main')",
        );
        return;
    };
    let db = TestDb::create(&base).await;
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let a = TestVault::start_with(|c| c.database = Some(url.clone())).await;
    let b = TestVault::start_with(|c| c.database = Some(url)).await;
    let f = a.fixture().await;
    assert_eq!(push(&b, &f, "v1").await.0, 201);
    let agent = a.client(&f.agent_token);
    let since = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;

    // A long-poll held on A across the whole outage.
    let (org, agent2) = (f.org.clone(), agent.clone());
    let held = tokio::spawn(async move { agent2.sync(&org, ENV, since, MAX_WAIT_SECONDS).await });
    eventually(30, "the long-poll to be held", || {
        let n = a.handle.held_long_polls(&f.org, ENV);
        async move { (n == 1).then_some(()) }
    })
    .await;

    let guard = RestartGuard(&cluster);
    cluster.ctl("stop");
    // Down: every request that needs the database answers 503 JSON, at once.
    for tv in [&a, &b] {
        assert_eq!(push(tv, &f, "during").await.0, 503);
        let r = tokio::time::timeout(
            HANG,
            raw(
                "GET",
                &format!(
                    "{}/api/v1/orgs/{}/environments/{ENV}/sync?since=0",
                    tv.url, f.org
                ),
                Some(&tok(&f.agent_token)),
                None,
                &[],
            ),
        )
        .await
        .expect("sync hung");
        assert_error(&r, 503, "database_unavailable");
        // whoami: A verified the agent token before the outage (its long-poll), so A answers
        // from its token cache without the database; B never saw that token, so it needs the
        // database: 503 at once, never a 401.
        let r = tokio::time::timeout(
            HANG,
            raw(
                "GET",
                &format!("{}/api/v1/whoami", tv.url),
                Some(&tok(&f.agent_token)),
                None,
                &[],
            ),
        )
        .await
        .expect("whoami hung");
        if std::ptr::eq(tv, &a) {
            assert_eq!(r.0, 200, "a cached token: {}", r.2);
        } else {
            assert_error(&r, 503, "database_unavailable");
        }
    }
    assert!(!held.is_finished(), "the held long-poll keeps waiting");

    cluster.ctl("start");
    // Up again: both instances recover by themselves (503 until then, never anything else).
    let pushed = eventually(60, "B to accept writes again", || async {
        let (status, body) = push(&b, &f, "after-outage").await;
        (status == 201).then_some(body)
    })
    .await;
    eventually(60, "A to accept writes again", || async {
        (push(&a, &f, "after-outage-a").await.0 == 201).then_some(())
    })
    .await;
    // The long-poll held on A through the outage got the change written through B.
    let got = tokio::time::timeout(HANG, held)
        .await
        .expect("the held long-poll woke after the database came back")
        .unwrap()
        .unwrap();
    assert!(got.revision > since);
    let s = got.secrets.iter().find(|s| s.name == "STRIPE_SK").unwrap();
    assert!(s.version >= pushed["version"].as_u64().unwrap());

    // A plain restart while serving: afterwards a long-poll on A wakes for a push through B,
    // so A listens again.
    cluster.ctl("restart");
    eventually(60, "B to accept writes after the restart", || async {
        (push(&b, &f, "after-restart").await.0 == 201).then_some(())
    })
    .await;
    eventually(60, "A to listen again", || {
        let up = a.handle.listening() == Some(true);
        async move { up.then_some(()) }
    })
    .await;
    let since = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;
    let (org, agent2) = (f.org.clone(), agent.clone());
    let poll = tokio::spawn(async move { agent2.sync(&org, ENV, since, MAX_WAIT_SECONDS).await });
    eventually(30, "the second long-poll to be held", || {
        let n = a.handle.held_long_polls(&f.org, ENV);
        async move { (n == 1).then_some(()) }
    })
    .await;
    let (status, body) = push(&b, &f, "final").await;
    assert_eq!(status, 201, "{body}");
    let got = tokio::time::timeout(HANG, poll)
        .await
        .expect("the long-poll woke")
        .unwrap()
        .unwrap();
    assert!(
        got.revision > since,
        "woken by B's NOTIFY through A's new LISTEN"
    );
    drop(guard);
}
