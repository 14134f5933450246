//! One read per change, shared by every poll it wakes: a read from the lowest `since` answers
//! every higher `since` exactly as a read of its own would (a property test over random
//! histories of pushes, rotations with and without grace, and revocations), and the answers
//! that woken long-polls get are the per-poll answers.

mod common;

use std::time::Duration;

use common::{ENV, TestVault, write};
use fyvault::api::SyncResponse;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Rotate(usize, u64),
    Revoke(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize).prop_map(Op::Push),
        (0..4usize, prop_oneof![Just(0u64), Just(600)]).prop_map(|(n, g)| Op::Rotate(n, g)),
        (0..4usize).prop_map(Op::Revoke),
    ]
}

/// Applies the history; returns the revisions it went through (0 first).
async fn apply(tv: &TestVault, f: &common::Fixture, ops: &[Op]) -> Vec<u64> {
    let prov = tv.client(&f.provider_token);
    let agent = tv.client(&f.agent_token);
    let mut revs = vec![0];
    for (i, op) in ops.iter().enumerate() {
        let name = |n: &usize| format!("S{n}");
        // Rotating or revoking what does not exist (or is revoked) is refused: no change.
        let _ = match op {
            Op::Push(n) => prov
                .push(
                    &f.org,
                    &f.provider,
                    &write(&name(n), &format!("v{i}"), None),
                )
                .await
                .map(|_| ()),
            Op::Rotate(n, g) => prov
                .rotate(
                    &f.org,
                    &f.provider,
                    &write(&name(n), &format!("v{i}"), Some(*g)),
                )
                .await
                .map(|_| ()),
            Op::Revoke(n) => prov.revoke(&f.org, &f.provider, &name(n)).await.map(|_| ()),
        };
        revs.push(agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision);
    }
    revs.dedup();
    revs
}

/// Grace left is a function of the time of the read; two reads at different times differ in
/// it only.
fn without_grace_clock(mut r: SyncResponse) -> SyncResponse {
    for s in &mut r.secrets {
        if let Some(p) = &mut s.previous {
            p.grace_remaining_ms = 0;
        }
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn a_read_from_the_lowest_since_answers_every_since_as_its_own_read(
        ops in proptest::collection::vec(op(), 1..14)
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let tv = TestVault::start().await;
            let f = tv.fixture().await;
            let revs = apply(&tv, &f, &ops).await;
            let head = *revs.last().unwrap();
            let store = tv.handle.store();
            let now = fyvault::vault::clock::now_ms();
            // Every revision the history went through, and one ahead of the environment.
            let mut sinces = revs.clone();
            sinces.push(head + 3);
            for (i, &lowest) in sinces.iter().enumerate() {
                let shared = store.sync_changes(&f.org, ENV, lowest, now).await.unwrap();
                for &since in &sinces[i..] {
                    let own = store.sync(&f.org, ENV, since, now).await.unwrap();
                    match shared.answer(since) {
                        Some(a) => assert_eq!(a, own, "lowest {lowest}, since {since}"),
                        // Only a `since` ahead of the environment needs the full state, which
                        // a read from a later revision does not hold.
                        None => assert!(since > head && lowest > 0, "{lowest} {since}"),
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn woken_long_polls_get_the_per_poll_answer_from_one_shared_read() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let agent = tv.client(&f.agent_token);
    prov.push(&f.org, &f.provider, &write("A", "a1", None))
        .await
        .unwrap();
    prov.push(&f.org, &f.provider, &write("B", "b1", None))
        .await
        .unwrap();
    let rev = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;
    let mut polls = Vec::new();
    for _ in 0..50 {
        let (agent, org) = (agent.clone(), f.org.clone());
        polls.push(tokio::spawn(async move {
            agent.sync(&org, ENV, rev, 120).await
        }));
    }
    common::eventually(30, "50 long-polls to be held", || async {
        (tv.handle.held_long_polls(&f.org, ENV) == 50).then_some(())
    })
    .await;
    let reads = tv.handle.shared_sync_reads();
    prov.rotate(&f.org, &f.provider, &write("A", "a2", Some(600)))
        .await
        .unwrap();
    let own = agent.sync(&f.org, ENV, rev, 0).await.unwrap();
    assert_eq!(own.secrets.len(), 1);
    for p in polls {
        let woke = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert_eq!(without_grace_clock(woke), without_grace_clock(own.clone()));
    }
    assert_eq!(
        tv.handle.shared_sync_reads() - reads,
        1,
        "one store read answered the 50 polls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_one_poll_is_parked_the_polls_after_it_park_without_reading() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let agent = tv.client(&f.agent_token);
    prov.push(&f.org, &f.provider, &write("A", "a1", None))
        .await
        .unwrap();
    let rev = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;
    let poll = |agent: fyvault::client::VaultClient, org: String| {
        tokio::spawn(async move { agent.sync(&org, ENV, rev, 120).await })
    };
    // The first poll of a fresh instance reads the store; what it saw is current.
    let mut polls = vec![poll(agent.clone(), f.org.clone())];
    common::eventually(30, "the first long-poll to be held", || async {
        (tv.handle.held_long_polls(&f.org, ENV) == 1).then_some(())
    })
    .await;
    let reads = tv.handle.own_sync_reads();
    for _ in 0..200 {
        polls.push(poll(agent.clone(), f.org.clone()));
    }
    common::eventually(30, "201 long-polls to be held", || async {
        (tv.handle.held_long_polls(&f.org, ENV) == 201).then_some(())
    })
    .await;
    assert_eq!(
        tv.handle.own_sync_reads() - reads,
        0,
        "polls at the current revision park without a store read of their own"
    );
    // A change still reaches every one of them (one shared read), and the hub is current
    // again after it.
    let shared = tv.handle.shared_sync_reads();
    prov.rotate(&f.org, &f.provider, &write("A", "a2", Some(600)))
        .await
        .unwrap();
    for p in polls {
        let woke = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert!(woke.revision > rev);
    }
    assert_eq!(tv.handle.shared_sync_reads() - shared, 1);
}
