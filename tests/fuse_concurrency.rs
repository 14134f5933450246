//! 50 concurrent readers while 1,000 rotations land, on each read path: every read returns
//! exactly one of the pushed values, never a mix. With direct I/O never a truncation either (a
//! handle whose version left grace mid-read fails ESTALE); with passthrough such a handle reads
//! end-of-file, so a read can end early: a prefix of its own version, counted and shown.

mod common_fuse;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common_fuse::{TestMount, active, fuse_available, wait_for};
use fyvault::agent::access::Policy;
use fyvault::agent::fs::{ReadPath, ReadPathChoice};

const READERS: usize = 50;
const ROTATIONS: u64 = 1000;

/// Value of version `v`: a length that varies (up to ~9 KB, several read calls) and a
/// version-tagged head and tail, so a truncated or mixed read can match no pushed value.
fn value(v: u64) -> Vec<u8> {
    let body_len = 1 + (v * 7919 % 9000) as usize;
    let mut out = format!("<{v}>").into_bytes();
    out.extend((0..body_len).map(|i| b'a' + ((i as u64 + v) % 26) as u8));
    out.extend(format!("</{v}>").into_bytes());
    out
}

#[test]
fn fuse_concurrent_readers_during_rotations_direct_io() {
    if !fuse_available("fuse_concurrent_readers_during_rotations_direct_io") {
        return;
    }
    let m = TestMount::with_read_path(Policy::default(), ReadPathChoice::DirectIo).unwrap();
    readers_during_rotations(&m);
}

#[test]
fn fuse_concurrent_readers_during_rotations_passthrough() {
    if !fuse_available("fuse_concurrent_readers_during_rotations_passthrough") {
        return;
    }
    match TestMount::with_read_path(Policy::default(), ReadPathChoice::Passthrough) {
        Some(m) => readers_during_rotations(&m),
        None => eprintln!("no FUSE passthrough on this kernel: nothing to test"),
    }
}

fn readers_during_rotations(m: &TestMount) {
    let passthrough = m.read_path() == ReadPath::Passthrough;
    let pushed: Arc<HashSet<Vec<u8>>> = Arc::new((1..=ROTATIONS + 1).map(value).collect());
    m.put("HOT", 1, &value(1));
    let path = m.file("HOT");
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let short = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (path, pushed, done, reads, stale, short) = (
                path.clone(),
                pushed.clone(),
                done.clone(),
                reads.clone(),
                stale.clone(),
                short.clone(),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    match std::fs::read(&path) {
                        // Passthrough: the version left grace mid-read; what was read is a
                        // prefix of a pushed value (the tags at both ends rule out a mix).
                        Ok(bytes) if passthrough && !pushed.contains(&bytes) => {
                            assert!(
                                pushed.iter().any(|p| p.starts_with(&bytes)),
                                "read {} bytes that are no prefix of a pushed value",
                                bytes.len()
                            );
                            short.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(bytes) => {
                            assert!(
                                pushed.contains(&bytes),
                                "read {} bytes that are no pushed value",
                                bytes.len()
                            );
                            reads.fetch_add(1, Ordering::SeqCst);
                        }
                        // A handle pinned to a version that two rotations pushed out of grace
                        // (only one previous version is kept) is stale: an error, never
                        // wrong bytes.
                        Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                            stale.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("unexpected read error: {e}"),
                    }
                }
                // Once rotations stop, a read must succeed with the last value.
                std::fs::read(&path).expect("final read")
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    for v in 2..=ROTATIONS + 1 {
        let seen = || {
            reads.load(Ordering::SeqCst)
                + stale.load(Ordering::SeqCst)
                + short.load(Ordering::SeqCst)
        };
        let before = seen();
        m.apply(vec![active(
            "HOT",
            v,
            &value(v),
            Some((v - 1, &value(v - 1), Duration::from_secs(60))),
        )]);
        // Let some reads land between rotations (interleaving without sleeps).
        while seen() < before + 2 {
            assert!(Instant::now() < deadline, "readers stalled");
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::SeqCst);
    let last = value(ROTATIONS + 1);
    for r in readers {
        assert_eq!(r.join().expect("reader panicked"), last);
    }
    let (ok, st) = (reads.load(Ordering::SeqCst), stale.load(Ordering::SeqCst));
    let sh = short.load(Ordering::SeqCst);
    eprintln!(
        "{:?}: {ok} whole reads, {st} stale handles, {sh} cut short during {ROTATIONS} rotations",
        m.read_path()
    );
    assert!(ok > 0, "no whole read at all ({st} stale)");
    // Every handle is released (the kernel sends RELEASE asynchronously after close).
    wait_for("all handles released", || m.state.view.open_handles() == 0);
}
