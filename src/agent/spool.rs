//! The durable spool of access events (DESIGN §4.5), in the agent's state directory.
//!
//! Layout of the spool directory (created 0700, files 0600):
//! - `seg-NNNNNNNNNNNNNNNNNNNN.log`: append-only segments, oldest first; each record is framed
//!   with its length and a CRC32 (see [`frame`]); a segment is closed (fsynced) when it reaches
//!   [`SpoolLimits::segment_bytes`] and a new one is started.
//! - `ack`: the acknowledged cursor: every record with `seq <= ack` reached the vault.
//!   Fully acknowledged segments are deleted.
//! - `seq`: the sequence high-water mark: no `seq` below it was ever handed out. It is written
//!   (atomically, fsynced) *before* the numbers it covers are used, so a crash can leave a gap
//!   in the numbering but never reuse a number. On open, the next `seq` is the largest of this
//!   mark, the largest `seq` found in the segments plus one, `ack + 1`, and the wall clock in
//!   microseconds since the epoch: even a wiped or restored-from-backup state directory does not
//!   reuse the numbers the vault already de-duplicates on.
//! - `lock`: an exclusive `flock`, so two agents can never write one spool.
//!
//! Size bound: when appending would take the spool over [`SpoolLimits::max_bytes`], whole
//! oldest segments are deleted; the events they held that had not been acknowledged (nor handed
//! to the shipper) are counted, and a `dropped` event carrying that count is appended in the
//! same batch. The count is in *accesses* (the sum of the dropped events' `count`s, a dropped
//! `dropped` event passing its count on), so shipped counts plus dropped counts always equal
//! the number of reads.
//!
//! On open, every segment is scanned: a record with a bad checksum is skipped (reading goes on
//! after it), a torn tail (cut short, or a zero-filled/impossible length) is truncated; each is
//! counted in [`SpoolStats::corrupt_skipped`] and logged. Nothing in a damaged spool can make
//! opening fail, short of I/O errors on the directory itself.

mod bound;
mod disk;
pub mod frame;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::api::AccessEvent;
use disk::{
    MAX_SEQ, for_each_event, framed_len, now_micros, read_number, scan_segment, segment_path,
    sync_dir, write_atomic,
};
use frame::{Frame, FrameReader};

/// Default bound of the spool on disk.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Largest segment (the unit in which old records are dropped).
const MAX_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How many sequence numbers one persisted high-water mark covers beyond what is needed now.
const SEQ_RESERVE: u64 = 4096;
/// At most this many `dropped` events are written per append (see `append`).
const DROP_REPORT_ROUNDS: u64 = 4;

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit spool {0} is locked by another process (is another agent running?)")]
    Busy(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Bound of all segments together (best effort: the open segment always stays).
    pub max_bytes: u64,
    /// Size at which a segment is closed and a new one started.
    pub segment_bytes: u64,
}

impl SpoolLimits {
    /// Segments of an eighth of the bound (at most 4 MiB), so a full spool drops ~1/8 at a time.
    pub fn new(max_bytes: u64) -> Self {
        SpoolLimits {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(1, MAX_SEGMENT_BYTES),
        }
    }
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits::new(DEFAULT_MAX_BYTES)
    }
}

/// Live counters, readable without the spool's lock (for `/v1/health`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records not yet acknowledged (on disk, or handed to the shipper).
    pub backlog_events: AtomicU64,
    /// Bytes of all segments on disk.
    pub spool_bytes: AtomicU64,
    /// Accesses lost since start (spool full, memory buffer full, write errors).
    pub dropped_total: AtomicU64,
    /// Accesses counted as lost and not yet in a `dropped` record (the next append, within one
    /// coalescing window, writes it): the status shows them at once, not a window later.
    pub pending_dropped: AtomicU64,
    /// Corrupt or torn records skipped when the spool was opened.
    pub corrupt_skipped: AtomicU64,
    /// The acknowledged cursor.
    pub acked_seq: AtomicU64,
    /// The last `seq` written (0: none since start).
    pub last_seq: AtomicU64,
}

/// A snapshot of the spool's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    pub backlog_events: u64,
    pub spool_bytes: u64,
    pub dropped_total: u64,
    pub corrupt_skipped: u64,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub segments: usize,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    bytes: u64,
}

/// Where the last `read_after` stopped, so the next one does not rescan the segment.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    segment: u64,
    offset: u64,
    last_seq: u64,
}

/// The spool. Not thread-safe by itself: the auditor keeps it behind a mutex that only its
/// background writer and shipper take.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    _lock: Flock<File>,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    /// The append handle of `segments.back()`, when that segment is still open for writing.
    active: Option<File>,
    next_segment_id: u64,
    next_seq: u64,
    /// Persisted high-water mark: numbers below it may be used without writing it again.
    reserved_seq: u64,
    acked: u64,
    /// The last batch handed to the shipper: (the `after` it was read with, its last seq, its
    /// record count).
    inflight: Option<(u64, u64, u64)>,
    /// Accesses dropped and not yet reported in a `dropped` event.
    pending_dropped: u64,
    total_bytes: u64,
    backlog: u64,
    cursor: Option<Cursor>,
    counters: Arc<Counters>,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, recovering from any damage.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<Spool, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SpoolError::Busy(dir.to_path_buf()))?;

        let acked = read_number(&dir.join("ack")).unwrap_or(0);
        let reserved = read_number(&dir.join("seq")).unwrap_or(0);

        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|id| *id <= MAX_SEQ)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let counters = Arc::new(Counters::default());
        let mut segments = VecDeque::new();
        let (mut backlog, mut total, mut max_seq, mut corrupt) = (0u64, 0u64, 0u64, 0u64);
        for &id in &ids {
            let path = segment_path(dir, id);
            let scan = scan_segment(&path, acked)?;
            corrupt += scan.corrupt;
            let seg = Segment {
                id,
                path,
                first_seq: scan.first_seq,
                last_seq: scan.last_seq,
                bytes: scan.bytes,
            };
            max_seq = max_seq.max(scan.last_seq.unwrap_or(0));
            if seg.last_seq.is_none_or(|l| l <= acked) {
                // Fully acknowledged, empty, or nothing readable left.
                fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
                continue;
            }
            backlog += scan.unacked;
            total += seg.bytes;
            segments.push_back(seg);
        }
        if corrupt > 0 {
            tracing::warn!(
                spool = %dir.display(),
                skipped = corrupt,
                "audit spool: skipped corrupt or torn records on open"
            );
        }
        sync_dir(dir)?;

        let next_seq = reserved.max(max_seq + 1).max(acked + 1).max(now_micros());
        counters.backlog_events.store(backlog, Ordering::Relaxed);
        counters.spool_bytes.store(total, Ordering::Relaxed);
        counters.corrupt_skipped.store(corrupt, Ordering::Relaxed);
        counters.acked_seq.store(acked, Ordering::Relaxed);
        counters.last_seq.store(max_seq, Ordering::Relaxed);
        Ok(Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            limits,
            segments,
            active: None,
            next_segment_id: ids.last().map_or(1, |i| i + 1),
            next_seq,
            reserved_seq: next_seq,
            acked,
            inflight: None,
            pending_dropped: 0,
            total_bytes: total,
            backlog,
            cursor: None,
            counters,
        })
    }

    /// The live counters (shared; readable without the spool).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            backlog_events: self.backlog,
            spool_bytes: self.total_bytes,
            dropped_total: self.counters.dropped_total.load(Ordering::Relaxed),
            corrupt_skipped: self.counters.corrupt_skipped.load(Ordering::Relaxed),
            acked_seq: self.acked,
            next_seq: self.next_seq,
            segments: self.segments.len(),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Appends events (their `seq` is assigned here, in order) and fsyncs. If old records had
    /// to be dropped to stay within the bound, a `dropped` event is appended after them.
    /// Returns the last `seq` written, if any.
    ///
    /// On a write error, the events not written are counted as dropped (reported by the next
    /// successful append) and the error is returned.
    pub fn append(&mut self, events: Vec<AccessEvent>) -> Result<Option<u64>, SpoolError> {
        if events.is_empty() && self.pending_dropped == 0 {
            return Ok(None);
        }
        if let Err(e) = self.reserve(events.len() as u64 + DROP_REPORT_ROUNDS) {
            self.lose(events);
            return Err(e);
        }
        let mut last = None;
        let mut events = events.into_iter();
        while let Some(mut ev) = events.next() {
            ev.seq = self.next_seq;
            if let Err(e) = self.write_event(&ev) {
                // This event and the rest are lost: report them like a full spool would.
                self.lose(std::iter::once(ev).chain(events));
                return Err(e);
            }
            self.next_seq += 1;
            last = Some(ev.seq);
        }
        // Report drops. Room is made first (which may drop more), so the count is final when
        // the event is built; a few rounds at most, as each one only drops older segments.
        for _ in 0..DROP_REPORT_ROUNDS {
            if self.pending_dropped == 0 {
                break;
            }
            let estimate = framed_len(&AccessEvent::dropped(u64::MAX, u64::MAX));
            self.make_way(estimate)?;
            let ev = AccessEvent::dropped(self.next_seq, self.pending_dropped);
            self.write_event(&ev)?;
            self.next_seq += 1;
            self.pending_dropped -= ev.count;
            self.publish_pending_dropped();
            last = Some(ev.seq);
        }
        if let Some(f) = &self.active {
            let path = &self.segments.back().expect("active segment").path;
            f.sync_data().map_err(io_err("fsync", path))?;
        }
        if let Some(l) = last {
            self.counters.last_seq.store(l, Ordering::Relaxed);
        }
        Ok(last)
    }

    /// Like [`read_after`](Self::read_after), and marks the records as handed to the shipper:
    /// dropping them to make room no longer counts them as lost, since the shipper holds them
    /// in memory until they are acknowledged.
    pub fn take_batch(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<AccessEvent>, SpoolError> {
        let out = self.read_after(after, max_events, max_bytes)?;
        if let Some(last) = out.last() {
            self.inflight = Some((after, last.seq, out.len() as u64));
        }
        Ok(out)
    }

    /// Up to `max_events` records (and about `max_bytes` of payload, at least one record) with
    /// `seq > after`, oldest first.
    pub fn read_after(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<AccessEvent>, SpoolError> {
        let mut out: Vec<AccessEvent> = Vec::new();
        let mut bytes = 0usize;
        let max_events = max_events.max(1);
        'segments: for seg in self.segments.iter() {
            if seg.last_seq.is_none_or(|l| l <= after) {
                continue;
            }
            let start = match self.cursor {
                Some(c) if c.segment == seg.id && c.last_seq == after => c.offset,
                _ => 0,
            };
            let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seek", &seg.path))?;
            let mut reader = FrameReader::new(BufReader::new(file));
            let mut offset = start;
            loop {
                match reader.next_frame().map_err(io_err("read", &seg.path))? {
                    Frame::Good { payload, size } => {
                        offset += size;
                        let Ok(ev) = serde_json::from_slice::<AccessEvent>(&payload) else {
                            continue;
                        };
                        if ev.seq <= after {
                            continue;
                        }
                        bytes += payload.len();
                        self.cursor = Some(Cursor {
                            segment: seg.id,
                            offset,
                            last_seq: ev.seq,
                        });
                        out.push(ev);
                        if out.len() >= max_events || bytes >= max_bytes {
                            break 'segments;
                        }
                    }
                    Frame::Corrupt { size } => offset += size,
                    Frame::Torn { .. } | Frame::End => break,
                }
            }
        }
        Ok(out)
    }

    /// Records that every record with `seq <= upto` reached the vault: persists the cursor and
    /// deletes fully acknowledged segments.
    pub fn ack(&mut self, upto: u64) -> Result<(), SpoolError> {
        self.ack_counted(upto, None)
    }

    /// [`ack`](Self::ack) by the shipper, which knows how many records of its batch (taken with
    /// [`take_batch`](Self::take_batch)) it acknowledges: the backlog stays exact even when part
    /// of the batch was meanwhile dropped from disk, and the rest stays marked as in flight.
    pub fn ack_records(&mut self, upto: u64, records: u64) -> Result<(), SpoolError> {
        self.ack_counted(upto, Some(records))
    }

    /// Adds `count` accesses the vault will never take (it rejected their events) to the next
    /// `dropped` event.
    pub fn report_lost(&mut self, count: u64) {
        self.counters
            .dropped_total
            .fetch_add(count, Ordering::Relaxed);
        self.pending_dropped += count;
        self.publish_pending_dropped();
    }

    /// Mirrors `pending_dropped` into the live counters (read by the status without the lock).
    pub(super) fn publish_pending_dropped(&self) {
        self.counters
            .pending_dropped
            .store(self.pending_dropped, Ordering::Relaxed);
    }

    fn ack_counted(&mut self, upto: u64, records: Option<u64>) -> Result<(), SpoolError> {
        if upto <= self.acked {
            return Ok(());
        }
        let acked_now = match (records, self.inflight) {
            (Some(n), _) => n,
            // Acknowledging exactly the batch just taken.
            (None, Some((from, last, n))) if from == self.acked && last == upto => n,
            _ => self.count_on_disk(self.acked, upto)?,
        };
        write_atomic(&self.dir, "ack", upto)?;
        self.acked = upto;
        self.inflight = match self.inflight {
            Some((_, last, n)) if last > upto => Some((upto, last, n.saturating_sub(acked_now))),
            _ => None,
        };
        self.backlog = self.backlog.saturating_sub(acked_now);
        let mut removed = false;
        while let Some(front) = self.segments.front() {
            let done = front.last_seq.is_none_or(|l| l <= upto);
            let is_active = self.segments.len() == 1 && self.active.is_some();
            if !done || (is_active && front.last_seq.is_none()) {
                break;
            }
            if is_active {
                self.active = None;
            }
            let seg = self.segments.pop_front().expect("front");
            fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            self.total_bytes -= seg.bytes;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        self.publish();
        Ok(())
    }

    /// Makes the written records durable (already done by `append`; for a clean shutdown).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(f) = &self.active {
            let path = &self.segments.back().expect("active segment").path;
            f.sync_all().map_err(io_err("fsync", path))?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------

    fn publish(&self) {
        let c = &self.counters;
        c.backlog_events.store(self.backlog, Ordering::Relaxed);
        c.spool_bytes.store(self.total_bytes, Ordering::Relaxed);
        c.acked_seq.store(self.acked, Ordering::Relaxed);
    }

    /// Persists a high-water mark covering the next `n` numbers, if not already covered.
    fn reserve(&mut self, n: u64) -> Result<(), SpoolError> {
        if self.next_seq + n > self.reserved_seq {
            let mark = self.next_seq + n + SEQ_RESERVE;
            write_atomic(&self.dir, "seq", mark)?;
            self.reserved_seq = mark;
        }
        Ok(())
    }

    fn write_event(&mut self, ev: &AccessEvent) -> Result<(), SpoolError> {
        let payload = serde_json::to_vec(ev).expect("an access event always serializes");
        let mut framed = Vec::with_capacity(payload.len() + frame::HEADER);
        frame::encode(&payload, &mut framed);
        self.make_way(framed.len() as u64)?;
        self.ensure_active()?;
        let len = framed.len() as u64;
        let seg = self.segments.back_mut().expect("active segment");
        let file = self.active.as_mut().expect("active file");
        if let Err(e) = file.write_all(&framed) {
            // Never leave a torn record in front of later ones: cut it off, or start afresh.
            if file.set_len(seg.bytes).is_err() {
                self.active = None;
            }
            return Err(SpoolError::Io {
                op: "write",
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.first_seq.get_or_insert(ev.seq);
        seg.last_seq = Some(ev.seq);
        seg.bytes += len;
        self.total_bytes += len;
        self.backlog += 1;
        self.publish();
        Ok(())
    }

    /// Before writing `len` bytes: closes a full open segment, then drops old segments until
    /// `len` more bytes fit.
    fn make_way(&mut self, len: u64) -> Result<(), SpoolError> {
        if self.active.is_some() {
            let back = self.segments.back().expect("active segment");
            if back.bytes > 0 && back.bytes + len > self.limits.segment_bytes {
                self.close_active()?;
            }
        }
        self.make_room(len)
    }

    fn close_active(&mut self) -> Result<(), SpoolError> {
        if let Some(f) = self.active.take() {
            let path = &self.segments.back().expect("active segment").path;
            f.sync_data().map_err(io_err("fsync", path))?;
        }
        Ok(())
    }

    fn ensure_active(&mut self) -> Result<(), SpoolError> {
        if self.active.is_some() {
            return Ok(());
        }
        let id = self.next_segment_id;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        sync_dir(&self.dir)?;
        self.next_segment_id += 1;
        self.segments.push_back(Segment {
            id,
            path,
            first_seq: None,
            last_seq: None,
            bytes: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Records on disk with `after < seq <= upto` (the slow path of `ack`).
    fn count_on_disk(&self, after: u64, upto: u64) -> Result<u64, SpoolError> {
        let mut n = 0;
        for seg in &self.segments {
            if seg.last_seq.is_none_or(|l| l <= after) || seg.first_seq.is_none_or(|f| f > upto) {
                continue;
            }
            for_each_event(&seg.path, |ev| {
                n += u64::from(ev.seq > after && ev.seq <= upto)
            })
            .map_err(io_err("read", &seg.path))?;
        }
        Ok(n)
    }
}
