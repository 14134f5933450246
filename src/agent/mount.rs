//! The FUSE mount's lifecycle (DESIGN §4.2, §4.6): prepare the mountpoint (create it, clean a
//! stale mount left by a crash, refuse a busy one), mount, keep the kernel's caches in step
//! with the view, and on shutdown detach lazily so open readers finish.
//!
//! ```ignore
//! let mounted = Mounted::start("/run/fyvault", state.clone())?;   // blocking, quick
//! // ... on SIGTERM (from a blocking context, e.g. tokio::task::spawn_blocking):
//! mounted.shutdown_timeout(Duration::from_secs(10))?;             // detach, wait for readers
//! ```
//!
//! The mount is made here, not by fuser: `mount(2)` on a `/dev/fuse` descriptor (no libfuse, no
//! `fusermount3`; the agent runs as root), options `ro,nosuid,nodev,noexec,allow_other`, no
//! `default_permissions`, source `fyvault`, type `fuse.fyvault`. Doing it ourselves means the
//! unmount is ours too: always `umount2(MNT_DETACH)` (lazy: the path is free at once, open
//! files keep working until closed), and only when the path still carries *our* mount (same
//! device), never whatever was mounted there later.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::ffi::OsStr;

use fuser::{BackgroundSession, Config, INodeNo, Notifier, Session, SessionACL};
use nix::mount::{MntFlags, MsFlags};

use crate::agent::fs::{
    Backings, Inodes, PREVIOUS_DIR, ROOT, ReadPath, ReadPathChoice, ReadSetup, SecretFs,
};
use crate::agent::secret_view::Invalidate;
use crate::agent::state::AgentState;
use crate::agent::view::Change;

/// FUSE worker threads serving requests.
pub const FUSE_THREADS: usize = 4;

/// What to do about a failed open of `/dev/fuse`, by its cause.
fn fuse_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "no FUSE device: load the module (`modprobe fuse`), or in a container pass /dev/fuse in"
        }
        io::ErrorKind::PermissionDenied => {
            "the device exists but this user may not open it: the agent mounts with mount(2), \
             which needs root; run it as root (the packaged unit does), or `fyvault dev` without \
             root serves the socket only"
        }
        _ => "check that /dev/fuse is the FUSE character device (10, 229)",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open /dev/fuse: {0} ({hint})", hint = fuse_hint(.0))]
    NoFuse(#[source] io::Error),
    #[error("mountpoint {}: {source}", path.display())]
    Mountpoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mountpoint {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("mountpoint {} is not empty; refusing to mount over its files", path.display())]
    NotEmpty { path: PathBuf },
    #[error("{} is already a mount point ({what}); is another agent running?", path.display())]
    AlreadyMounted { path: PathBuf, what: String },
    #[error("mount {}: {source} (mounting FUSE needs root or CAP_SYS_ADMIN)", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the FUSE session at {} failed: {source}", path.display())]
    Session {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmount {}: {source}", path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} was detached, but files on it were still open after {waited:?}", path.display())]
    ReadersStillOpen { path: PathBuf, waited: Duration },
}

/// A live mount of the secrets filesystem.
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
    /// `st_dev` of the mount's root: tells our mount from anything mounted at the path later
    /// (None until the session serves requests).
    dev: Option<u64>,
    session: Option<BackgroundSession>,
    /// The state and the id of our cache invalidator in it (removed on detach).
    invalidator: Option<(Arc<AgentState>, u64)>,
    detached: bool,
    /// How secret files' bytes reach readers (chosen at the handshake).
    read_path: ReadPath,
    /// Passthrough's memfds: wiped when the mount is dropped, because a reader's open handle
    /// keeps its memfd alive (and readable) even after the agent's process is gone.
    backings: Arc<Backings>,
}

impl Mounted {
    /// Prepares `path` and mounts the filesystem there, serving `state`. Blocking (a few
    /// syscalls and the FUSE handshake); safe to call from `tokio::task::spawn_blocking`.
    pub fn start(path: impl Into<PathBuf>, state: Arc<AgentState>) -> Result<Mounted, MountError> {
        Self::start_with_read_path(path, state, ReadPathChoice::Auto)
    }

    /// [`start`](Self::start) with the read path chosen by `choice` (`fuse_read_path`).
    pub fn start_with_read_path(
        path: impl Into<PathBuf>,
        state: Arc<AgentState>,
        choice: ReadPathChoice,
    ) -> Result<Mounted, MountError> {
        Self::start_configured(path, state, choice, FUSE_THREADS)
    }

    /// [`start`](Self::start) with the read path `choice` and `threads` FUSE worker threads
    /// (`fuse_read_path`, `fuse_threads`).
    pub fn start_configured(
        path: impl Into<PathBuf>,
        state: Arc<AgentState>,
        choice: ReadPathChoice,
        threads: usize,
    ) -> Result<Mounted, MountError> {
        Self::start_inner(path.into(), state, threads, KernelReadOnly::Yes, choice)
    }

    /// [`start`](Self::start) with `threads` FUSE worker threads (at least 1; benchmarks).
    pub fn start_with_threads(
        path: impl Into<PathBuf>,
        state: Arc<AgentState>,
        threads: usize,
    ) -> Result<Mounted, MountError> {
        Self::start_inner(
            path.into(),
            state,
            threads,
            KernelReadOnly::Yes,
            ReadPathChoice::Auto,
        )
    }

    /// Mounts WITHOUT the kernel's read-only flag: the kernel then forwards every write-type
    /// operation to the filesystem. Only for tests that prove the filesystem refuses them by
    /// itself (`tests/fuse_access.rs`); the agent always mounts read-only.
    #[doc(hidden)]
    pub fn start_kernel_writable_for_tests(
        path: impl Into<PathBuf>,
        state: Arc<AgentState>,
    ) -> Result<Mounted, MountError> {
        Self::start_inner(
            path.into(),
            state,
            FUSE_THREADS,
            KernelReadOnly::No,
            ReadPathChoice::Auto,
        )
    }

    fn start_inner(
        path: PathBuf,
        state: Arc<AgentState>,
        threads: usize,
        read_only: KernelReadOnly,
        choice: ReadPathChoice,
    ) -> Result<Mounted, MountError> {
        prepare_mountpoint(&path)?;
        let dev_fuse = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(MountError::NoFuse)?;
        let fd: OwnedFd = dev_fuse.into();
        mount_fuse(&path, &fd, read_only)?;
        // From here on, a failure must not leave the mount behind (`Drop` detaches). Until the
        // session serves requests, nothing may touch the mount: the kernel holds every request
        // until the INIT handshake is answered.
        let mut mounted = Mounted {
            path,
            dev: None,
            session: None,
            invalidator: None,
            detached: false,
            read_path: ReadPath::DirectIo,
            backings: Arc::default(),
        };
        let session_err = |path: &Path| {
            let path = path.to_owned();
            move |source| MountError::Session { path, source }
        };
        let inodes = Arc::new(Inodes::new());
        let read = ReadSetup {
            choice,
            ..ReadSetup::default()
        };
        let (in_use, backings) = (read.in_use.clone(), read.backings.clone());
        mounted.backings = backings.clone();
        let fs = SecretFs::new(state.clone(), inodes.clone(), read);
        let mut config = Config::default();
        config.n_threads = Some(threads.max(1));
        config.acl = SessionACL::All;
        // The handshake reads the kernel's INIT, which the mount already queued.
        let session = Session::from_fd(fs, fd, SessionACL::All, config)
            .map_err(session_err(&mounted.path))?;
        let notifier = session.notifier();
        mounted.read_path = in_use.get().copied().unwrap_or(ReadPath::DirectIo);
        mounted.session = Some(session.spawn().map_err(session_err(&mounted.path))?);
        mounted.dev = Some(
            std::fs::metadata(&mounted.path)
                .map_err(session_err(&mounted.path))?
                .dev(),
        );
        let view = Arc::downgrade(&state);
        let id = state.view.add_invalidator(Arc::new(move |what| {
            invalidate(&notifier, &inodes, what);
            if let Some(state) = view.upgrade() {
                wipe_unserved(&backings, &state);
            }
        }));
        mounted.invalidator = Some((state, id));
        tracing::info!(
            path = %mounted.path.display(),
            read_path = mounted.read_path.as_str(),
            threads,
            "fuse: mounted"
        );
        Ok(mounted)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many passthrough memfds the mount holds now (tests, diagnostics).
    pub fn memfds(&self) -> usize {
        self.backings.len()
    }

    /// How secret files' bytes reach readers on this mount.
    pub fn read_path(&self) -> ReadPath {
        self.read_path
    }

    /// Detaches the mount lazily now: the path stops showing the secrets at once (and leaves
    /// `/proc/mounts`); already open files keep reading until they are closed. Idempotent.
    pub fn detach(&mut self) {
        if !self.detached {
            self.detached = true;
            if self.is_ours() {
                detach_path(&self.path);
                tracing::info!(path = %self.path.display(), "fuse: detached");
            }
        }
        if let Some((state, id)) = self.invalidator.take() {
            state.view.remove_invalidator(id);
        }
    }

    /// Detaches lazily, then waits (without limit) until every open file is closed and the
    /// FUSE session has ended. Blocking.
    pub fn shutdown(mut self) -> Result<(), MountError> {
        self.detach();
        match self.session.take() {
            Some(s) => s.join().map_err(|source| MountError::Session {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Like [`shutdown`](Self::shutdown), but gives open readers at most `limit` to finish.
    /// On timeout the session is left to end with the process (the kernel then fails the
    /// remaining readers' next reads) and `ReadersStillOpen` is returned.
    pub fn shutdown_timeout(mut self, limit: Duration) -> Result<(), MountError> {
        self.detach();
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fuse-join".into())
            .spawn(move || {
                let _ = tx.send(session.join());
            })
            .map_err(|source| MountError::Session {
                path: self.path.clone(),
                source,
            })?;
        match rx.recv_timeout(limit) {
            Ok(r) => r.map_err(|source| MountError::Session {
                path: self.path.clone(),
                source,
            }),
            Err(_) => Err(MountError::ReadersStillOpen {
                path: self.path.clone(),
                waited: limit,
            }),
        }
    }

    /// Does the path still carry this mount (or a dead FUSE mount, which can only be ours)?
    /// Before the session serves requests (a failed start) it is ours without asking: a `stat`
    /// would wait for a handshake nobody answers.
    fn is_ours(&self) -> bool {
        let Some(dev) = self.dev else {
            return true;
        };
        match std::fs::metadata(&self.path) {
            Ok(m) => m.dev() == dev,
            Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        }
    }
}

impl Drop for Mounted {
    /// Detaches if not shut down; does not wait for readers. Wipes passthrough's memfds: from
    /// here on no handle reads a value (the agent is about to stop serving).
    fn drop(&mut self) {
        self.detach();
        self.backings.wipe_all();
    }
}

/// Lazily detaches whatever is mounted at `path`, ignoring errors (nothing mounted, already
/// detached).
fn detach_path(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        tracing::debug!(path = %path.display(), error = %e, "fuse: lazy unmount");
    }
}

/// Makes `path` a usable mountpoint: created (0755) if missing, a stale FUSE mount left by a
/// crash ("Transport endpoint is not connected") detached, and refused when it is a file, a
/// non-empty directory or another live mount.
pub fn prepare_mountpoint(path: &Path) -> Result<(), MountError> {
    let err = |source: io::Error| MountError::Mountpoint {
        path: path.to_owned(),
        source,
    };
    // `statfs` always reaches the filesystem (a `stat` may be answered from cached attributes
    // of a mount whose server just died), so a dead FUSE mount shows as ENOTCONN here.
    let probe = nix::sys::statfs::statfs(path)
        .map_err(io::Error::from)
        .and_then(|_| std::fs::metadata(path));
    let meta = match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(path = %path.display(), "fuse: cleaning a stale mount left by a crash");
            nix::mount::umount2(path, MntFlags::MNT_DETACH).map_err(|e| MountError::Unmount {
                path: path.to_owned(),
                source: e.into(),
            })?;
            std::fs::metadata(path).map_err(err)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(err)?;
            std::fs::metadata(path).map_err(err)?
        }
        Err(e) => return Err(err(e)),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return Err(MountError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let parent = path
        .canonicalize()
        .map_err(err)?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let parent_dev = std::fs::metadata(&parent).map_err(err)?.dev();
    if parent_dev != meta.dev() {
        return Err(MountError::AlreadyMounted {
            path: path.to_owned(),
            what: describe_mount(path).unwrap_or_else(|| "unknown filesystem".into()),
        });
    }
    if std::fs::read_dir(path).map_err(err)?.next().is_some() {
        return Err(MountError::NotEmpty {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelReadOnly {
    Yes,
    No,
}

fn mount_fuse(path: &Path, fd: &OwnedFd, read_only: KernelReadOnly) -> Result<(), MountError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if read_only == KernelReadOnly::Yes {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},allow_other",
        fd.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid(),
    );
    nix::mount::mount(
        Some("fyvault"),
        path,
        Some("fuse.fyvault"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| MountError::Mount {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// "TYPE from SOURCE" of the mount at `path`, from `/proc/self/mountinfo`.
fn describe_mount(path: &Path) -> Option<String> {
    let want = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let mount_point = unescape_mountinfo(fields.get(4)?);
        (Path::new(&mount_point) == want).then(|| {
            format!(
                "{} from {}",
                fields.get(sep + 1).unwrap_or(&"?"),
                fields.get(sep + 2).unwrap_or(&"?")
            )
        })
    })
}

/// Decodes the `\ooo` octal escapes `/proc/self/mountinfo` uses for spaces and the like.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps the kernel's caches in step with the view: for every change, drops the cached entries
/// and attributes it affects. Runs synchronously inside `SecretView::apply` / expiry / policy
/// reload, after the view lock is released (see `state`), never inside a FUSE callback: an entry
/// invalidation waits for the directory's lock, which a request our threads serve may hold.
/// Errors are expected and ignored: the kernel answers ENOENT for what it does not cache, and
/// ENODEV once the mount is gone.
fn invalidate(notifier: &Notifier, inodes: &Inodes, what: Invalidate<'_>) {
    match what {
        Invalidate::All => {
            // Only the directories' attributes are cached (secret files' never are).
            for ino in [ROOT, PREVIOUS_DIR] {
                inval_attrs(notifier, ino);
            }
        }
        Invalidate::Changes(changes) => {
            for change in changes {
                let (root_entry, previous_entry) = match change {
                    Change::Added { .. } => (true, false),
                    // `/NAME` now names the new version's inode.
                    Change::Rotated { .. } => (true, true),
                    Change::Revoked { .. } => (true, true),
                    Change::PreviousExpired { .. } => (false, true),
                    Change::RefusedRollback { .. } => continue,
                };
                invalidate_name(notifier, inodes, change.name(), root_entry, previous_entry);
            }
        }
    }
}

/// Drops the cached attributes of `ino` only (a negative offset leaves the data cache alone:
/// there is none, every file is direct I/O).
fn inval_attrs(notifier: &Notifier, ino: u64) {
    let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
}

fn invalidate_name(
    notifier: &Notifier,
    inodes: &Inodes,
    name: &str,
    root_entry: bool,
    previous_entry: bool,
) {
    // Secret files' attributes are never cached (FILE_ATTR_TTL is 0) and every version has an
    // inode of its own: only the name entries can hold an old state.
    if !inodes.known(name) {
        return; // never looked up: the kernel holds nothing for it
    }
    if root_entry {
        let _ = notifier.inval_entry(INodeNo(ROOT), OsStr::new(name));
    }
    if previous_entry {
        let _ = notifier.inval_entry(INodeNo(PREVIOUS_DIR), OsStr::new(name));
    }
}

/// Passthrough: wipes the memfd of every version the view stopped serving, before the change
/// returns (see `fs::passthrough`).
fn wipe_unserved(backings: &Backings, state: &AgentState) {
    if !backings.is_empty() {
        backings.retain_readable(&state.view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuse_device_error_says_what_is_wrong() {
        let denied = MountError::NoFuse(io::Error::from_raw_os_error(libc::EACCES)).to_string();
        assert!(
            denied.starts_with("cannot open /dev/fuse: Permission denied"),
            "{denied}"
        );
        assert!(denied.contains("needs root") && !denied.contains("module loaded"));
        let missing = MountError::NoFuse(io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(missing.contains("modprobe fuse"), "{missing}");
    }

    #[test]
    fn mounted_can_live_in_async_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Mounted>();
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }

    #[test]
    fn mountpoint_preparation() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b/mnt");
        prepare_mountpoint(&fresh).unwrap();
        assert!(fresh.is_dir());
        std::fs::write(fresh.join("f"), b"x").unwrap();
        assert!(matches!(
            prepare_mountpoint(&fresh),
            Err(MountError::NotEmpty { .. })
        ));
        assert!(matches!(
            prepare_mountpoint(&fresh.join("f")),
            Err(MountError::NotADirectory { .. })
        ));
        // /proc is a mount point of its own.
        let e = prepare_mountpoint(Path::new("/proc")).unwrap_err();
        assert!(matches!(e, MountError::AlreadyMounted { .. }), "{e}");
        assert!(e.to_string().contains("proc"), "{e}");
    }
}
