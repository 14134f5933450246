//! The floor of a FUSE read on this machine: the smallest fuser filesystem that serves one
//! 64-byte file the way fyvault does (direct I/O, no FLUSH, attributes and entries cached), with
//! no access check, no audit, no lock, no allocation beyond fuser's own. What fyvault costs
//! above it is fyvault's; what it costs above tmpfs is the kernel's FUSE round trips.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry,
    ReplyOpen, Request, Session, SessionACL,
};
use nix::mount::{MntFlags, MsFlags};

use super::cleanup;

const TTL: Duration = Duration::from_secs(3600);
const FILE: u64 = 2;

struct FloorFs {
    name: String,
    content: Vec<u8>,
    time: SystemTime,
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
        reply.opened(
            FileHandle(1),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
        );
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
        };
        let mut config = Config::default();
        config.n_threads = Some(threads);
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
