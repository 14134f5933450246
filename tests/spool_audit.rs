//! The whole audit pipeline (record → coalesce → spool → ship) against a fake vault that
//! de-duplicates on `(agent_id, seq)` like the real one.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyvault::agent::access::Caller;
use fyvault::agent::audit::{AuditConfig, Auditor};
use fyvault::agent::ship::Uplink;
use fyvault::api::{AccessAction, AccessEvent, AccessVia, AuditBatch, AuditBatchResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    /// Every other post is recorded but its answer is lost.
    Flaky,
    /// Posts are recorded and never answered.
    AcceptThenHang,
    /// A batch holding an event for this secret is refused as a whole (a 400).
    Refuse(&'static str),
}

#[derive(Debug)]
struct VaultState {
    mode: Mode,
    seen: HashSet<(String, u64)>,
    events: Vec<AccessEvent>,
    posts: u64,
    duplicates: u64,
}

#[derive(Debug, Clone)]
struct FakeVault(Arc<Mutex<VaultState>>);

impl FakeVault {
    fn new(mode: Mode) -> Self {
        FakeVault(Arc::new(Mutex::new(VaultState {
            mode,
            seen: HashSet::new(),
            events: Vec::new(),
            posts: 0,
            duplicates: 0,
        })))
    }
    fn set_mode(&self, mode: Mode) {
        self.0.lock().unwrap().mode = mode;
    }
    fn with<T>(&self, f: impl FnOnce(&VaultState) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
    fn count(&self, action: AccessAction) -> u64 {
        self.with(|s| {
            s.events
                .iter()
                .filter(|e| e.action == action)
                .map(|e| e.count)
                .sum()
        })
    }
    fn posts(&self) -> u64 {
        self.with(|s| s.posts)
    }
}

impl Uplink for FakeVault {
    type Error = String;

    fn is_rejection(err: &String) -> bool {
        err.starts_with("rejected")
    }

    fn post(
        &self,
        batch: &AuditBatch,
    ) -> impl Future<Output = Result<AuditBatchResponse, String>> + Send {
        let state = self.0.clone();
        let batch = batch.clone();
        async move {
            let (mode, resp, odd) = {
                let mut s = state.lock().unwrap();
                s.posts += 1;
                let odd = s.posts % 2 == 1;
                if s.mode == Mode::Down {
                    return Err("vault unreachable: connection refused".into());
                }
                if let Mode::Refuse(bad) = s.mode
                    && batch
                        .events
                        .iter()
                        .any(|e| e.secret.as_deref() == Some(bad))
                {
                    return Err("rejected: 400 invalid_event".into());
                }
                let mut resp = AuditBatchResponse {
                    accepted: 0,
                    duplicates: 0,
                };
                for e in batch.events {
                    if s.seen.insert((batch.agent_id.clone(), e.seq)) {
                        resp.accepted += 1;
                        s.events.push(e);
                    } else {
                        resp.duplicates += 1;
                        s.duplicates += 1;
                    }
                }
                (s.mode, resp, odd)
            };
            match mode {
                Mode::Flaky if odd => Err("vault unreachable: connection reset".into()),
                Mode::AcceptThenHang => std::future::pending().await,
                _ => Ok(resp),
            }
        }
    }
}

fn caller(uid: u32, pid: u32, exe: &str) -> Caller {
    Caller {
        uid,
        gid: uid,
        pid,
        groups: vec![],
        exe: Some(PathBuf::from(exe)),
        unit: Some("app.service".into()),
    }
}

fn config(state: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(state, "agent-1", Some("host-a".into()));
    c.coalesce_window = Duration::from_secs(3600); // drained by explicit flushes only
    c.backoff_initial = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(40);
    c.post_timeout = Duration::from_secs(30);
    c
}

const LONG: Duration = Duration::from_secs(60);

/// `Auditor::flush` with a deadline: a flush that never returns fails the test instead of
/// hanging it.
async fn flush(
    a: &Auditor,
    ship_timeout: Duration,
) -> Result<fyvault::agent::audit::FlushOutcome, fyvault::agent::audit::AuditError> {
    tokio::time::timeout(ship_timeout + LONG, a.flush(ship_timeout))
        .await
        .expect("flush did not return")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_event_keeps_first_pid_and_exact_count() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    let s = |n| Some(n);
    for _ in 0..3 {
        a.record(
            &caller(1000, 100, "/usr/bin/app"),
            AccessAction::Accessed,
            "DB",
            s(2),
            AccessVia::Fuse,
        );
    }
    for _ in 0..2 {
        a.record(
            &caller(1000, 200, "/usr/bin/app"),
            AccessAction::Accessed,
            "DB",
            s(2),
            AccessVia::Fuse,
        );
    }
    // Each of these differs in one key field.
    a.record(
        &caller(1001, 100, "/usr/bin/app"),
        AccessAction::Accessed,
        "DB",
        s(2),
        AccessVia::Fuse,
    );
    a.record(
        &caller(1000, 100, "/usr/bin/other"),
        AccessAction::Accessed,
        "DB",
        s(2),
        AccessVia::Fuse,
    );
    a.record(
        &caller(1000, 100, "/usr/bin/app"),
        AccessAction::Accessed,
        "DB",
        s(3),
        AccessVia::Fuse,
    );
    a.record(
        &caller(1000, 100, "/usr/bin/app"),
        AccessAction::Accessed,
        "DB",
        s(2),
        AccessVia::Socket,
    );
    a.record(
        &caller(1000, 100, "/usr/bin/app"),
        AccessAction::Denied,
        "DB",
        s(2),
        AccessVia::Fuse,
    );
    a.record(
        &caller(1000, 100, "/usr/bin/app"),
        AccessAction::Accessed,
        "API",
        s(2),
        AccessVia::Fuse,
    );
    assert_eq!(a.stats().pending_events, 7);

    let out = flush(&a, LONG).await.unwrap();
    assert!(out.shipped_all);
    assert_eq!(out.backlog_events, 0);
    let events = vault.with(|s| s.events.clone());
    assert_eq!(events.len(), 7);
    let main = events
        .iter()
        .find(|e| {
            e.uid == Some(1000)
                && e.exe.as_deref() == Some("/usr/bin/app")
                && e.version == Some(2)
                && e.via == Some(AccessVia::Fuse)
                && e.action == AccessAction::Accessed
                && e.secret.as_deref() == Some("DB")
        })
        .unwrap();
    assert_eq!(main.count, 5);
    assert_eq!(main.pid, Some(100), "a coalesced event names the first pid");
    assert_eq!(main.unit.as_deref(), Some("app.service"));
    assert_eq!(vault.count(AccessAction::Accessed), 10);
    assert_eq!(vault.count(AccessAction::Denied), 1);
    // Sequence numbers are distinct and increasing in the order written.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let stats = a.stats();
    assert_eq!(stats.shipped_total, 7);
    assert!(stats.last_shipped_at.is_some());
    assert_eq!(stats.backlog_events, 0);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_reads_with_background_coalescing_sum_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let mut cfg = config(tmp.path());
    cfg.coalesce_window = Duration::from_millis(2);
    cfg.batch_max_events = 7;
    let a = Auditor::start(cfg, vault.clone()).unwrap();
    let n = 20_000u32;
    for i in 0..n {
        let via = if i % 3 == 0 {
            AccessVia::Socket
        } else {
            AccessVia::Fuse
        };
        a.record(
            &caller(1000 + i % 4, 50 + i % 9, "/usr/bin/app"),
            AccessAction::Accessed,
            &format!("S{}", i % 5),
            Some(1),
            via,
        );
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    assert_eq!(vault.count(AccessAction::Accessed), u64::from(n));
    let shipped = vault.with(|s| s.events.len());
    assert!(
        shipped < n as usize,
        "coalescing must have merged reads ({shipped} events)"
    );
    assert_eq!(a.stats().dropped_total, 0);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_then_back_counts_10000_once() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Down);
    let mut cfg = config(tmp.path());
    cfg.batch_max_events = 50;
    let a = Auditor::start(cfg, vault.clone()).unwrap();
    for i in 0..10_000u32 {
        a.record(
            &caller(1000, 7, "/usr/bin/app"),
            AccessAction::Accessed,
            &format!("S{}", i % 997),
            Some(1),
            AccessVia::Fuse,
        );
        if i % 1000 == 999 {
            // Push to disk in several batches.
            flush(&a, Duration::ZERO).await.unwrap();
        }
    }
    flush(&a, Duration::ZERO).await.unwrap();
    wait_until("retries while the vault is down", || vault.posts() >= 3).await;
    let stats = a.stats();
    assert!(stats.backlog_events > 0);
    assert!(stats.backlog_bytes > 0);
    assert!(stats.last_error.as_deref().unwrap().contains("unreachable"));
    assert!(stats.failing_since.is_some());
    assert_eq!(vault.count(AccessAction::Accessed), 0);

    // Back, but answers get lost now and then: re-sent batches are de-duplicated.
    vault.set_mode(Mode::Flaky);
    let out = flush(&a, LONG).await.unwrap();
    assert!(out.shipped_all, "{out:?}");
    assert_eq!(vault.count(AccessAction::Accessed), 10_000);
    assert!(
        vault.with(|s| s.duplicates) > 0,
        "some batches must have been re-sent"
    );
    let stats = a.stats();
    assert_eq!(stats.backlog_events, 0);
    assert_eq!(stats.last_error, None);
    assert_eq!(stats.dropped_total, 0);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_a_batch_in_flight_reships_without_double_count() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::AcceptThenHang);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    for i in 0..300u32 {
        a.record(
            &caller(1000, i, "/usr/bin/app"),
            AccessAction::Accessed,
            &format!("S{}", i % 40),
            Some(1),
            AccessVia::Socket,
        );
    }
    flush(&a, Duration::ZERO).await.unwrap();
    // The vault recorded the batch; its answer never comes; the agent dies.
    wait_until("the batch reached the vault", || vault.posts() >= 1).await;
    assert_eq!(vault.count(AccessAction::Accessed), 300);
    a.crash().await;
    drop(a);

    vault.set_mode(Mode::Up);
    let b = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    assert!(
        b.stats().backlog_events > 0,
        "the unacknowledged batch is still spooled"
    );
    assert!(flush(&b, LONG).await.unwrap().shipped_all);
    assert_eq!(vault.count(AccessAction::Accessed), 300);
    assert_eq!(
        vault.with(|s| s.duplicates),
        40,
        "the whole batch was re-sent once"
    );
    b.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loses_only_what_was_not_yet_written() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Down);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    for _ in 0..100 {
        a.record(
            &caller(1000, 1, "/usr/bin/app"),
            AccessAction::Accessed,
            "A",
            Some(1),
            AccessVia::Fuse,
        );
    }
    flush(&a, Duration::ZERO).await.unwrap(); // on disk (fsynced)
    for _ in 0..50 {
        a.record(
            &caller(1000, 1, "/usr/bin/app"),
            AccessAction::Accessed,
            "B",
            Some(1),
            AccessVia::Fuse,
        );
    }
    // Killed within the coalescing window: the 50 "B" reads were only in memory.
    a.crash().await;
    drop(a);

    vault.set_mode(Mode::Up);
    let b = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    assert!(flush(&b, LONG).await.unwrap().shipped_all);
    let events = vault.with(|s| s.events.clone());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].secret.as_deref(), Some("A"));
    assert_eq!(events[0].count, 100);
    b.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_spool_with_vault_down_reports_the_exact_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Down);
    let mut cfg = config(tmp.path());
    cfg.spool_max_bytes = 4096;
    let a = Auditor::start(cfg, vault.clone()).unwrap();
    let mut n = 0u64;
    for round in 0..30u32 {
        for i in 0..10u32 {
            for _ in 0..=i {
                a.record(
                    &caller(1000, round, "/usr/bin/app"),
                    AccessAction::Accessed,
                    &format!("R{round}_{i}"),
                    Some(1),
                    AccessVia::Fuse,
                );
                n += 1;
            }
        }
        flush(&a, Duration::ZERO).await.unwrap();
    }
    let dropped = a.stats().dropped_total;
    assert!(dropped > 0, "a 4 KiB spool must overflow");
    assert!(a.stats().backlog_bytes <= 4096);

    vault.set_mode(Mode::Up);
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    assert_eq!(vault.count(AccessAction::Dropped), dropped);
    assert_eq!(vault.count(AccessAction::Accessed) + dropped, n);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_buffer_overflow_is_reported_as_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let mut cfg = config(tmp.path());
    cfg.max_pending = 10;
    let a = Auditor::start(cfg, vault.clone()).unwrap();
    for i in 0..25 {
        a.record(
            &caller(1000, 1, "/usr/bin/app"),
            AccessAction::Denied,
            &format!("X{i}"),
            None,
            AccessVia::Socket,
        );
    }
    // Known events still coalesce when the buffer is full.
    a.record(
        &caller(1000, 1, "/usr/bin/app"),
        AccessAction::Denied,
        "X0",
        None,
        AccessVia::Socket,
    );
    assert_eq!(a.stats().dropped_total, 15);
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    assert_eq!(vault.count(AccessAction::Denied), 11);
    assert_eq!(vault.count(AccessAction::Dropped), 15);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ships_and_releases_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    let clone = a.clone();
    a.record(
        &caller(0, 1, "/bin/cat"),
        AccessAction::Accessed,
        "A",
        Some(1),
        AccessVia::Fuse,
    );
    let out = a.shutdown(LONG).await.unwrap();
    assert!(out.shipped_all);
    assert_eq!(vault.count(AccessAction::Accessed), 1);
    // Late reads (a lazily detached mount) are counted, not silently lost.
    clone.record(
        &caller(0, 1, "/bin/cat"),
        AccessAction::Accessed,
        "A",
        Some(1),
        AccessVia::Fuse,
    );
    assert_eq!(clone.stats().dropped_total, 1);
    // The spool is free for the next agent even while clones of the old one live.
    let b = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    assert_eq!(b.stats().backlog_events, 0);
    b.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_auditor_on_the_same_spool_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    let err = Auditor::start(config(tmp.path()), vault.clone()).unwrap_err();
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_shape_for_health_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Auditor::start(config(tmp.path()), FakeVault::new(Mode::Up)).unwrap();
    let v = serde_json::to_value(a.stats()).unwrap();
    for key in [
        "enabled",
        "pending_events",
        "backlog_events",
        "backlog_bytes",
        "spool_max_bytes",
        "last_shipped_at",
        "last_error",
        "failing_since",
        "shipped_total",
        "dropped_total",
        "corrupt_skipped",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["enabled"], true);
    assert_eq!(v["spool_max_bytes"], 64 * 1024 * 1024);
    let off = serde_json::to_value(Auditor::disabled().stats()).unwrap();
    assert_eq!(off["enabled"], false);
    a.shutdown(LONG).await.unwrap();
}

#[test]
fn start_outside_a_runtime_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Auditor::start(config(tmp.path()), FakeVault::new(Mode::Up)).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_vault_refuses_is_counted_as_dropped_and_does_not_block_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Refuse("BAD"));
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    for i in 0..40u32 {
        a.record(
            &caller(1000, 1, "/usr/bin/app"),
            AccessAction::Accessed,
            &format!("S{i}"),
            Some(1),
            AccessVia::Fuse,
        );
        if i == 17 {
            for _ in 0..3 {
                a.record(
                    &caller(1000, 1, "/usr/bin/app"),
                    AccessAction::Accessed,
                    "BAD",
                    Some(1),
                    AccessVia::Fuse,
                );
            }
        }
    }
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    // The refusal is reported by a `dropped` event written by the next drain.
    flush(&a, LONG).await.unwrap();
    assert_eq!(vault.count(AccessAction::Accessed), 40);
    assert_eq!(vault.count(AccessAction::Dropped), 3);
    let stats = a.stats();
    assert_eq!(stats.dropped_total, 3);
    assert_eq!(stats.backlog_events, 0);
    // Shipping goes on normally afterwards.
    a.record(
        &caller(1000, 1, "/usr/bin/app"),
        AccessAction::Accessed,
        "LATER",
        Some(1),
        AccessVia::Fuse,
    );
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    assert_eq!(vault.count(AccessAction::Accessed), 41);
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_the_vault_would_refuse_are_cleaned_not_shipped_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = FakeVault::new(Mode::Up);
    let a = Auditor::start(config(tmp.path()), vault.clone()).unwrap();
    let mut c = caller(1001, 9, "/usr/bin/app");
    c.unit = Some("weird\nunit.service".into());
    for probe in ["../etc/passwd", "lower", ""] {
        a.record(&c, AccessAction::Denied, probe, None, AccessVia::Socket);
    }
    assert!(flush(&a, LONG).await.unwrap().shipped_all);
    let events = vault.with(|s| s.events.clone());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].secret, None);
    assert_eq!(events[0].count, 3);
    assert_eq!(events[0].unit.as_deref(), Some("weird?unit.service"));
    a.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_id_the_vault_would_refuse_is_a_start_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.agent_id = "has spaces".into();
    let err = Auditor::start(cfg, FakeVault::new(Mode::Up)).unwrap_err();
    assert!(err.to_string().contains("agent id"), "{err}");
}
