//! Version floors (issue 17): an agent's `older_than_served` report (the version it holds)
//! raises the secret's floor, and the next write gets a version above it — so a restored
//! vault does not hand out a number an agent already holds.

use std::sync::Arc;

use fyvault::api::AccessAction;
use fyvault::vault::store::{AgentBatch, Store, WriteKind};

use super::{T0, event, seeded, write};

fn report(env: &str, seq: u64, secret: &str, held: u64) -> AgentBatch {
    let (t, mut e) = event(seq, AccessAction::Undeliverable);
    (e.via, e.pid, e.uid, e.gid, e.exe, e.unit) = (None, None, None, None, None, None);
    e.secret = Some(secret.into());
    e.version = Some(held);
    e.count = 1;
    e.reason = Some("older_than_served".into());
    AgentBatch {
        org_id: "o1".into(),
        environment: env.into(),
        agent_id: "agent-1".into(),
        host: None,
        actor: "agent:tok_a".into(),
        source_ip: None,
        events: vec![(t, e)],
    }
}

async fn write_v(store: &dyn Store, env: &str, kind: WriteKind, at: i64) -> u64 {
    store
        .write_version(write(env, "K", "p1", kind, "s", at))
        .await
        .unwrap()
        .response
        .version
}

pub async fn version_floors(store: Arc<dyn Store>) {
    seeded(&store).await;
    assert_eq!(write_v(&*store, "prod", WriteKind::Push, T0 + 1).await, 1);
    // An agent holds version 5 (the vault was restored from before versions 2–5).
    store
        .ingest_agent_batch(report("prod", 1, "K", 5))
        .await
        .unwrap();
    assert_eq!(write_v(&*store, "prod", WriteKind::Rotate, T0 + 2).await, 6);
    assert_eq!(write_v(&*store, "prod", WriteKind::Rotate, T0 + 3).await, 7);
    // A lower or repeated report never lowers the floor nor lifts an already higher number.
    store
        .ingest_agent_batch(report("prod", 2, "K", 3))
        .await
        .unwrap();
    assert_eq!(write_v(&*store, "prod", WriteKind::Rotate, T0 + 4).await, 8);
    // The floor is per environment.
    assert_eq!(
        write_v(&*store, "staging", WriteKind::Push, T0 + 5).await,
        1
    );
    // A secret the restored vault never had: its first push starts above the floor.
    store
        .ingest_agent_batch(report("prod", 3, "NEW", 4))
        .await
        .unwrap();
    let v = store
        .write_version(write("prod", "NEW", "p1", WriteKind::Push, "s", T0 + 6))
        .await
        .unwrap()
        .response
        .version;
    assert_eq!(v, 5);
    // An absurd report (beyond 2^53) is ignored: the version space is not used up.
    store
        .ingest_agent_batch(report("staging", 4, "K", (1 << 53) + 1))
        .await
        .unwrap();
    assert_eq!(
        write_v(&*store, "staging", WriteKind::Rotate, T0 + 7).await,
        2
    );
    // The sync feed tells agents the lifted number.
    let feed = store.sync("o1", "prod", 0, T0 + 8).await.unwrap();
    let k = feed.secrets.iter().find(|s| s.name == "K").unwrap();
    assert_eq!(k.version, 8);
}
