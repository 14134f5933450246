//! Shared helpers for the real-mount FUSE tests: skipping (or failing, with
//! `FYVAULT_REQUIRE_FUSE=1`) when `/dev/fuse` is missing, a mount guard that always unmounts,
//! and a populated `AgentState`.
#![allow(dead_code)] // each test file uses a different part

// A test file that uses two of the helper modules loads this twice (harmless: no state).
#[allow(clippy::duplicate_mod)]
#[path = "../skip/mod.rs"]
pub mod skip;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use fyvault::agent::access::Policy;
use fyvault::agent::audit::Auditor;
use fyvault::agent::fs::{ReadPath, ReadPathChoice};
use fyvault::agent::mount::Mounted;
use fyvault::agent::state::AgentState;
use fyvault::agent::view::{Update, UpdateState};
use fyvault::secret::Secret;

/// True when FUSE tests can run. Without `/dev/fuse` they skip (printing why), unless
/// `FYVAULT_REQUIRE_FUSE=1`, which turns the skip into a failure.
pub fn fuse_available(test: &str) -> bool {
    let present = Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root();
    if !present {
        if std::env::var("FYVAULT_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("{test}: FYVAULT_REQUIRE_FUSE=1 but /dev/fuse is missing or we are not root");
        }
        skip::skip(test, "/dev/fuse missing or not root");
    }
    present
}

/// Waits for `cond` with a deadline; panics with `what` when it never holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An update making `name` version `version` current, optionally with a previous version in
/// grace for `grace`.
pub fn active(
    name: &str,
    version: u64,
    value: &[u8],
    previous: Option<(u64, &[u8], Duration)>,
) -> Update {
    Update {
        name: name.into(),
        version,
        state: UpdateState::Active {
            value: Secret::copy_from(value),
            previous: previous.map(|(v, val, g)| (v, Secret::copy_from(val), g)),
        },
        updated_at: SystemTime::now(),
    }
}

pub fn revoked(name: &str, version: u64) -> Update {
    Update {
        name: name.into(),
        version,
        state: UpdateState::Revoked,
        updated_at: SystemTime::now(),
    }
}

/// A real mount in a fresh temp dir (traversable by every uid) over a fresh `AgentState`,
/// with the grace-expiry task running. Dropping it detaches the mount, even when the test
/// panicked.
pub struct TestMount {
    pub state: Arc<AgentState>,
    pub path: PathBuf,
    mounted: Option<Mounted>,
    revision: AtomicU64,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl TestMount {
    pub fn new(policy: Policy) -> TestMount {
        Self::with(policy, |path, state| Mounted::start(path, state))
    }

    /// A mount on the read path `read` (`fuse_read_path`), or None (printing why) when this
    /// kernel cannot mount it (passthrough before Linux 6.9).
    pub fn with_read_path(policy: Policy, read: ReadPathChoice) -> Option<TestMount> {
        let mut failed = None;
        let m = Self::try_with(policy, |path, state| {
            Mounted::start_with_read_path(path, state, read)
                .inspect_err(|e| failed = Some(e.to_string()))
                .ok()
        });
        if let Some(e) = failed {
            eprintln!("no {read:?} mount on this kernel: {e}");
        }
        m
    }

    /// The read path this mount uses.
    pub fn read_path(&self) -> ReadPath {
        self.mounted.as_ref().expect("mounted").read_path()
    }

    /// How many passthrough memfds the mount holds now.
    pub fn memfds(&self) -> usize {
        self.mounted.as_ref().expect("mounted").memfds()
    }

    /// A mount without the kernel's read-only flag: write-type operations reach the
    /// filesystem, which must refuse them by itself.
    pub fn kernel_writable(policy: Policy) -> TestMount {
        Self::with(policy, |path, state| {
            Mounted::start_kernel_writable_for_tests(path, state)
        })
    }

    fn with(
        policy: Policy,
        mount: impl FnOnce(&Path, Arc<AgentState>) -> Result<Mounted, fyvault::agent::mount::MountError>,
    ) -> TestMount {
        Self::try_with(policy, |p, s| Some(mount(p, s).expect("mount"))).expect("mount")
    }

    fn try_with(
        policy: Policy,
        mount: impl FnOnce(&Path, Arc<AgentState>) -> Option<Mounted>,
    ) -> Option<TestMount> {
        capture_logs();
        let dir = tempfile::Builder::new()
            .prefix("fyvault-fuse-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let path = dir.path().join("mnt");
        let state = AgentState::new(policy, Auditor::disabled());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(state.clone().run_expiry());
        let Some(mounted) = mount(&path, state.clone()) else {
            rt.shutdown_background();
            return None;
        };
        Some(TestMount {
            state,
            path,
            mounted: Some(mounted),
            revision: AtomicU64::new(0),
            rt: Some(rt),
            _dir: dir,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn previous(&self, name: &str) -> PathBuf {
        self.path.join(".previous").join(name)
    }

    pub fn apply(&self, updates: Vec<Update>) {
        let rev = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.view.apply(rev, false, updates);
    }

    pub fn put(&self, name: &str, version: u64, value: &[u8]) {
        self.apply(vec![active(name, version, value, None)]);
    }

    /// Detaches now and waits for the session to end (every file must be closed).
    pub fn shutdown(&mut self) -> Result<(), fyvault::agent::mount::MountError> {
        match self.mounted.take() {
            Some(m) => m.shutdown_timeout(Duration::from_secs(20)),
            None => Ok(()),
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        drop(self.mounted.take()); // lazy detach
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `args` as uid/gid 65534 with no supplementary groups (through `setpriv`).
pub fn as_nobody(args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .expect("setpriv")
}

/// The errno of an I/O result (panics on success).
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// Is `path` listed as a mount point in `/proc/self/mounts`?
/// Detaches the mount at its path if a test fails with the agent still up.
pub struct MountGuard(pub std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

// ---- log capture: the agent's tracing output, so tests can see denial log lines ----------

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("fyvault=debug,fuser=warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    });
}

/// Everything the agent logged so far in this test process.
pub fn logs() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}
