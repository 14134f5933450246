//! Property: whatever the sequence of appends, shipments, crashes and restarts, and however
//! small the spool, every access is accounted for exactly once — delivered, still spooled, or
//! counted in a `dropped` event — and sequence numbers never repeat or go back.

use fyvault::agent::spool::{Spool, SpoolLimits};
use fyvault::api::{AccessAction, AccessEvent, AccessVia};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append events with these counts.
    Append(Vec<u64>),
    /// Read up to n and acknowledge them.
    Ship(usize),
    /// Read up to n, then crash before the acknowledgement.
    ShipThenCrash(usize),
    /// Restart.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(1u64..50, 0..6).prop_map(Op::Append),
        2 => (1usize..8).prop_map(Op::Ship),
        1 => (1usize..8).prop_map(Op::ShipThenCrash),
        1 => Just(Op::Reopen),
    ]
}

fn event(count: u64) -> AccessEvent {
    AccessEvent {
        seq: 0,
        time: "2026-01-01T00:00:00Z".into(),
        action: AccessAction::Accessed,
        secret: Some("S".into()),
        version: Some(1),
        via: Some(AccessVia::Socket),
        pid: Some(1),
        uid: Some(0),
        gid: Some(0),
        exe: None,
        unit: None,
        count,
        reason: None,
        user_id: None,
    }
}

fn spooled(spool: &mut Spool) -> u64 {
    let mut sum = 0;
    let mut after = spool.acked();
    loop {
        let b = spool.read_after(after, 64, usize::MAX).unwrap();
        let Some(l) = b.last() else { return sum };
        after = l.seq;
        sum += b.iter().map(|e| e.count).sum::<u64>();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_access_is_accounted_for_once(
        max_bytes in prop_oneof![Just(600u64), Just(2048), Just(1 << 20)],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let limits = SpoolLimits::new(max_bytes);
        let mut spool = Spool::open(&dir, limits).unwrap();
        let (mut total, mut delivered) = (0u64, 0u64);
        let mut delivered_seqs: Vec<u64> = Vec::new();
        let mut max_seq_seen = 0u64;
        for op in ops {
            match op {
                Op::Append(counts) => {
                    total += counts.iter().sum::<u64>();
                    if let Some(last) = spool.append(counts.into_iter().map(event).collect()).unwrap() {
                        prop_assert!(last > max_seq_seen);
                        max_seq_seen = last;
                    }
                }
                Op::Ship(n) => {
                    let b = spool.take_batch(spool.acked(), n, usize::MAX).unwrap();
                    if let Some(l) = b.last() {
                        spool.ack(l.seq).unwrap();
                        delivered += b.iter().map(|e| e.count).sum::<u64>();
                        delivered_seqs.extend(b.iter().map(|e| e.seq));
                    }
                }
                Op::ShipThenCrash(n) => {
                    let _ = spool.take_batch(spool.acked(), n, usize::MAX).unwrap();
                    drop(spool);
                    spool = Spool::open(&dir, limits).unwrap();
                }
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open(&dir, limits).unwrap();
                }
            }
            prop_assert_eq!(spool.stats().corrupt_skipped, 0);
            prop_assert_eq!(delivered + spooled(&mut spool), total);
        }
        prop_assert!(delivered_seqs.windows(2).all(|w| w[0] < w[1]));
        // Backlog figures match what is really there.
        let mut n = 0;
        let mut after = spool.acked();
        loop {
            let b = spool.read_after(after, 64, usize::MAX).unwrap();
            let Some(l) = b.last() else { break };
            after = l.seq;
            n += b.len() as u64;
        }
        prop_assert_eq!(spool.stats().backlog_events, n);
    }
}
