//! Correctness under concurrency over real HTTP, for any backend and any number of instances
//! sharing one database: requests are spread round-robin over `vaults` (one SQLite instance,
//! or several PostgreSQL instances), so "across instances" is the same check.
//!
//! - 50 concurrent pushes → 50 consecutive versions, none lost, 50 audit records;
//! - 50 concurrent retries with one Idempotency-Key → one version, one first answer;
//! - the same agent batch posted concurrently → each event recorded once.

use fyvault::api::{AccessAction, AccessEvent, AccessVia, AuditBatch, AuditQuery};
use serde_json::json;

use super::{ENV, Fixture, TestVault, open, raw, tok};

fn base(tv: &TestVault, f: &Fixture) -> String {
    tv.provider_base(f)
}

pub async fn fifty_concurrent_pushes_make_fifty_consecutive_versions(vaults: &[&TestVault]) {
    let f = vaults[0].fixture().await;
    let t = tok(&f.provider_token);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let url = format!("{}/push", base(vaults[n % vaults.len()], &f));
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"secret_name":"HOT","value":format!("value-{n}"),"environment":ENV});
            let r = raw("POST", &url, Some(&t), Some(&body.to_string()), &[]).await;
            assert_eq!(r.0, 201, "{}", r.2);
            (r.2["version"].as_u64().unwrap(), n)
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.unwrap());
    }
    let mut versions: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=50).collect::<Vec<_>>());
    // The current value is the one of the request that got version 50, on every instance.
    let last = got.iter().find(|(v, _)| *v == 50).unwrap().1;
    for tv in vaults {
        let s = tv
            .client(&f.agent_token)
            .sync(&f.org, ENV, 0, 0)
            .await
            .unwrap();
        assert_eq!(s.secrets[0].version, 50);
        assert_eq!(
            open(
                &f.key,
                &f.org,
                ENV,
                "HOT",
                s.secrets[0].sealed_value.as_ref().unwrap()
            ),
            format!("value-{last}").as_bytes()
        );
    }
    let trail = vaults[vaults.len() - 1]
        .admin
        .audit(
            &f.org,
            &AuditQuery {
                secret: Some("HOT".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(trail.records.len(), 50);
}

pub async fn fifty_retries_with_one_idempotency_key_make_one_version(vaults: &[&TestVault]) {
    let f = vaults[0].fixture().await;
    let t = tok(&f.provider_token);
    let body = json!({"secret_name":"ONCE","value":"v","environment":ENV}).to_string();
    let mut tasks = Vec::new();
    for n in 0..50 {
        let url = format!("{}/push", base(vaults[n % vaults.len()], &f));
        let (t, body) = (t.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = raw(
                "POST",
                &url,
                Some(&t),
                Some(&body),
                &[("Idempotency-Key", "order-7781")],
            )
            .await;
            assert_eq!(r.0, 201, "{}", r.2);
            (r.2.clone(), r.1.contains_key("idempotent-replayed"))
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(
        answers.iter().all(|(a, _)| *a == answers[0].0),
        "answers differ"
    );
    assert_eq!(answers[0].0["version"], 1);
    assert_eq!(answers.iter().filter(|(_, replayed)| !replayed).count(), 1);
    for tv in vaults {
        let s = tv
            .client(&f.agent_token)
            .sync(&f.org, ENV, 0, 0)
            .await
            .unwrap();
        assert_eq!(s.secrets[0].version, 1);
    }
}

fn event(seq: u64) -> AccessEvent {
    AccessEvent {
        seq,
        time: "2025-03-01T10:00:00Z".into(),
        action: AccessAction::Accessed,
        secret: Some("K".into()),
        version: Some(1),
        via: Some(AccessVia::Fuse),
        pid: Some(7),
        uid: Some(1000),
        gid: Some(1000),
        exe: Some("/usr/bin/app".into()),
        unit: None,
        count: 1,
        reason: None,
        user_id: None,
    }
}

pub async fn concurrent_duplicate_audit_batches_count_once(vaults: &[&TestVault]) {
    let f = vaults[0].fixture().await;
    let batch = AuditBatch {
        agent_id: "web-1:1".into(),
        host: Some("web-1".into()),
        events: (1..=20).map(event).collect(),
    };
    let mut tasks = Vec::new();
    for n in 0..10 {
        let client = vaults[n % vaults.len()].client(&f.agent_token);
        let (org, batch) = (f.org.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            client.post_audit(&org, &batch).await.unwrap()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.accepted + r.duplicates, 20);
        accepted += r.accepted;
    }
    assert_eq!(accepted, 20, "every event recorded exactly once");
    let recs = vaults[vaults.len() - 1]
        .admin
        .audit(
            &f.org,
            &AuditQuery {
                action: Some("accessed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .records;
    assert_eq!(recs.len(), 20);
}
