//! Every mount a benchmark makes is detached and every child it started is stopped, whether the
//! benchmark ends normally (guards' `Drop`), panics (panic hook) or is interrupted (SIGINT /
//! SIGTERM / SIGHUP, handled on a thread of their own).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fyvault::agent::mount::Mounted;
use fyvault::agent::state::AgentState;
use nix::mount::MntFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Call first thing in `main`, before any thread is started: signals are then taken by one
/// thread (every later thread inherits the blocked mask; children are given a clean mask by
/// [`clean_signal_mask`]), and a panic anywhere cleans up too.
pub fn install_cleanup() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().expect("block signals");
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("\n{sig:?}: cleaning up mounts and child processes");
                cleanup_all();
                std::process::exit(130);
            }
        })
        .expect("signal thread");
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        cleanup_all();
    }));
}

/// Children must not inherit the blocked signals of [`install_cleanup`] (they would ignore
/// SIGTERM): unblock them between fork and exec.
pub fn clean_signal_mask(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // pthread_sigmask, which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| SigSet::all().thread_unblock().map_err(std::io::Error::from));
    }
}

/// Stops every registered child (SIGTERM, then SIGKILL after 10 s) and detaches every
/// registered mount.
pub fn cleanup_all() {
    let children: Vec<u32> = std::mem::take(&mut *lock(&CHILDREN));
    for pid in &children {
        stop_pid(*pid, Duration::from_secs(10));
    }
    let mounts: Vec<PathBuf> = std::mem::take(&mut *lock(&MOUNTS));
    for m in mounts {
        detach(&m);
    }
}

/// SIGTERM `pid` (a child we started), wait for it up to `limit`, then SIGKILL. Reaps it.
pub fn stop_pid(pid: u32, limit: Duration) -> Option<WaitStatus> {
    let p = Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(s) => return Some(s),
            Err(_) => return None, // not our child any more (already reaped)
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            return waitpid(p, None).ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn register_child(pid: u32) {
    lock(&CHILDREN).push(pid);
}

pub fn unregister_child(pid: u32) {
    lock(&CHILDREN).retain(|p| *p != pid);
}

pub fn register_mount(path: &Path) {
    lock(&MOUNTS).push(path.to_owned());
}

pub fn unregister_mount(path: &Path) {
    lock(&MOUNTS).retain(|p| p != path);
}

/// Is `path` a mount point in `/proc/self/mounts`?
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// Lazily detaches `path` while it is a mount point.
pub fn detach(path: &Path) {
    if is_mounted(path) {
        let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
    }
}

/// A mount made by a child process: detached on drop if the child left it behind.
#[derive(Debug)]
pub struct ForeignMount(PathBuf);

impl ForeignMount {
    pub fn new(path: &Path) -> Self {
        register_mount(path);
        ForeignMount(path.to_owned())
    }
}

impl Drop for ForeignMount {
    fn drop(&mut self) {
        detach(&self.0);
        unregister_mount(&self.0);
    }
}

/// An in-process mount of an `AgentState`, detached when dropped (also on panic).
#[derive(Debug)]
pub struct MountGuard {
    mounted: Option<Mounted>,
    path: PathBuf,
}

impl MountGuard {
    pub fn start(path: &Path, state: Arc<AgentState>) -> MountGuard {
        Self::start_with_threads(path, state, fyvault::agent::mount::FUSE_THREADS)
    }

    pub fn start_with_threads(path: &Path, state: Arc<AgentState>, threads: usize) -> MountGuard {
        register_mount(path);
        let mounted = Mounted::start_with_threads(path, state, threads)
            .expect("mount (needs root and /dev/fuse)");
        MountGuard {
            mounted: Some(mounted),
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take()
            && let Err(e) = m.shutdown_timeout(Duration::from_secs(10))
        {
            eprintln!("unmount {}: {e}", self.path.display());
        }
        detach(&self.path);
        unregister_mount(&self.path);
    }
}

/// Fails loudly (rather than skipping) when the machine cannot mount FUSE: these benchmarks
/// measure the real mount.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root(),
        "the benchmarks mount FUSE for real: run them as root on a machine with /dev/fuse"
    );
}
