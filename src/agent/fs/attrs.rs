//! File attributes and how long the kernel may cache them.
//!
//! The kernel may cache entries (name → inode) for [`ENTRY_TTL`], because every change to the
//! view drops exactly what it affects before the change is complete: the mount registers a
//! cache invalidator with the state, which runs it synchronously in `SecretView::apply` (and at
//! grace expiry and policy reload) after the view lock is released. A reply computed from the
//! old view that reaches the kernel after the invalidation is discarded by the kernel. A cached
//! entry is no leak: every `stat` through it still asks us ([`FILE_ATTR_TTL`] = 0, as the
//! kernel's attribute cache is shared by all callers), and so does every `open`. So:
//! - secret files', `.env`'s and `.env.sh`'s attributes are never cached: sizes and times
//!   depend on who asks (a `stat` costs one round trip to the agent, ~16 µs);
//! - `.previous/NAME` entries are cached at most until the earliest grace deadline, so the
//!   kernel drops them on time by itself, even before the expiry's invalidation arrives;
//! - inode numbers are stable per name, so even a stale entry is harmless: `open` always asks
//!   the view and answers ENOENT for a name that is gone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request};

use super::SecretFs;
use super::inodes::{self, DOTENV, DOTENV_SH, Node, PREVIOUS_DIR, ROOT};
use crate::agent::access::Caller;
use crate::agent::delivery::Shown;
use crate::agent::dotenv::{self, Form};
use crate::agent::view::{Meta, Which};
use crate::api::AccessVia;

/// How long the kernel may cache a name → inode entry.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);
/// How long the kernel may cache a secret file's attributes: not at all. The kernel's cache is
/// shared by all callers, and size and time are shown only to callers the policy admits.
pub const FILE_ATTR_TTL: Duration = Duration::ZERO;
/// `.env`'s attributes depend on the caller: never cached.
pub const DOTENV_ATTR_TTL: Duration = Duration::ZERO;
/// How long the kernel may cache a directory's attributes (a policy reload invalidates them).
pub const DIR_ATTR_TTL: Duration = Duration::from_secs(60);

const FILE_MODE: u16 = 0o440;
const DIR_MODE: u16 = 0o555;

impl SecretFs {
    /// Attributes with the defaults (0440 root:group for files, 0555 for directories) unless
    /// `shown` (a `[[file]]` or `[[template]]` entry) says otherwise.
    fn attr(
        &self,
        ino: u64,
        kind: FileType,
        size: u64,
        time: SystemTime,
        shown: Shown,
    ) -> FileAttr {
        let dir = kind == FileType::Directory;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: match (dir, shown.mode) {
                (true, _) => DIR_MODE,
                (false, Some(m)) => m,
                (false, None) => FILE_MODE,
            },
            nlink: if dir { 2 } else { 1 },
            uid: shown.owner.unwrap_or(0),
            gid: shown
                .group
                .unwrap_or_else(|| self.state.policy().group_gid()),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn dir_attr(&self, ino: u64) -> FileAttr {
        self.attr(
            ino,
            FileType::Directory,
            0,
            self.mounted_at,
            Shown::default(),
        )
    }

    /// A secret file's attributes (owner, group and mode from the first matching `[[file]]`).
    pub(super) fn meta_attr(&self, ino: u64, name: &str, meta: Meta) -> FileAttr {
        let shown = self.state.delivery().shown_for_secret(name);
        self.attr(
            ino,
            FileType::RegularFile,
            meta.len as u64,
            meta.updated_at,
            shown,
        )
    }

    /// A template as `caller` would read it now (rendered to know its size).
    fn template_attr(&self, caller: &Caller, ino: u64, name: &str) -> Result<FileAttr, Errno> {
        let (len, newest) = self
            .state
            .gate()
            .stat_template(caller, AccessVia::Fuse, name)
            .map_err(super::errno)?;
        let shown = self
            .state
            .delivery()
            .templates
            .get(name)
            .map(|t| t.shown)
            .unwrap_or_default();
        Ok(self.attr(ino, FileType::RegularFile, len as u64, newest, shown))
    }

    /// `.env` as `caller` would read it now: (size, newest update time).
    fn dotenv_attr(&self, caller: &Caller, form: Form) -> FileAttr {
        let (len, newest) = self
            .state
            .gate()
            .with_allowed(caller, AccessVia::Fuse, |entries| {
                let newest = entries.iter().map(|(_, m, _)| m.updated_at).max();
                let len = dotenv::rendered_len(form, entries.iter().map(|(n, _, v)| (*n, *v)));
                (len, newest.unwrap_or(SystemTime::UNIX_EPOCH))
            });
        let ino = match form {
            Form::Dotenv => DOTENV,
            Form::Shell => DOTENV_SH,
        };
        self.attr(
            ino,
            FileType::RegularFile,
            len as u64,
            newest,
            Shown::default(),
        )
    }

    /// Attributes of `ino` as `req`'s caller sees them and how long they may be cached, or
    /// ENOENT.
    pub(super) fn attr_of(&self, req: &Request, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        match self.inodes.node(ino).ok_or(Errno::ENOENT)? {
            Node::Root | Node::PreviousDir => Ok((self.dir_attr(ino), DIR_ATTR_TTL)),
            Node::DotEnv(form) => Ok((self.dotenv_attr(&self.caller(req), form), DOTENV_ATTR_TTL)),
            Node::Secret(name, which) => {
                let caller = self.caller(req);
                let meta = self
                    .state
                    .gate()
                    .stat(&Self::ask(&caller, &name, which))
                    .map_err(super::errno)?;
                Ok((self.meta_attr(ino, &name, meta), FILE_ATTR_TTL))
            }
            Node::Template(name) => Ok((
                self.template_attr(&self.caller(req), ino, &name)?,
                FILE_ATTR_TTL,
            )),
        }
    }

    /// Resolves `name` in directory `parent` to (attributes, attr TTL, entry TTL).
    pub(super) fn resolve(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
    ) -> Result<(FileAttr, Duration, Duration), Errno> {
        let raw = name.as_bytes();
        match (parent, raw) {
            (ROOT, b".previous") => {
                return Ok((self.dir_attr(PREVIOUS_DIR), DIR_ATTR_TTL, ENTRY_TTL));
            }
            (ROOT, b".env" | b".env.sh") => {
                let ino = if raw == b".env" { DOTENV } else { DOTENV_SH };
                return self
                    .attr_of(req, ino)
                    .map(|(attr, ttl)| (attr, ttl, ENTRY_TTL));
            }
            (ROOT | PREVIOUS_DIR, _) => {}
            _ => return Err(Errno::ENOTDIR),
        }
        if parent == ROOT
            && let Some(t) = std::str::from_utf8(raw)
                .ok()
                .filter(|t| self.state.delivery().templates.get(t).is_some())
        {
            let ino = self
                .inodes
                .intern(t, Which::Current, 0)
                .ok_or(Errno::ENOSPC)?;
            let attr = self.template_attr(&self.caller(req), ino, t)?;
            return Ok((attr, FILE_ATTR_TTL, ENTRY_TTL));
        }
        let name = inodes::check_name(raw).map_err(|e| match e {
            inodes::BadName::Invalid => Errno::EINVAL,
            inodes::BadName::TooLong => Errno::ENAMETOOLONG,
            inodes::BadName::NoSuchName => Errno::ENOENT,
        })?;
        let which = if parent == ROOT {
            Which::Current
        } else {
            Which::Previous
        };
        // The gate decides (policy before existence; an absent name is recorded as `missing`).
        // A `.previous` entry is dropped by the kernel by itself when the earliest grace
        // period ends, even before the expiry's invalidation arrives.
        let caller = self.caller(req);
        let (meta, left) = self
            .state
            .gate()
            .lookup(&Self::ask(&caller, name, which))
            .map_err(super::errno)?;
        let ino = self
            .inodes
            .intern(name, which, meta.version)
            .ok_or(Errno::ENOSPC)?;
        Ok((
            self.meta_attr(ino, name, meta),
            FILE_ATTR_TTL,
            left.min(ENTRY_TTL),
        ))
    }
}
