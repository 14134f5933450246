//! How a secret file's bytes reach readers: FUSE passthrough to one memfd per secret version
//! where the kernel offers it (Linux ≥ 6.9), else direct I/O (every `read` asks the agent).
//! Chosen once per mount, at the FUSE handshake (`init`); `fuse_read_path` in the config can
//! force either (docs/agent.md). The mount logs which one is in use and `/v1/health` shows it.
//!
//! **Passthrough.** `open` still reaches the agent for every open (the policy check and the
//! access event happen there); its reply hands the kernel a *backing file*, the memfd holding
//! the opened version ([`Memfd`]: locked in memory, never on disk), and the kernel then serves
//! `read` (and `mmap`) from that file itself, without asking the agent: one synchronous round
//! trip per open+read+close instead of two. The contract (DESIGN §4.2) holds this way:
//!
//! - *a handle reads its own version*: every version has its own memfd, and its own inode
//!   (see `inodes`: the kernel requires every passthrough handle of an inode to share one
//!   backing file, and a page cache of one inode must never hold two versions). An `open` that
//!   reaches the agent through a name entry the kernel still held for an older version is
//!   answered ESTALE, which makes the kernel look the name up again and retry the open once:
//!   new opens get the current version;
//! - *after a revoke or the end of a grace period, no read returns the value*: the memfd of
//!   every version the view no longer serves is wiped (truncated to 0 bytes) synchronously,
//!   before the change returns (the mount's invalidator calls [`Backings::retain_readable`]).
//!   A handle still open on it then reads **end-of-file** (0 bytes) instead of ESTALE — the
//!   agent is no longer asked, so it cannot answer an error — and a mapping of it faults.
//!
//! A memfd is made when a version is first opened (never at sync: 10,000 secrets make no memfd
//! until read) and kept while the version is current, so later opens reuse it; a version that
//! is no longer current (the previous one, during its grace) keeps its memfd only while a
//! handle holds it: it is wiped and closed when its last handle is released, or at the change
//! that made it previous if no handle held it then (a later open of it makes a new one). If one
//! cannot be made (e.g. its pages cannot be locked), that open is served with direct I/O
//! instead, and a warning is logged once.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fuser::{BackingId, Errno, FileHandle, FopenFlags, InitFlags, KernelConfig, ReplyOpen};
use serde::Deserialize;

use super::SecretFs;
use super::memfd::Memfd;
use crate::agent::secret_view::SecretView;
use crate::agent::view::Which;

/// `fuse_read_path` in the config: which read path to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPathChoice {
    /// Passthrough where the kernel offers it, else direct I/O.
    #[default]
    Auto,
    /// Passthrough, or the mount fails.
    Passthrough,
    /// Direct I/O even where passthrough is offered.
    DirectIo,
}

/// The read path a mount uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    Passthrough,
    DirectIo,
}

impl ReadPath {
    /// `passthrough` / `direct_io` (logs, `/v1/health`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPath::Passthrough => "passthrough",
            ReadPath::DirectIo => "direct_io",
        }
    }
}

/// Decides the read path at the FUSE handshake, asking the kernel for passthrough when wanted.
pub(super) fn negotiate(choice: ReadPathChoice, config: &mut KernelConfig) -> io::Result<ReadPath> {
    if choice == ReadPathChoice::DirectIo {
        return Ok(ReadPath::DirectIo);
    }
    // Backing files are memfds (shmem, not stacked): a stacking depth of 1 is enough.
    let offered = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && config.set_max_stack_depth(1).is_ok();
    match (offered, choice) {
        (true, _) => Ok(ReadPath::Passthrough),
        (false, ReadPathChoice::Passthrough) => Err(io::Error::other(
            "fuse_read_path = \"passthrough\", but this kernel offers no FUSE passthrough \
             (Linux 6.9 or later with CONFIG_FUSE_PASSTHROUGH)",
        )),
        (false, _) => Ok(ReadPath::DirectIo),
    }
}

/// A version's memfd and the kernel's id for it as a backing file.
#[derive(Debug)]
struct Backing {
    /// Declared first: the id is closed before the memfd is wiped and closed.
    id: Arc<BackingId>,
    /// Held for its `Drop`, which wipes it.
    _memfd: Memfd,
    /// Opens answered with it whose handle is not released yet.
    handles: usize,
}

/// (secret name, version).
type VersionKey = (String, u64);

/// The backing files of the versions passthrough handles read, by (name, version).
#[derive(Debug, Default)]
pub struct Backings {
    by_version: Mutex<HashMap<VersionKey, Backing>>,
    /// The backing id each open passthrough handle was given, kept until its RELEASE: the
    /// kernel looks the id up after our reply, when the opener resumes, so the id must outlive
    /// the reply (a closed id fails that open with EIO). Wiping does not wait for these: the
    /// memfd is emptied at once, whoever holds an id for it.
    /// Each entry also names the (name, version) the handle reads.
    by_handle: Mutex<HashMap<u64, (VersionKey, Arc<BackingId>)>>,
    /// A memfd could not be made once (logged once).
    warned: AtomicBool,
}

impl Backings {
    pub fn new() -> Self {
        Self::default()
    }

    /// The backing id for `name` at `version` (as `which`), made from the view's value on
    /// first use, for one open (counted until its handle's [`release`](Self::release)).
    /// `Ok(None)`: the view no longer serves that version.
    ///
    /// The view is asked while the table's lock is held, and [`retain_readable`] takes the
    /// same lock after every view change: so a memfd is either made before a change and wiped
    /// by it, or not made at all.
    fn get_or_make(
        &self,
        view: &SecretView,
        name: &str,
        which: Which,
        version: u64,
        reply: &ReplyOpen,
    ) -> io::Result<Option<Arc<BackingId>>> {
        let mut map = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if view.meta(name, which).is_none_or(|m| m.version != version) {
            return Ok(None);
        }
        let key = (name.to_owned(), version);
        if let Some(b) = map.get_mut(&key) {
            b.handles += 1;
            return Ok(Some(b.id.clone()));
        }
        let value = match view.get(name, which) {
            Ok((meta, value)) if meta.version == version => value,
            _ => return Ok(None),
        };
        let memfd = Memfd::with_bytes(value.expose())?;
        let id = Arc::new(reply.open_backing(&memfd)?);
        map.insert(
            key,
            Backing {
                id: id.clone(),
                _memfd: memfd,
                handles: 1,
            },
        );
        Ok(Some(id))
    }

    /// Wipes and forgets the memfd of every version the view no longer serves, and of every
    /// version no longer current that no handle holds (run after every view change, before
    /// the change returns).
    pub fn retain_readable(&self, view: &SecretView) {
        let mut map = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|(name, version), b| {
            let is = |w| view.meta(name, w).is_some_and(|m| m.version == *version);
            is(Which::Current) || (is(Which::Previous) && b.handles > 0)
        });
    }

    /// Wipes and forgets every memfd (the mount is going away).
    pub fn wipe_all(&self) {
        let all = std::mem::take(
            &mut *self
                .by_version
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        drop(all); // each memfd is wiped as it drops
    }

    /// Keeps `id` (of `name` at `version`) until handle `fh` is released.
    fn hold(&self, fh: u64, name: &str, version: u64, id: Arc<BackingId>) {
        self.by_handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fh, ((name.to_owned(), version), id));
    }

    /// Handle `fh` was released (RELEASE): its backing id may close, and the memfd of its
    /// version too when that version is no longer current and no other handle holds it.
    pub fn release(&self, fh: u64, view: &SecretView) {
        let held = self
            .by_handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&fh);
        let Some((key, id)) = held else { return };
        drop(id); // outside the lock: the last drop is an ioctl
        let mut map = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(b) = map.get_mut(&key) else { return };
        b.handles = b.handles.saturating_sub(1);
        let current = view
            .meta(&key.0, Which::Current)
            .is_some_and(|m| m.version == key.1);
        if b.handles == 0 && !current {
            map.remove(&key); // wiped as it drops
        }
    }

    /// Number of memfds held (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SecretFs {
    /// Answers a successful `open` of a secret file (handle `fh`, pinned to `version`) on the
    /// mount's read path.
    pub(super) fn reply_secret_opened(
        &self,
        fh: u64,
        name: &str,
        which: Which,
        version: u64,
        reply: ReplyOpen,
    ) {
        let direct = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH;
        if self.read_path() != ReadPath::Passthrough {
            return reply.opened(FileHandle(fh), direct);
        }
        match self
            .read
            .backings
            .get_or_make(&self.state.view, name, which, version, &reply)
        {
            Ok(Some(id)) => {
                self.read.backings.hold(fh, name, version, id.clone());
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
            }
            Ok(None) => {
                self.state.view.close(fh);
                reply.error(Errno::ESTALE);
            }
            Err(e) => {
                if !self.read.backings.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "fuse: cannot make a locked memfd for passthrough; serving this open \
                         with direct I/O (logged once)"
                    );
                }
                reply.opened(FileHandle(fh), direct);
            }
        }
    }
}
