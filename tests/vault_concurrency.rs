//! Correctness under concurrency: 50 concurrent pushes → 50 consecutive versions, none lost;
//! 50 concurrent retries with one Idempotency-Key → one version.

mod common;

use common::{ENV, TestVault, open, raw, tok};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_pushes_make_fifty_consecutive_versions() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let url = format!("{}/push", tv.provider_base(&f));
    let t = tok(&f.provider_token);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (url, t) = (url.clone(), t.clone());
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
    // The current value is the one of the request that got version 50.
    let last = got.iter().find(|(v, _)| *v == 50).unwrap().1;
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
    let trail = tv
        .admin
        .audit(
            &f.org,
            &fyvault::api::AuditQuery {
                secret: Some("HOT".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(trail.records.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_retries_with_one_idempotency_key_make_one_version() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let url = format!("{}/push", tv.provider_base(&f));
    let t = tok(&f.provider_token);
    let body = json!({"secret_name":"ONCE","value":"v","environment":ENV}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (url, t, body) = (url.clone(), t.clone(), body.clone());
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
    let s = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    assert_eq!(s.secrets[0].version, 1);
}
