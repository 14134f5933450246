//! Who is on the other end of a socket connection, decided once at accept time.
//!
//! The kernel's credentials of the connecting process (`SO_PEERCRED`: uid, gid, pid, captured
//! at `connect()`) are the identity; `/proc/PID` adds supplementary groups, the executable and
//! the systemd unit. A pid alone can be recycled: the connecting process may exit and another
//! take its pid before we read `/proc`. So we hold a pidfd for the peer while reading `/proc`:
//!
//! 1. `SO_PEERPIDFD` (Linux ≥ 6.5) gives a pidfd for exactly the process that connected,
//!    atomically with the connection; else `pidfd_open(pid)` (Linux ≥ 5.3), which refers to
//!    the process holding that pid when we ask (a recycled pid in the window between connect
//!    and accept would not be caught: the rest still holds).
//! 2. After reading `/proc/PID`, the pidfd is polled: readable means the process has exited,
//!    and what `/proc/PID` showed may belong to someone else. Then only the kernel-given uid and
//!    gid are kept, and the `/proc` facts (groups, exe, unit) are dropped, which can only make
//!    rules match less.
//!
//! Without pidfd support (old kernels) `/proc` is read as is. If the credentials cannot be read
//! at all, the caller is `nobody` with no `/proc` facts, so default-deny applies.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{UnixListener, UnixStream};

use crate::agent::access::Caller;

/// The caller of one connection, resolved at accept time.
#[derive(Debug, Clone)]
pub struct Peer {
    pub caller: Arc<Caller>,
    /// How the pid was pinned while `/proc` was read.
    pub pinned: Pinning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// A pidfd from `SO_PEERPIDFD`.
    PeerPidfd,
    /// A pidfd from `pidfd_open`.
    PidfdOpen,
    /// No pidfd support: `/proc` read without a pin.
    None,
    /// The process exited before it could be pinned or while `/proc` was read: only uid/gid.
    Exited,
    /// No credentials: treated as `nobody`.
    Unknown,
}

const NOBODY: u32 = 65534;

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer::of(stream.io())
    }
}

impl Peer {
    /// Resolves the process on the other end of `stream`.
    pub fn of(stream: &UnixStream) -> Peer {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot read the peer credentials of a connection: {e}");
                return Peer::unknown();
            }
        };
        let (uid, gid) = (cred.uid(), cred.gid());
        let Some(pid) = cred
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            // Peer in another pid namespace: uid/gid only.
            return Peer::bare(uid, gid, 0, Pinning::Exited);
        };
        let (pidfd, how) = match peer_pidfd(stream.as_fd()) {
            Some(fd) => (Some(fd), Pinning::PeerPidfd),
            None => match pidfd_open(pid) {
                Ok(fd) => (Some(fd), Pinning::PidfdOpen),
                Err(nix::errno::Errno::ESRCH) => return Peer::bare(uid, gid, pid, Pinning::Exited),
                Err(_) => (None, Pinning::None),
            },
        };
        let caller = Caller::from_proc(uid, gid, pid);
        if let Some(fd) = &pidfd
            && exited(fd.as_fd())
        {
            return Peer::bare(uid, gid, pid, Pinning::Exited);
        }
        tracing::trace!(uid, gid, pid, pinned = ?how, "socket connection");
        Peer {
            caller: Arc::new(caller),
            pinned: how,
        }
    }

    fn bare(uid: u32, gid: u32, pid: u32, pinned: Pinning) -> Peer {
        Peer {
            caller: Arc::new(Caller {
                uid,
                gid,
                pid,
                groups: vec![],
                exe: None,
                unit: None,
            }),
            pinned,
        }
    }

    fn unknown() -> Peer {
        Peer::bare(NOBODY, NOBODY, 0, Pinning::Unknown)
    }
}

/// `SO_PEERPIDFD`: a pidfd of the process that connected (Linux ≥ 6.5; the constant is
/// `libc`'s, right for every architecture).
fn peer_pidfd(sock: BorrowedFd<'_>) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a c_int we own; the socket fd
    // is borrowed and stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    } else {
        None
    }
}

/// `pidfd_open(pid, 0)` (Linux ≥ 5.3).
fn pidfd_open(pid: u32) -> Result<OwnedFd, nix::errno::Errno> {
    // SAFETY: a plain system call with integer arguments; on success it returns a new fd.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if rc >= 0 {
        // SAFETY: the fd was just created for us and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// A pidfd polls readable once its process has exited.
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc != 0 && p.revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_this_process_and_pins_it() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a);
        assert_eq!(peer.caller.pid, std::process::id());
        assert_eq!(peer.caller.uid, nix::unistd::geteuid().as_raw());
        assert!(peer.caller.exe.is_some());
        assert!(
            matches!(
                peer.pinned,
                Pinning::PeerPidfd | Pinning::PidfdOpen | Pinning::None
            ),
            "{:?}",
            peer.pinned
        );
    }

    #[test]
    fn exited_child_pidfd_polls_readable() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        child.wait().unwrap();
        assert!(exited(fd.as_fd()));
        let me = pidfd_open(std::process::id()).unwrap();
        assert!(!exited(me.as_fd()));
    }
}
