//! How many connections the vault admits, and for how long it waits on them
//! (docs/vault.md § "Connections, timeouts and limits").
//!
//! Every client connection costs one file descriptor, so the caps follow the process's
//! open-file limit, which `fyvault server` first raises from its soft value to its hard value
//! ([`raise_nofile`]). Long-polls (agents) have a cap of their own below the connection cap:
//! the difference is kept for providers, admins and health checks, so a fleet of agents can
//! never lock them out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// File descriptors kept back from the connection cap for everything else the vault opens
/// (the database and its WAL, the PostgreSQL pool, the listener, epoll, logs): at most this
/// many, at least a quarter of a small limit.
const FD_HEADROOM: u64 = 256;
/// Connections kept free of long-polls for provider, admin and health requests: a tenth of
/// the connection cap, between these bounds.
const RESERVED_MIN: usize = 16;
const RESERVED_MAX: usize = 1024;

/// The connection and timing limits of one vault server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections; past it a new connection gets a `503` and is closed.
    pub max_connections: usize,
    /// Long-polls parked at once; past it a sync that would wait gets a `503`
    /// (`too_many_long_polls`, `Retry-After`) and its connection is closed.
    pub max_long_polls: usize,
    /// A request's head must arrive in full within this time of the connection becoming ready
    /// for it (just accepted, or the previous answer sent): slow-header clients are cut, and an
    /// idle HTTP/1.1 keep-alive connection is closed after it.
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1.1 or HTTP/2) with no request in flight for this long is closed.
    /// A parked long-poll is a request in flight: it is never idle.
    pub idle_timeout: Duration,
    /// The listen queue of connections the kernel completed but the vault has not accepted
    /// yet (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// The longest `Retry-After` of a long-poll refused over the cap: each refusal names a
    /// figure drawn uniformly from a sixth of it (at least 1 s) up to it, so the refused part
    /// of a fleet comes back spread out.
    pub long_poll_retry_after: Duration,
}

/// Default [`Limits::long_poll_retry_after`]: refusals ask for 5–30 s.
pub const DEFAULT_LONG_POLL_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Default listen backlog: a fleet reconnecting after a restart arrives in a burst.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Limits {
    /// The default caps for a process allowed `nofile` open files.
    pub fn for_fd_limit(nofile: u64) -> Limits {
        let headroom = FD_HEADROOM.min(nofile / 4);
        let max_connections = usize::try_from(nofile - headroom).unwrap_or(usize::MAX);
        Limits {
            max_connections: 0,
            max_long_polls: 0,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            long_poll_retry_after: DEFAULT_LONG_POLL_RETRY_AFTER,
        }
        .with_max_connections(max_connections)
    }

    /// The `Retry-After` (whole seconds) of one long-poll refused over the cap.
    pub fn draw_retry_after(&self) -> u64 {
        let max = self.long_poll_retry_after.as_secs().max(1);
        rand::random_range((max / 6).max(1)..=max)
    }

    /// Sets the connection cap (at least 2) and the long-poll cap below it: a tenth of the
    /// connections, at least 16 (at most half) and at most 1024, stays free of long-polls.
    pub fn with_max_connections(mut self, max_connections: usize) -> Limits {
        let max_connections = max_connections.max(2);
        let reserved =
            (max_connections / 10).clamp(RESERVED_MIN.min(max_connections / 2), RESERVED_MAX);
        self.max_connections = max_connections;
        self.max_long_polls = max_connections - reserved;
        self
    }
}

impl Default for Limits {
    /// Caps derived from the process's current soft open-file limit.
    fn default() -> Self {
        Limits::for_fd_limit(soft_nofile())
    }
}

/// Requests served by the poll lane, and connections it handed to hyper.
#[derive(Debug, Default)]
pub struct LaneStats {
    served: std::sync::atomic::AtomicU64,
    handed_over: std::sync::atomic::AtomicU64,
}

impl LaneStats {
    pub(crate) fn served(&self) {
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn handed_over(&self) {
        self.handed_over
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (sync requests the lane served, connections it handed to hyper).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.served.load(Relaxed), self.handed_over.load(Relaxed))
    }
}

/// The caps in force: one permit per open connection, one per parked long-poll.
#[derive(Debug)]
pub struct Admission {
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    pub long_polls: Arc<Semaphore>,
    /// What the poll lane ([`crate::vault::lane`]) did.
    pub lane: LaneStats,
    /// The most connections open at once since [`Admission::take_peak`] last read it (a fleet
    /// that comes and goes between two looks of the heap trim is still seen).
    peak: std::sync::atomic::AtomicUsize,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Admission {
            connections: permits(limits.max_connections),
            long_polls: permits(limits.max_long_polls),
            lane: LaneStats::default(),
            limits,
            peak: Default::default(),
        }
    }

    /// Records the connections open now (called as each one is admitted).
    pub fn note_open(&self) {
        self.peak.fetch_max(
            self.open_connections(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The peak since the last call, then restarts it from the connections open now.
    pub fn take_peak(&self) -> usize {
        let now = self.open_connections();
        self.peak
            .swap(now, std::sync::atomic::Ordering::Relaxed)
            .max(now)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits
            .max_connections
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.connections.available_permits())
    }

    /// Long-polls parked now.
    pub fn parked_long_polls(&self) -> usize {
        self.limits
            .max_long_polls
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.long_polls.available_permits())
    }
}

/// The process's soft open-file limit (1024 if it cannot be read).
pub fn soft_nofile() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileRaise {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (or, when the hard limit is unlimited,
/// to the kernel's `fs.nr_open`). Returns the limits before and after.
pub fn raise_nofile() -> Result<NofileRaise, nix::Error> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == nix::libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if target > before {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileRaise { before, soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_fd_limit_and_keep_room_for_providers() {
        let small = Limits::for_fd_limit(1024);
        assert_eq!(small.max_connections, 1024 - 256);
        assert_eq!(small.max_long_polls, 768 - 76);
        let big = Limits::for_fd_limit(1 << 20);
        assert_eq!(big.max_connections, (1 << 20) - 256);
        assert_eq!(big.max_connections - big.max_long_polls, RESERVED_MAX);
        for n in [0, 1, 8, 64, 100, 1000, 20_000] {
            let l = Limits::for_fd_limit(n);
            assert!(l.max_long_polls < l.max_connections, "{n}: {l:?}");
            assert!(l.max_connections as u64 <= n.max(2), "{n}: {l:?}");
        }
    }

    #[test]
    fn refusals_ask_for_a_spread_delay() {
        let l = Limits::for_fd_limit(1024);
        let drawn: Vec<u64> = (0..500).map(|_| l.draw_retry_after()).collect();
        assert!(drawn.iter().all(|s| (5..=30).contains(s)), "{drawn:?}");
        assert!(
            drawn.contains(&5) && drawn.contains(&30),
            "the whole range is used"
        );
        let short = Limits {
            long_poll_retry_after: Duration::from_secs(2),
            ..l.clone()
        };
        assert!((0..100).all(|_| (1..=2).contains(&short.draw_retry_after())));
        let zero = Limits {
            long_poll_retry_after: Duration::ZERO,
            ..l
        };
        assert_eq!(zero.draw_retry_after(), 1);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = soft_nofile();
        let r = raise_nofile().unwrap();
        assert_eq!(r.soft, soft_nofile());
        assert!(r.soft >= before && r.soft <= r.hard.max(r.soft));
    }
}
