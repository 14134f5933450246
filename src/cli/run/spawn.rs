//! Starting CMD: resolving it on `PATH`, `execve` in place (the default mode), or `fork` +
//! `execve` for a supervised child. Both hand the environment over straight from the zeroizing
//! [`EnvBlock`]; `std::process::Command` would keep its own unzeroized copies of every value.
//!
//! A child starts with an empty signal mask, `SIGPIPE` at its default (Rust ignores it, and an
//! ignored signal stays ignored across `execve`), and `PR_SET_PDEATHSIG` = `SIGTERM`, so it is
//! told to stop if `fyvault run` dies without forwarding anything (even by `SIGKILL`).

use std::ffi::{CStr, CString, OsString};
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{AccessFlags, Pid, access};
use tokio::sync::oneshot;

use super::EnvBlock;

/// CMD cannot be run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: {1}")]
    Cannot(String, Errno),
    #[error("cannot start a child process: {0}")]
    Fork(Errno),
}

impl StartError {
    /// The shell's conventions: 127 not found, 126 found but not runnable.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            StartError::NotFound(_) | StartError::Cannot(_, Errno::ENOENT) => 127,
            StartError::Cannot(..) => 126,
            StartError::Fork(_) => 1,
        }
    }
}

/// The program's path and its argv (never a value in there).
pub(crate) struct Program {
    path: CString,
    argv: Vec<CString>,
}

impl Program {
    /// `command[0]` as given when it holds a `/`, else the first executable file of that name
    /// on `PATH` (this process's `PATH`, as a shell would).
    pub(crate) fn resolve(command: &[OsString]) -> Result<Program, StartError> {
        let first = command
            .first()
            .ok_or_else(|| StartError::NotFound(String::new()))?;
        let shown = first.to_string_lossy().into_owned();
        let c = |s: &OsString| {
            CString::new(s.clone().into_vec())
                .map_err(|_| StartError::Cannot(shown.clone(), Errno::EINVAL))
        };
        let argv = command.iter().map(c).collect::<Result<Vec<_>, _>>()?;
        let path: PathBuf = if first.as_bytes().contains(&b'/') {
            PathBuf::from(first)
        } else {
            let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            std::env::split_paths(&path_var)
                .map(|dir| dir.join(first))
                .find(|p| is_executable_file(p))
                .ok_or_else(|| StartError::NotFound(shown.clone()))?
        };
        let path = CString::new(path.into_os_string().into_vec())
            .map_err(|_| StartError::Cannot(shown, Errno::EINVAL))?;
        Ok(Program { path, argv })
    }

    fn name(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }
}

fn is_executable_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file()) && access(p, AccessFlags::X_OK).is_ok()
}

/// Sets `SIGPIPE` back to its default before an `execve`.
fn default_sigpipe() {
    // SAFETY: installing SIG_DFL runs no handler code; this only undoes Rust's SIG_IGN.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
}

/// Replaces this process with the program. Returns only on failure.
pub(crate) fn exec(program: &Program, env: &EnvBlock) -> StartError {
    default_sigpipe();
    let entries = env.entries();
    match nix::unistd::execve(&program.path, &program.argv, &entries) {
        Err(e) => StartError::Cannot(program.name(), e),
        Ok(never) => match never {},
    }
}

/// A started child. It is reaped only by [`Child::reap`], so until then its pid cannot be
/// reused and signalling it is safe.
pub(crate) struct Child {
    pid: Pid,
    exited: Option<oneshot::Receiver<()>>,
}

impl Child {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `sig`. Harmless once the child has exited (it is a zombie until reaped).
    pub(crate) fn signal(&self, sig: Signal) {
        let _ = kill(self.pid, sig);
    }

    /// Resolves once the child has exited (it stays a zombie until [`Child::reap`]).
    pub(crate) async fn exited(&mut self) {
        if let Some(rx) = self.exited.as_mut() {
            let _ = rx.await;
            self.exited = None;
        }
    }

    /// Waits for the exit and collects the status.
    pub(crate) async fn reap(mut self) -> WaitStatus {
        self.exited().await;
        loop {
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                Ok(status) => return status,
                // Only if someone else reaped it: report a plain failure.
                Err(_) => return WaitStatus::Exited(self.pid, 1),
            }
        }
    }
}

/// Pointers for `execve`, prepared before the fork: the child may not allocate.
struct ExecArgs<'a> {
    path: &'a CStr,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl<'a> ExecArgs<'a> {
    fn new(program: &'a Program, entries: &[&'a CStr]) -> Self {
        let nul_terminated = |v: Vec<*const libc::c_char>| {
            let mut v = v;
            v.push(std::ptr::null());
            v
        };
        ExecArgs {
            path: &program.path,
            argv: nul_terminated(program.argv.iter().map(|a| a.as_ptr()).collect()),
            envp: nul_terminated(entries.iter().map(|e| e.as_ptr()).collect()),
        }
    }
}

/// Starts the program as a child with `env` as its whole environment.
pub(crate) fn spawn(program: &Program, env: &EnvBlock) -> Result<Child, StartError> {
    let entries = env.entries();
    let args = ExecArgs::new(program, &entries);
    // Reports a failed execve (its errno) to the parent; closed by a successful one.
    let (report_rx, report_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(StartError::Fork)?;
    let parent = nix::unistd::getpid();
    // SAFETY: fork() in a multi-threaded process. The child runs only `after_fork`, which makes
    // async-signal-safe calls on memory prepared before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(StartError::Fork(Errno::last()));
    }
    if pid == 0 {
        // SAFETY: see above; never returns.
        unsafe { after_fork(&args, parent.as_raw(), report_tx.as_raw_fd()) }
    }
    drop(report_tx);
    let pid = Pid::from_raw(pid);
    let mut report = [0u8; 4];
    let failed = read_report(report_rx, &mut report);
    if failed {
        let _ = waitpid(pid, None);
        return Err(StartError::Cannot(
            program.name(),
            Errno::from_raw(i32::from_ne_bytes(report)),
        ));
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("fyvault-run-wait".into())
        .spawn(move || {
            // WNOWAIT: the child stays a zombie until `reap`, so its pid is not reused while
            // the supervisor may still signal it.
            while let Err(Errno::EINTR) =
                waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            {}
            let _ = tx.send(());
        })
        .map_err(|e| StartError::Fork(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    Ok(Child {
        pid,
        exited: Some(rx),
    })
}

/// True when the child wrote an errno (its execve failed); false when the pipe closed empty.
fn read_report(rx: OwnedFd, out: &mut [u8; 4]) -> bool {
    let mut file = std::fs::File::from(rx);
    let mut got = 0;
    while got < 4 {
        match file.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    got == 4
}

/// The child's side of the fork: reset the signal state, ask for SIGTERM when the parent
/// dies, exec. On failure, write errno to `report` and `_exit(127)`.
///
/// # Safety
/// Only between `fork` and `execve`/`_exit` in the child; every call here is
/// async-signal-safe and nothing allocates.
unsafe fn after_fork(args: &ExecArgs<'_>, parent: libc::pid_t, report: libc::c_int) -> ! {
    // SAFETY: plain system calls on valid pointers (see the function's contract).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
        // The parent died before the prctl: stop now.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        libc::execve(args.path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127);
    }
}
