//! The floor of a FUSE read on this machine: the smallest fuser filesystem that serves one
//! 64-byte file the way fyvault does (direct I/O, no FLUSH, attributes and entries cached), with
//! no access check, no audit, no lock, no allocation beyond fuser's own. What fyvault costs
//! above it is fyvault's; what it costs above tmpfs is the kernel's FUSE round trips.
//!
//! [`FloorMode`] picks how `open` answers, to measure the read paths FUSE offers side by side:
//! direct I/O (OPEN + READ), `FOPEN_KEEP_CACHE` (OPEN; the page cache answers READ after the
//! first), passthrough to a memfd (OPEN; the kernel reads the memfd). `clone_fd` gives each
//! worker thread its own `/dev/fuse` descriptor.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr,
    ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen, Request, Session, SessionACL,
};
use nix::mount::{MntFlags, MsFlags};

use super::cleanup;

const TTL: Duration = Duration::from_secs(3600);
const FILE: u64 = 2;

/// How the floor filesystem's `open` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorMode {
    DirectIo,
    KeepCache,
    Passthrough,
}

impl FloorMode {
    pub fn label(self) -> &'static str {
        match self {
            FloorMode::DirectIo => "direct I/O",
            FloorMode::KeepCache => "FOPEN_KEEP_CACHE",
            FloorMode::Passthrough => "passthrough to a memfd",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            FloorMode::DirectIo => "direct_io",
            FloorMode::KeepCache => "keep_cache",
            FloorMode::Passthrough => "passthrough",
        }
    }
}

struct FloorFs {
    name: String,
    content: Vec<u8>,
    time: SystemTime,
    mode: FloorMode,
    /// Passthrough: the memfd holding `content` and its backing id (made at the first open,
    /// kept for the mount's life).
    memfd: OnceLock<std::fs::File>,
    backing: OnceLock<BackingId>,
}

impl FloorFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == 1;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir { 0 } else { self.content.len() as u64 },
            blocks: 1,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o440 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for FloorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.mode == FloorMode::Passthrough {
            config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .map_err(|_| std::io::Error::other("no FUSE passthrough on this kernel"))?;
            config
                .set_max_stack_depth(1)
                .map_err(|_| std::io::Error::other("max_stack_depth"))?;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == OsStr::new(&self.name) {
            reply.entry_with_ttls(&TTL, &TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 | FILE => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.mode {
            FloorMode::DirectIo => reply.opened(
                FileHandle(1),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            FloorMode::KeepCache => reply.opened(
                FileHandle(1),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            FloorMode::Passthrough => {
                let memfd = self.memfd.get_or_init(|| {
                    let fd = nix::sys::memfd::memfd_create(
                        c"floor",
                        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                    )
                    .expect("memfd_create");
                    let mut f = std::fs::File::from(fd);
                    f.write_all(&self.content).expect("fill the memfd");
                    f
                });
                let id = self.backing.get_or_init(|| {
                    reply
                        .open_backing(memfd)
                        .expect("FUSE_DEV_IOC_BACKING_OPEN")
                });
                reply.opened_passthrough(FileHandle(1), FopenFlags::FOPEN_NOFLUSH, id);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.content.len());
        let end = start.saturating_add(size as usize).min(self.content.len());
        reply.data(&self.content[start..end]);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// A mounted floor filesystem; detached on drop.
pub struct FloorMount {
    path: PathBuf,
    session: Option<BackgroundSession>,
}

impl FloorMount {
    /// Mounts at `path` (created) a filesystem with one file `name` holding `content`, served
    /// by `threads` fuser threads.
    pub fn start(path: &Path, name: &str, content: &[u8], threads: usize) -> FloorMount {
        Self::start_mode(path, name, content, threads, FloorMode::DirectIo, false)
    }

    /// [`start`](Self::start) answering `open` as `mode`, with `clone_fd` or not.
    pub fn start_mode(
        path: &Path,
        name: &str,
        content: &[u8],
        threads: usize,
        mode: FloorMode,
        clone_fd: bool,
    ) -> FloorMount {
        std::fs::create_dir_all(path).unwrap();
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse")
            .into();
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            fd.as_raw_fd()
        );
        cleanup::register_mount(path);
        nix::mount::mount(
            Some("floor"),
            path,
            Some("fuse.floor"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .expect("mount the floor filesystem");
        let fs = FloorFs {
            name: name.to_owned(),
            content: content.to_vec(),
            time: SystemTime::now(),
            mode,
            memfd: OnceLock::new(),
            backing: OnceLock::new(),
        };
        let mut config = Config::default();
        config.n_threads = Some(threads);
        config.clone_fd = clone_fd;
        config.acl = SessionACL::All;
        let session = Session::from_fd(fs, fd, SessionACL::All, config)
            .expect("FUSE handshake")
            .spawn()
            .expect("FUSE session");
        FloorMount {
            path: path.to_owned(),
            session: Some(session),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FloorMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH);
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
        cleanup::unregister_mount(&self.path);
    }
}
