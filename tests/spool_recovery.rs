//! The audit spool on its own: framing, recovery of damaged segments, the ack cursor, sequence
//! numbers across restarts, and the size bound.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fyvault::agent::spool::{Spool, SpoolError, SpoolLimits};
use fyvault::api::{AccessAction, AccessEvent, AccessVia};

fn event(secret: &str, count: u64) -> AccessEvent {
    AccessEvent {
        seq: 0,
        time: "2026-01-01T00:00:00Z".into(),
        action: AccessAction::Accessed,
        secret: Some(secret.into()),
        version: Some(1),
        via: Some(AccessVia::Fuse),
        pid: Some(42),
        uid: Some(1000),
        gid: Some(1000),
        exe: Some("/usr/bin/app".into()),
        unit: Some("app.service".into()),
        count,
        reason: None,
        user_id: None,
    }
}

fn events(n: usize) -> Vec<AccessEvent> {
    (0..n).map(|i| event(&format!("S{i}"), 1)).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

fn read_all(spool: &mut Spool) -> Vec<AccessEvent> {
    let mut out = Vec::new();
    let mut after = spool.acked();
    loop {
        let batch = spool.read_after(after, 7, usize::MAX).unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.seq;
        out.extend(batch);
    }
}

fn secrets(evs: &[AccessEvent]) -> Vec<String> {
    evs.iter().map(|e| e.secret.clone().unwrap()).collect()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("S{i}")).collect()
}

#[test]
fn append_read_ack_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    let last = spool.append(events(10)).unwrap().unwrap();
    let all = read_all(&mut spool);
    assert_eq!(secrets(&all), names(0..10));
    assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(all[9].seq, last);
    assert_eq!(spool.stats().backlog_events, 10);

    // Ship the first four, then "restart".
    let first4 = spool.take_batch(spool.acked(), 4, usize::MAX).unwrap();
    spool.ack(first4[3].seq).unwrap();
    assert_eq!(spool.stats().backlog_events, 6);
    drop(spool);

    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    assert_eq!(spool.acked(), first4[3].seq);
    assert_eq!(spool.stats().backlog_events, 6);
    assert_eq!(secrets(&read_all(&mut spool)), names(4..10));
    let next = spool.append(events(1)).unwrap().unwrap();
    assert!(next > last, "seq {next} must be above {last}");
}

#[test]
fn fully_acknowledged_segments_are_deleted_and_seq_still_increases() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // Small segments so there are several.
    let limits = SpoolLimits {
        max_bytes: 1 << 20,
        segment_bytes: 600,
    };
    let mut spool = Spool::open(&dir, limits).unwrap();
    let last = spool.append(events(30)).unwrap().unwrap();
    assert!(segments(&dir).len() > 3);
    let all = read_all(&mut spool);
    assert_eq!(all.len(), 30);
    spool.ack(last).unwrap();
    assert_eq!(spool.stats().backlog_events, 0);
    assert!(segments(&dir).is_empty(), "{:?}", segments(&dir));
    drop(spool);

    // Nothing left on disk but the cursor and the high-water mark: numbers are never reused.
    let mut spool = Spool::open(&dir, limits).unwrap();
    let next = spool.append(events(1)).unwrap().unwrap();
    assert!(next > last);
    drop(spool);

    // Even with the high-water mark and the cursor gone (state restored from an old backup),
    // the clock floor keeps new numbers above the old ones.
    fs::remove_file(dir.join("seq")).unwrap();
    fs::remove_file(dir.join("ack")).unwrap();
    for s in segments(&dir) {
        fs::remove_file(s).unwrap();
    }
    let mut spool = Spool::open(&dir, limits).unwrap();
    let again = spool.append(events(1)).unwrap().unwrap();
    assert!(again > next, "{again} must be above {next}");
}

#[test]
fn unacknowledged_in_flight_batch_is_read_again_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    spool.append(events(5)).unwrap();
    let inflight = spool.take_batch(spool.acked(), 100, usize::MAX).unwrap();
    assert_eq!(inflight.len(), 5);
    // Crash: the spool goes away without an ack.
    drop(spool);
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    assert_eq!(read_all(&mut spool), inflight);
}

#[test]
fn second_open_of_the_same_spool_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let _first = Spool::open(&dir, SpoolLimits::default()).unwrap();
    assert!(matches!(
        Spool::open(&dir, SpoolLimits::default()),
        Err(SpoolError::Busy(_))
    ));
}

/// Writes ten records, damages the (single) segment with `damage`, reopens.
fn damaged(damage: impl FnOnce(&Path, &[u8])) -> (tempfile::TempDir, Spool, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    let last = spool.append(events(10)).unwrap().unwrap();
    drop(spool);
    let segs = segments(&dir);
    assert_eq!(segs.len(), 1);
    let bytes = fs::read(&segs[0]).unwrap();
    damage(&segs[0], &bytes);
    let spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    (tmp, spool, last)
}

#[test]
fn truncated_mid_record_tail_is_cut_and_counted() {
    let (_tmp, mut spool, last) = damaged(|p, bytes| {
        fs::write(p, &bytes[..bytes.len() - 7]).unwrap();
    });
    assert_eq!(spool.stats().corrupt_skipped, 1);
    assert_eq!(spool.stats().backlog_events, 9);
    assert_eq!(secrets(&read_all(&mut spool)), names(0..9));
    // Appending after recovery works, with a fresh number.
    let next = spool.append(events(1)).unwrap().unwrap();
    assert!(next > last);
    assert_eq!(read_all(&mut spool).len(), 10);
}

#[test]
fn flipped_bytes_in_the_last_record_are_skipped_and_counted() {
    let (_tmp, mut spool, _) = damaged(|p, bytes| {
        let mut b = bytes.to_vec();
        let n = b.len();
        b[n - 3] ^= 0xff;
        b[n - 10] ^= 0x01;
        fs::write(p, b).unwrap();
    });
    assert_eq!(spool.stats().corrupt_skipped, 1);
    assert_eq!(spool.stats().backlog_events, 9);
    assert_eq!(secrets(&read_all(&mut spool)), names(0..9));
}

#[test]
fn a_corrupt_record_in_the_middle_does_not_hide_the_ones_after_it() {
    let (_tmp, mut spool, _) = damaged(|p, bytes| {
        let mut b = bytes.to_vec();
        // Inside the payload of the first record (after its 8-byte header).
        b[20] ^= 0x20;
        fs::write(p, b).unwrap();
    });
    assert_eq!(spool.stats().corrupt_skipped, 1);
    assert_eq!(secrets(&read_all(&mut spool)), names(1..10));
}

#[test]
fn zero_filled_tail_and_garbage_length_are_cut() {
    let (_tmp, mut spool, _) = damaged(|p, _| {
        let mut f = OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
    });
    assert_eq!(spool.stats().corrupt_skipped, 1);
    assert_eq!(read_all(&mut spool).len(), 10);

    let (_tmp, mut spool, _) = damaged(|p, _| {
        let mut f = OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5])
            .unwrap();
    });
    assert_eq!(spool.stats().corrupt_skipped, 1);
    assert_eq!(read_all(&mut spool).len(), 10);
    let dir = segments(spool_dir(&_tmp).as_path());
    // The torn tail was truncated on disk: a second open finds nothing wrong.
    drop(spool);
    let spool = Spool::open(&spool_dir(&_tmp), SpoolLimits::default()).unwrap();
    assert_eq!(spool.stats().corrupt_skipped, 0);
    assert_eq!(segments(&spool_dir(&_tmp)), dir);
}

fn spool_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("spool")
}

#[test]
fn garbage_files_and_a_garbage_cursor_do_not_stop_the_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    spool.append(events(3)).unwrap();
    drop(spool);
    fs::write(dir.join("ack"), "not a number").unwrap();
    fs::write(dir.join("seg-00000000000000000999.log"), b"\x05\x00").unwrap();
    fs::write(dir.join("notes.txt"), b"hello").unwrap();
    let mut spool = Spool::open(&dir, SpoolLimits::default()).unwrap();
    // The garbage cursor reads as "nothing acknowledged": everything is re-sent (the vault
    // de-duplicates), nothing is lost.
    assert_eq!(spool.acked(), 0);
    assert_eq!(read_all(&mut spool).len(), 3);
    assert_eq!(spool.stats().corrupt_skipped, 1);
}

/// Sums `count` by action over what can be read.
fn totals(evs: &[AccessEvent]) -> (u64, u64) {
    let acc = evs
        .iter()
        .filter(|e| e.action == AccessAction::Accessed)
        .map(|e| e.count)
        .sum();
    let dropped = evs
        .iter()
        .filter(|e| e.action == AccessAction::Dropped)
        .map(|e| e.count)
        .sum();
    (acc, dropped)
}

#[test]
fn tiny_limit_drops_oldest_segments_and_reports_the_exact_number() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let limits = SpoolLimits::new(4096);
    let mut spool = Spool::open(&dir, limits).unwrap();
    let mut total = 0u64;
    for round in 0..40u64 {
        // Varying counts, as coalescing produces.
        let batch: Vec<AccessEvent> = (0..3)
            .map(|i| event(&format!("R{round}-{i}"), round + i + 1))
            .collect();
        total += batch.iter().map(|e| e.count).sum::<u64>();
        spool.append(batch).unwrap();
        let on_disk: u64 = segments(&dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            on_disk <= limits.max_bytes,
            "spool {on_disk} over its bound"
        );
    }
    let stats = spool.stats();
    assert!(stats.dropped_total > 0, "the tiny spool must have dropped");
    let all = read_all(&mut spool);
    let (acc, dropped) = totals(&all);
    // Every access is either still there or counted in a `dropped` event: exactly.
    assert_eq!(acc + dropped, total);
    assert_eq!(dropped, stats.dropped_total);
    assert!(all.iter().any(|e| e.action == AccessAction::Dropped));
    // The newest records survive.
    let kept: Vec<String> = all.iter().filter_map(|e| e.secret.clone()).collect();
    assert!(kept.contains(&"R39-2".to_string()), "{kept:?}");
    assert!(!kept.contains(&"R0-0".to_string()), "{kept:?}");

    // The drop report survives a restart like any record.
    drop(spool);
    let mut spool = Spool::open(&dir, limits).unwrap();
    assert_eq!(totals(&read_all(&mut spool)), (acc, dropped));
}

#[test]
fn records_handed_to_the_shipper_are_not_counted_as_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let limits = SpoolLimits::new(4096);
    let mut spool = Spool::open(&dir, limits).unwrap();
    spool.append(events(4)).unwrap();
    let inflight = spool.take_batch(0, 100, usize::MAX).unwrap();
    assert_eq!(inflight.len(), 4);
    let mut total_after = 0;
    for i in 0..60 {
        spool.append(vec![event(&format!("N{i}"), 1)]).unwrap();
        total_after += 1;
    }
    // The in-flight batch's segment is gone, but it is delivered from the shipper's memory.
    spool.ack(inflight.last().unwrap().seq).unwrap();
    let rest = read_all(&mut spool);
    let (acc, dropped) = totals(&rest);
    assert_eq!(acc + dropped, total_after);
    assert_eq!(spool.stats().dropped_total, dropped);
    assert!(dropped > 0);
}

/// Accesses counted as lost show in the live counters at once (the status reads them), and
/// leave them when the next append writes their `dropped` record.
#[test]
fn pending_dropped_is_visible_until_its_dropped_record_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&spool_dir(&tmp), SpoolLimits::default()).unwrap();
    let counters = spool.counters();
    spool.report_lost(7);
    assert_eq!(
        counters
            .pending_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    spool
        .append(Vec::new())
        .unwrap()
        .expect("the dropped record");
    assert_eq!(
        counters
            .pending_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let all = read_all(&mut spool);
    assert_eq!(
        (all.len(), all[0].action, all[0].count),
        (1, AccessAction::Dropped, 7)
    );
}
