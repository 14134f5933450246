//! The concurrency checks of the store suite: one name written by 50 writers at once, one
//! idempotency key retried 50 times at once, one agent batch ingested 10 times at once, and a
//! mix of pushes and revocations over two environments; on one handle or spread over several
//! handles of one database (instances).

use std::sync::Arc;

use fyvault::api::AccessAction;
use fyvault::vault::store::{
    AgentBatch, AuditFilter, Idempotency, RevokeSecret, Store, StoreError, WriteKind,
};

use super::{T0, ctx, event, seeded, write};

pub async fn concurrent_writes(store: Arc<dyn Store>) {
    seeded(&store).await;
    concurrent_writes_on(&[store], "K").await;
}

/// 50 concurrent pushes of one name, spread over `stores` → versions 1..=50, each revision
/// distinct, the current version 50.
pub(super) async fn concurrent_writes_on(stores: &[Arc<dyn Store>], name: &'static str) {
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = stores[n % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let out = store
                .write_version(write(
                    "prod",
                    name,
                    "p1",
                    WriteKind::Push,
                    &format!("s{n}"),
                    T0,
                ))
                .await
                .unwrap();
            (out.response.version, out.revision.unwrap())
        }));
    }
    let mut versions = Vec::new();
    let mut revisions = Vec::new();
    for t in tasks {
        let (v, r) = t.await.unwrap();
        versions.push(v);
        revisions.push(r);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 50, "every write has its own revision");
    for store in stores {
        let s = store.sync("o1", "prod", 0, T0).await.unwrap();
        let k = s.secrets.iter().find(|s| s.name == name).unwrap();
        assert_eq!(k.version, 50);
    }
}

/// 50 concurrent retries of one idempotent push → one version, one fresh answer.
pub async fn concurrent_idempotent_retries(stores: &[Arc<dyn Store>]) {
    seeded(&stores[0]).await;
    concurrent_idempotent_retries_on(stores).await;
}

pub(super) async fn concurrent_idempotent_retries_on(stores: &[Arc<dyn Store>]) {
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = stores[n % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut w = write("prod", "ONCE", "p1", WriteKind::Push, "once", T0);
            w.idempotency = Some(Idempotency {
                key_hash: "key-once".into(),
                fingerprint: "fp-once".into(),
            });
            store.write_version(w).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(out.response.version, 1);
        fresh += usize::from(!out.replayed);
    }
    assert_eq!(fresh, 1, "exactly one request wrote");
}

/// The same agent batch ingested concurrently → every event recorded once.
pub async fn concurrent_audit_batches(stores: &[Arc<dyn Store>]) {
    seeded(&stores[0]).await;
    concurrent_audit_batches_on(stores).await;
}

pub(super) async fn concurrent_audit_batches_on(stores: &[Arc<dyn Store>]) {
    let mut tasks = Vec::new();
    for n in 0..10 {
        let store = stores[n % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            store
                .ingest_agent_batch(AgentBatch {
                    org_id: "o1".into(),
                    environment: "prod".into(),
                    agent_id: "agent-c".into(),
                    host: None,
                    actor: "agent:tok_c".into(),
                    source_ip: None,
                    events: (1..=20).map(|s| event(s, AccessAction::Accessed)).collect(),
                })
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.accepted + r.duplicates, 20);
        accepted += r.accepted;
    }
    assert_eq!(accepted, 20);
    let recs = stores[0]
        .query_audit(AuditFilter {
            org_id: Some("o1".into()),
            action: Some("accessed".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(recs.iter().filter(|r| r.actor == "agent:tok_c").count(), 20);
}

/// Pushes, rotations and revocations of several names in both environments at once: all
/// succeed (no deadlock, no lost update) and each environment's revision counts its changes.
pub(super) async fn mixed_writers_never_deadlock(stores: &[Arc<dyn Store>]) {
    let before: u64 = {
        let mut sum = 0;
        for env in ["prod", "staging"] {
            sum += stores[0]
                .get_environment("o1", env)
                .await
                .unwrap()
                .unwrap()
                .revision;
        }
        sum
    };
    let names = ["M0", "M1", "M2", "M3"];
    let mut tasks = Vec::new();
    for n in 0..48 {
        let store = stores[n % stores.len()].clone();
        let name = names[n % names.len()];
        let env = if n % 3 == 0 { "staging" } else { "prod" };
        tasks.push(tokio::spawn(async move {
            if n % 8 == 7 {
                // A revocation touches every environment holding the name.
                store
                    .revoke_secret(RevokeSecret {
                        org_id: "o1".into(),
                        secret_name: name.into(),
                        provider_id: "p1".into(),
                        user_id: None,
                        now_ms: T0,
                        audit: ctx("provider:p1"),
                    })
                    .await
                    .map(|o| o.changed.len() as u64)
                    .unwrap_or_else(|e| {
                        assert_eq!(e, StoreError::NotFound("secret"));
                        0
                    })
            } else {
                store
                    .write_version(write(env, name, "p1", WriteKind::Push, "x", T0))
                    .await
                    .unwrap();
                1
            }
        }));
    }
    let mut changes = 0;
    for t in tasks {
        changes += t.await.unwrap();
    }
    let mut after = 0;
    for env in ["prod", "staging"] {
        after += stores[1 % stores.len()]
            .get_environment("o1", env)
            .await
            .unwrap()
            .unwrap()
            .revision;
    }
    assert_eq!(after - before, changes, "one revision per change");
}
