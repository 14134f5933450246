//! Process memory hygiene (DESIGN §4.6): not dumpable, memory locked.
//!
//! - `prctl(PR_SET_DUMPABLE, 0)`: no core dumps, and processes of the same uid cannot ptrace
//!   the agent or read its `/proc/PID/mem`.
//! - `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: every page is locked as it is faulted
//!   in, including later allocations and transient copies, so secret bytes never reach swap;
//!   `MCL_ONFAULT` avoids pre-faulting (and so pinning) every reserved thread stack. Without
//!   `CAP_IPC_LOCK` the call fails when the address space exceeds `RLIMIT_MEMLOCK`: then the
//!   agent runs unlocked, warns, and says so in `/v1/health` and `fyvault status`.
//! - The allocator gives every block of [`crate::alloc::MMAP_THRESHOLD`] bytes or more its own mapping
//!   (glibc `mallopt(M_MMAP_THRESHOLD)`), unmapped when freed. Locked memory cannot be handed
//!   back with `madvise` (the kernel refuses it on locked pages), so under `mlockall` what the
//!   heap once held stays resident; glibc's default threshold also rises each time a large
//!   block is freed, after which the first sync's large buffers (the answer's bytes, its lists)
//!   land in the heap and stay. Agent RSS at ready with 10,000 secrets: 32.3 → 27.1 MB
//!   (docs/performance.md).

use serde::{Deserialize, Serialize};

/// Whether the agent's memory is locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum MlockStatus {
    /// `mlockall` succeeded.
    Locked,
    /// `mlockall` failed (typically `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`).
    Failed { reason: String },
    /// Not attempted (in-process tests, or turned off).
    Off,
}

/// What [`apply`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dumpable_off: bool,
    pub mlock: MlockStatus,
}

/// Makes the process non-dumpable and locks its memory; failures are logged and reported,
/// never fatal.
pub fn apply() -> Report {
    crate::alloc::fix_mmap_threshold();
    let dumpable_off = match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("could not turn off PR_SET_DUMPABLE: {e}");
            false
        }
    };
    let mlock = match lock_all() {
        Ok(()) => MlockStatus::Locked,
        Err(e) => {
            let reason = match e {
                nix::errno::Errno::ENOMEM | nix::errno::Errno::EPERM => format!(
                    "{e} (RLIMIT_MEMLOCK is {}; give the agent CAP_IPC_LOCK or raise \
                     LimitMEMLOCK)",
                    memlock_limit()
                ),
                other => other.to_string(),
            };
            tracing::warn!("memory is not locked: mlockall failed: {reason}");
            MlockStatus::Failed { reason }
        }
    };
    Report {
        dumpable_off,
        mlock,
    }
}

fn lock_all() -> Result<(), nix::errno::Errno> {
    // SAFETY: mlockall takes flags only and touches no memory we own.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// The soft `RLIMIT_MEMLOCK`, as `/proc/self/limits` shows it.
fn memlock_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max locked memory"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .map(|soft| match soft.parse::<u64>() {
            Ok(bytes) => format!("{} KiB", bytes / 1024),
            Err(_) => soft,
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `Some(true)` when the process is dumpable (for tests and `status`).
pub fn is_dumpable() -> Option<bool> {
    nix::sys::prctl::get_dumpable().ok()
}
