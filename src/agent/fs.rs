//! The read-only FUSE filesystem (DESIGN §4.2): a thin fuser adapter over the view.
//!
//! It translates FUSE requests into view calls and view results into replies, and nothing
//! else: no network I/O, no blocking, and the view lock is held only for in-memory work (replies
//! are sent after it is released). The layout:
//!
//! ```text
//! /NAME             current value, exact bytes            (inode: interned, see `inodes`)
//! /.previous/NAME   previous value while its grace runs
//! /.env             KEY=value lines of what the caller may read (see `dotenv`)
//! /.env.sh          the same as `export KEY='value'` lines for shells
//! /app.conf         a `[[template]]` rendered at `open` for the caller (lowercase names)
//! ```
//!
//! Access is decided by the policy in `open` and `access` (the mount has no
//! `default_permissions`, so the kernel does not judge by mode bits and every refusal reaches
//! us, is answered EACCES and goes to the audit hook). Open files are pinned view handles. A
//! secret file's bytes reach the reader on the mount's read path (see [`passthrough`]): FUSE
//! passthrough to a locked memfd of the opened version where the kernel offers it (the kernel
//! reads it without asking us), else `FOPEN_DIRECT_IO`, where every `read` asks the view (which
//! answers ESTALE once the pinned version's grace ended or the secret was revoked). `.env` and
//! `.env.sh` are always direct I/O (their content depends on the caller).
//!
//! ## Who learns what
//! Every lookup, stat, access check and open of a secret asks the read gate
//! ([`crate::agent::gate`]), which states the rule once for every delivery path: names are
//! public, the policy decides *before* existence (EACCES from `lookup`, `getattr`, `access` and
//! `open` alike whether `NAME` exists or not, recorded as `denied`), and only an allowed caller
//! learns that a name is absent (ENOENT; a `lookup` or `open` of it is recorded as `missing`).
//! This file only translates: the gate's [`Refusal`] becomes an errno in [`errno`].
//!
//! ## Cache lifetimes
//! What the kernel may cache and for how long is decided in [`attrs`] (see there).
//!
//! ## Requests per read
//! `open` + `read` + `close` costs OPEN, READ and (asynchronously, after `close` returned)
//! RELEASE with direct I/O; OPEN and RELEASE with passthrough. FLUSH is not wanted: files are opened with `FOPEN_NOFLUSH`, and `flush` answers
//! ENOSYS, which makes kernels without `FOPEN_NOFLUSH` stop sending it.

mod attrs;
mod inodes;
mod memfd;
mod passthrough;

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::agent::access::Caller;
use crate::agent::dotenv::{self, Form};
use crate::agent::gate::{ReadRequest, Refusal};
use crate::agent::state::AgentState;
use crate::agent::view::{ReadError, Which};
use crate::api::AccessVia;

pub use attrs::{DIR_ATTR_TTL, DOTENV_ATTR_TTL, ENTRY_TTL, FILE_ATTR_TTL};
pub use inodes::{
    DOTENV, DOTENV_NAME, DOTENV_SH, DOTENV_SH_NAME, Inodes, Node, PREVIOUS_DIR, PREVIOUS_DIR_NAME,
    ROOT,
};
pub use passthrough::{Backings, ReadPath, ReadPathChoice};

/// The filesystem handed to fuser. Cheap to share: the state and the inode table are `Arc`s.
#[derive(Debug)]
pub struct SecretFs {
    state: Arc<AgentState>,
    inodes: Arc<Inodes>,
    /// Shown as the directories' times.
    mounted_at: SystemTime,
    read: ReadSetup,
}

/// What a mount shares with its filesystem about the read path.
#[derive(Debug, Clone, Default)]
pub struct ReadSetup {
    /// What to ask for at the handshake.
    pub choice: ReadPathChoice,
    /// The read path in use, set at the handshake.
    pub in_use: Arc<OnceLock<ReadPath>>,
    /// Passthrough's memfds (the mount's invalidator wipes those the view stopped serving).
    pub backings: Arc<Backings>,
}

impl SecretFs {
    pub fn new(state: Arc<AgentState>, inodes: Arc<Inodes>, read: ReadSetup) -> Self {
        SecretFs {
            state,
            inodes,
            mounted_at: SystemTime::now(),
            read,
        }
    }

    /// The read path in use (direct I/O until the handshake chose).
    fn read_path(&self) -> ReadPath {
        self.read
            .in_use
            .get()
            .copied()
            .unwrap_or(ReadPath::DirectIo)
    }

    fn caller(&self, req: &Request) -> Arc<Caller> {
        self.state.callers.resolve(req.uid(), req.gid(), req.pid())
    }

    /// The read request of `name` by `req`'s caller.
    fn ask<'a>(caller: &'a Caller, name: &'a str, which: Which) -> ReadRequest<'a> {
        ReadRequest::new(caller, AccessVia::Fuse, name).which(which)
    }

    /// Opens inode `ino` (`name` as `which`): the handle and the version it pins.
    fn open_secret(
        &self,
        req: &Request,
        ino: u64,
        name: &str,
        which: Which,
    ) -> Result<(u64, u64), Errno> {
        let caller = self.caller(req);
        let (fh, meta) = self
            .state
            .gate()
            .open(&Self::ask(&caller, name, which))
            .map_err(errno)?;
        if !Inodes::is_version(ino, meta.version) {
            // The kernel's entry still named an older version's inode (a rotation raced the
            // lookup): ESTALE makes it look the name up again and retry the open once. Rare;
            // the gate has recorded this open, so such a retry counts twice.
            self.state.view.close(fh);
            return Err(Errno::ESTALE);
        }
        Ok((fh, meta.version))
    }

    fn open_dotenv(&self, req: &Request, form: Form) -> u64 {
        let caller = self.caller(req);
        self.state
            .gate()
            .open_all(&caller, AccessVia::Fuse, |entries| {
                dotenv::render(form, entries.iter().copied())
            })
    }
}

/// The gate's refusal as an errno: EACCES for a denial, ENOENT for every kind of absence, EIO
/// for a template that could not be rendered.
pub(crate) fn errno(r: Refusal) -> Errno {
    match r {
        Refusal::Denied => Errno::EACCES,
        Refusal::NotFound
        | Refusal::NoPrevious
        | Refusal::NotReady
        | Refusal::UserRequired
        | Refusal::UserMissing => Errno::ENOENT,
        Refusal::CannotOpen | Refusal::Unrenderable => Errno::EIO,
    }
}

impl Filesystem for SecretFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let path = passthrough::negotiate(self.read.choice, config)?;
        // Set once per filesystem: the handshake runs once.
        let _ = self.read.in_use.set(path);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.resolve(req, parent.0, name) {
            Ok((attr, attr_ttl, entry_ttl)) => {
                reply.entry_with_ttls(&attr_ttl, &entry_ttl, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(req, ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_CREAT) != 0
        {
            return reply.error(Errno::EROFS);
        }
        let opened = match self.inodes.node(ino.0) {
            None => Err(Errno::ENOENT),
            Some(Node::Root | Node::PreviousDir) => Err(Errno::EISDIR),
            Some(Node::DotEnv(form)) => Ok(self.open_dotenv(req, form)),
            Some(Node::Secret(name, which)) => match self.open_secret(req, ino.0, &name, which) {
                Ok((fh, version)) => {
                    return self.reply_secret_opened(fh, &name, which, version, reply);
                }
                Err(e) => Err(e),
            },
            Some(Node::Template(name)) => self
                .state
                .gate()
                .open_template(&self.caller(req), AccessVia::Fuse, &name)
                .map_err(errno),
        };
        match opened {
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Copied out under the lock into a zeroizing buffer; the reply goes after release.
        match self.state.view.read(fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(ReadError::Stale) => reply.error(Errno::ESTALE),
            Err(ReadError::BadHandle) => reply.error(Errno::EBADF),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The backing first: once the view counts the handle closed, its memfd is settled.
        self.read.backings.release(fh.0, &self.state.view);
        self.state.view.close(fh.0);
        reply.ok();
    }

    /// Nothing to flush (read-only, no locks). ENOSYS makes the kernel stop sending FLUSH
    /// (where `FOPEN_NOFLUSH` is not already honoured): one round trip less per `close`.
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

    /// No ioctl applies to these files: ENOTTY, what the kernel answers for a regular file
    /// (e.g. to `isatty`). Answered here so fuser does not log each one as "Not Implemented".
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// Only `SEEK_DATA`/`SEEK_HOLE` reach us: ENOSYS makes the kernel answer them itself from
    /// the file size (no holes here) and stop asking, without fuser's warning.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            ROOT | PREVIOUS_DIR => reply.opened(FileHandle(0), FopenFlags::empty()),
            _ if self.inodes.node(ino.0).is_some() => reply.error(Errno::ENOTDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let which = match ino.0 {
            ROOT => Which::Current,
            PREVIOUS_DIR => Which::Previous,
            _ => return reply.error(Errno::ENOTDIR),
        };
        // Entry `i` (in this order) carries offset `i + 1`; a call resumes after `offset`.
        // Only the entries that fit in this reply are produced: listing a directory of N
        // secrets costs O(N) in all, not O(N) per reply.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut fixed = vec![
            (ino.0, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        let delivery = self.state.delivery();
        if which == Which::Current {
            fixed.push((PREVIOUS_DIR, FileType::Directory, PREVIOUS_DIR_NAME));
            fixed.push((DOTENV, FileType::RegularFile, DOTENV_NAME));
            fixed.push((DOTENV_SH, FileType::RegularFile, DOTENV_SH_NAME));
            // Templates (a handful) after the fixed entries, before the secrets.
            for t in delivery.templates.names() {
                if let Some(ino) = self.inodes.intern(t, which, 0) {
                    fixed.push((ino, FileType::RegularFile, t));
                }
            }
        }
        for (i, (fino, kind, name)) in fixed.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*fino), i as u64 + 1, *kind, name) {
                return reply.ok();
            }
        }
        // The reply is an in-memory buffer: filling it under the read lock is brief.
        let first = fixed.len();
        let mut next = skip.max(first);
        self.state
            .view
            .each_name(which, skip.saturating_sub(first), |name, version| {
                let Some(ino) = self.inodes.intern(name, which, version) else {
                    return true;
                };
                next += 1;
                reply.add(INodeNo(ino), next as u64, FileType::RegularFile, name)
            });
        reply.ok();
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let node = match self.inodes.node(ino.0) {
            Some(n) => n,
            None => return reply.error(Errno::ENOENT),
        };
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        let result = match node {
            Node::Root | Node::PreviousDir => Ok(()),
            Node::DotEnv(_) if mask.contains(AccessFlags::X_OK) => Err(Errno::EACCES),
            Node::DotEnv(_) => Ok(()),
            Node::Template(name) => self
                .state
                .gate()
                .check_template(&self.caller(req), AccessVia::Fuse, &name)
                .map_err(errno)
                .and_then(|()| {
                    if mask.contains(AccessFlags::X_OK) {
                        Err(Errno::EACCES)
                    } else {
                        Ok(())
                    }
                }),
            Node::Secret(name, which) => {
                let caller = self.caller(req);
                match self.state.gate().stat(&Self::ask(&caller, &name, which)) {
                    Err(r) => Err(errno(r)),
                    Ok(_) if mask.contains(AccessFlags::X_OK) => Err(Errno::EACCES),
                    Ok(_) => Ok(()),
                }
            }
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// No extended attributes exist (answered here so the kernel does not log a missing
    /// operation and tools like `ls -l` get a plain "none").
    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        match self.inodes.node(ino.0) {
            Some(_) => reply.error(Errno::NO_XATTR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.inodes.node(ino.0) {
            None => reply.error(Errno::ENOENT),
            Some(_) if size == 0 => reply.size(0),
            Some(_) => reply.data(&[]),
        }
    }

    // ---- every write-type operation: read-only filesystem ------------------------------------

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
