//! File helpers of the spool: segment scanning and recovery, small atomically replaced files.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::frame::{self, Frame, FrameReader};
use super::{SpoolError, io_err};
use crate::api::AccessEvent;

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

/// Microseconds since the epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Framed size of an event.
pub fn framed_len(ev: &AccessEvent) -> u64 {
    (serde_json::to_vec(ev).map_or(0, |p| p.len()) + frame::HEADER) as u64
}

/// A decimal number kept in a small file (`ack`, `seq`); `None` if missing or unreadable.
pub fn read_number(path: &Path) -> Option<u64> {
    match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(file = %path.display(), "audit spool: ignoring an unreadable number file");
                None
            }
        },
        Err(_) => None,
    }
}

/// Replaces `dir/name` with `value` atomically and durably (temp file, fsync, rename, fsync
/// of the directory).
pub fn write_atomic(dir: &Path, name: &str, value: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Calls `f` for every readable event of a segment, in order (corrupt records skipped, reading
/// stops at a torn tail).
pub fn for_each_event(path: &Path, mut f: impl FnMut(AccessEvent)) -> std::io::Result<()> {
    let mut reader = FrameReader::new(BufReader::new(File::open(path)?));
    loop {
        match reader.next_frame()? {
            Frame::Good { payload, .. } => {
                if let Ok(ev) = serde_json::from_slice::<AccessEvent>(&payload) {
                    f(ev);
                }
            }
            Frame::Corrupt { .. } => {}
            Frame::Torn { .. } | Frame::End => return Ok(()),
        }
    }
}

/// What scanning one segment on open found.
#[derive(Debug, Default)]
pub struct Scan {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Size after truncating a torn tail.
    pub bytes: u64,
    /// Readable records with `seq > acked`.
    pub unacked: u64,
    /// Corrupt records skipped plus torn tails cut off.
    pub corrupt: u64,
}

/// Scans a segment, truncating a torn tail. A record whose JSON does not parse (or whose seq
/// does not increase) is skipped and counted like a bad checksum.
pub fn scan_segment(path: &Path, acked: u64) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut reader = FrameReader::new(BufReader::new(file));
    let mut scan = Scan::default();
    let mut offset = 0u64;
    loop {
        match reader.next_frame().map_err(io_err("read", path))? {
            Frame::Good { payload, size } => {
                offset += size;
                match serde_json::from_slice::<AccessEvent>(&payload) {
                    Ok(ev) if scan.last_seq.is_none_or(|l| ev.seq > l) => {
                        scan.first_seq.get_or_insert(ev.seq);
                        scan.last_seq = Some(ev.seq);
                        scan.unacked += u64::from(ev.seq > acked);
                    }
                    _ => scan.corrupt += 1,
                }
            }
            Frame::Corrupt { size } => {
                offset += size;
                scan.corrupt += 1;
            }
            Frame::Torn { size } => {
                tracing::warn!(
                    segment = %path.display(),
                    at = offset,
                    bytes = size,
                    "audit spool: truncating a torn tail"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                f.set_len(offset).map_err(io_err("truncate", path))?;
                f.sync_all().map_err(io_err("fsync", path))?;
                scan.corrupt += 1;
                break;
            }
            Frame::End => break,
        }
    }
    scan.bytes = offset;
    Ok(scan)
}
