//! `cargo bench --bench read_path_inprocess` — **a diagnostic, not what apps get**: reader
//! threads inside the process that also serves the mount (apps are other processes and pay
//! more; `benches/read_path.rs` measures that). Kept for what only an in-process mount shows:
//! the FUSE requests per operation and the cost of access events.
//!
//! Reading a 64-byte secret through an in-process FUSE mount, side
//! by side with the same file on tmpfs (`/dev/shm`), with 1 and 8 concurrent readers, with
//! access events on (a real `Auditor`: coalescer, spool in a temp dir, shipper to a fake
//! uplink that acknowledges everything) and off (`Auditor::disabled()`).
//!
//! Operations measured, each on all three paths in interleaved rounds:
//! - `open+read+close`: `open(O_RDONLY)`, one `read` of up to 4 KiB (returns the 64 bytes),
//!   `close`;
//! - `read to EOF`: `std::fs::read` (open, `statx` for the size hint, read until 0, close), the
//!   way most programs read a whole file;
//! - `stat`.
//!
//! It also counts the FUSE requests each operation costs (from fuser's request log).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fyvault::agent::access::Policy;
use fyvault::agent::audit::{AuditConfig, Auditor};
use fyvault::agent::ship::Uplink;
use fyvault::agent::state::AgentState;
use fyvault::agent::view::{Update, UpdateState};
use fyvault::api::{AuditBatch, AuditBatchResponse};
use fyvault::secret::Secret;
use serde_json::json;

use support::floor_fs::FloorMount;
use support::report::{print_header, us};
use support::world::{open_tempdir, value64};
use support::{MountGuard, Report, Samples, Table, fmt_dur, fmt_rate};

const ROUNDS: usize = 9;
/// Operations per round and configuration (split among the readers).
const OPS_PER_ROUND: usize = 4000;
const SECRET: &str = "STRIPE_SK";

/// Acknowledges every batch at once (the vault's side is not what this measures).
struct AckAll;

impl Uplink for AckAll {
    type Error = String;
    async fn post(&self, batch: &AuditBatch) -> Result<AuditBatchResponse, String> {
        Ok(AuditBatchResponse {
            accepted: batch.events.len() as u64,
            duplicates: 0,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    OpenReadClose,
    ReadToEof,
    Stat,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::OpenReadClose => "open+read+close",
            Op::ReadToEof => "read to EOF (std::fs::read)",
            Op::Stat => "stat",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Op::OpenReadClose => "open_read_close",
            Op::ReadToEof => "read_to_eof",
            Op::Stat => "stat",
        }
    }

    fn run(self, path: &Path, buf: &mut [u8]) -> usize {
        match self {
            Op::OpenReadClose => {
                let mut f = std::fs::File::open(path).expect("open");
                f.read(buf).expect("read")
            }
            Op::ReadToEof => std::fs::read(path).expect("read").len(),
            Op::Stat => std::fs::metadata(path).expect("stat").len() as usize,
        }
    }
}

/// Where the file is read.
#[derive(Clone)]
struct Target {
    key: String,
    label: String,
    path: PathBuf,
}

/// One configuration's figures over all rounds.
#[derive(Default)]
struct Figures {
    samples: Samples,
    /// Throughput of each round.
    rates: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl Figures {
    /// Median throughput over the rounds.
    fn ops_per_s(&self) -> f64 {
        median(&self.rates)
    }
}

/// Runs `ops` operations split among `readers` threads, all starting together.
fn run_round(op: Op, path: &Path, readers: usize, ops: usize, out: &mut Figures) {
    let per = ops / readers;
    let barrier = Arc::new(Barrier::new(readers + 1));
    let results = Mutex::new(Vec::new());
    let wall = std::thread::scope(|s| {
        for _ in 0..readers {
            let barrier = barrier.clone();
            let results = &results;
            s.spawn(move || {
                let mut local = Samples::with_capacity(per);
                let mut buf = vec![0u8; 4096];
                barrier.wait();
                for _ in 0..per {
                    let t = Instant::now();
                    let n = op.run(path, &mut buf);
                    local.push(t.elapsed());
                    assert_eq!(n, 64, "{}: read {n} bytes", path.display());
                }
                results.lock().unwrap().push(local);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Scope end joins every reader.
        start
    });
    let wall = wall.elapsed();
    for r in results.into_inner().unwrap() {
        out.samples.extend(&r);
    }
    out.rates
        .push((per * readers) as f64 / wall.as_secs_f64().max(1e-9));
}

// ---- FUSE request counting (fuser logs every request at debug level) ---------------------------

static COUNTING: AtomicBool = AtomicBool::new(false);
static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

struct RequestCounter;

impl log::Log for RequestCounter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        COUNTING.load(Ordering::Relaxed) && m.target().starts_with("fuser")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // "FUSE(  12) ino 0x0000000000000010 OPEN flags 0x8000 thread=fuser-0"
        let msg = record.args().to_string();
        if let Some(rest) = msg.strip_prefix("FUSE(")
            && let Some(op) = rest.split_whitespace().nth(3)
        {
            *COUNTS.lock().unwrap().entry(op.to_owned()).or_default() += 1;
        }
    }

    fn flush(&self) {}
}

/// FUSE requests per operation, averaged over `n` operations.
fn count_requests(op: Op, path: &Path, n: usize) -> BTreeMap<String, f64> {
    let mut buf = vec![0u8; 4096];
    // Warm the kernel's caches first, as the timed runs do.
    op.run(path, &mut buf);
    std::thread::sleep(Duration::from_millis(50));
    COUNTS.lock().unwrap().clear();
    log::set_max_level(log::LevelFilter::Debug);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..n {
        op.run(path, &mut buf);
    }
    // RELEASE is sent asynchronously after close: let the last ones arrive.
    std::thread::sleep(Duration::from_millis(200));
    COUNTING.store(false, Ordering::SeqCst);
    log::set_max_level(log::LevelFilter::Off);
    COUNTS
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64 / n as f64))
        .collect()
}

fn put(state: &AgentState, value: &[u8]) {
    state.view.apply(
        1,
        true,
        vec![Update {
            name: SECRET.into(),
            version: 1,
            state: UpdateState::Active {
                value: Secret::copy_from(value),
                previous: None,
            },
            updated_at: SystemTime::now(),
        }],
    );
}

fn main() {
    support::install_cleanup();
    support::cleanup::require_fuse();
    log::set_logger(&RequestCounter).expect("logger");
    log::set_max_level(log::LevelFilter::Off);
    print_header(
        "read_path_inprocess",
        "DIAGNOSTIC (readers in the serving process): open+read+close of a 64-byte secret",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = open_tempdir("fyvault-bench-read-");
    let value = value64(7);

    // tmpfs baseline: the same bytes in /dev/shm.
    let shm = tempfile::Builder::new()
        .prefix("fyvault-bench-")
        .tempdir_in("/dev/shm")
        .expect("a temp dir on /dev/shm (tmpfs)");
    let shm_file = shm.path().join(SECRET);
    std::fs::write(&shm_file, &value).unwrap();

    // Two agents' states: access events off and on.
    let off = AgentState::new(Policy::default(), Auditor::disabled());
    let auditor = {
        let _enter = rt.enter();
        let cfg = AuditConfig::new(
            &dir.path().join("state"),
            "bench-agent",
            Some("bench".into()),
        );
        Auditor::start(cfg, AckAll).expect("start the auditor")
    };
    let on = AgentState::new(Policy::default(), auditor.clone());
    for s in [&off, &on] {
        put(s, &value);
        rt.spawn(s.clone().run_expiry());
    }
    let m_off = MountGuard::start(&dir.path().join("off"), off.clone());
    let m_on = MountGuard::start(&dir.path().join("on"), on.clone());
    let floor_threads: Vec<usize> = std::env::var("READ_PATH_FLOOR_THREADS")
        .unwrap_or_else(|_| fyvault::agent::mount::FUSE_THREADS.to_string())
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let floors: Vec<FloorMount> = floor_threads
        .iter()
        .map(|t| FloorMount::start(&dir.path().join(format!("floor{t}")), SECRET, &value, *t))
        .collect();

    let mut targets = vec![
        Target {
            key: "tmpfs".into(),
            label: "tmpfs (/dev/shm)".into(),
            path: shm_file.clone(),
        },
        Target {
            key: "fuse_audit_off".into(),
            label: "FUSE, access events off".into(),
            path: m_off.path().join(SECRET),
        },
        Target {
            key: "fuse_audit_on".into(),
            label: "FUSE, access events on".into(),
            path: m_on.path().join(SECRET),
        },
    ];
    // Experiments: fyvault (events off) with other thread counts.
    let extra_threads: Vec<usize> = std::env::var("READ_PATH_FUSE_THREADS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let extras: Vec<MountGuard> = extra_threads
        .iter()
        .map(|t| {
            MountGuard::start_with_threads(&dir.path().join(format!("off{t}")), off.clone(), *t)
        })
        .collect();
    for (m, t) in extras.iter().zip(&extra_threads) {
        targets.push(Target {
            key: format!("fuse_audit_off_{t}_threads"),
            label: format!("FUSE, events off, {t} threads"),
            path: m.path().join(SECRET),
        });
    }
    for (f, t) in floors.iter().zip(&floor_threads) {
        targets.push(Target {
            key: format!("fuse_floor_{t}_threads"),
            label: format!("FUSE floor: minimal fuser fs, {t} threads"),
            path: f.path().join(SECRET),
        });
    }
    for t in &targets {
        assert_eq!(std::fs::read(&t.path).unwrap(), value, "{}", t.label);
    }

    // Profiling aid: `READ_PATH_PROFILE_SECONDS=N` only runs open+read+close on the mount with
    // access events on, for N seconds (run under `perf record`).
    if let Some(secs) = std::env::var("READ_PATH_PROFILE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut f = Figures::default();
        while Instant::now() < until {
            run_round(Op::OpenReadClose, &targets[2].path, 1, 10_000, &mut f);
        }
        println!("p50 {}", fmt_dur(f.samples.p50()));
        return;
    }

    // Round trips per operation.
    let mut trips = Table::new(
        "FUSE requests per operation (access events off)",
        &["operation", "requests (per operation)"],
    );
    let mut trips_json = serde_json::Map::new();
    for op in [Op::OpenReadClose, Op::ReadToEof, Op::Stat] {
        let counts = count_requests(op, &targets[1].path, 500);
        let total: f64 = counts.values().sum();
        let detail: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        trips.row(vec![
            op.name().into(),
            if total == 0.0 {
                "0 (answered from the kernel's cache)".into()
            } else {
                format!("{total:.2}: {}", detail.join(", "))
            },
        ]);
        trips_json.insert(
            op.key().into(),
            json!({"total": total, "by_opcode": counts}),
        );
    }

    // Timed runs, interleaved so every figure sits beside its baseline in time.
    let ops = [Op::OpenReadClose, Op::ReadToEof, Op::Stat];
    let concurrency = [1usize, 8];
    let mut figures: BTreeMap<(Op, usize, String), Figures> = BTreeMap::new();
    for t in &targets {
        for op in ops {
            // Warm-up.
            let mut f = Figures::default();
            run_round(op, &t.path, 1, 200, &mut f);
        }
    }
    for round in 0..ROUNDS {
        for op in ops {
            for &c in &concurrency {
                for t in &targets {
                    let f = figures.entry((op, c, t.key.clone())).or_default();
                    run_round(op, &t.path, c, OPS_PER_ROUND, f);
                }
            }
        }
        eprint!("\rround {}/{ROUNDS}", round + 1);
    }
    eprintln!();

    let mut table = Table::new(
        "read_path_inprocess — diagnostic, readers in the serving process (64-byte secret)",
        &[
            "operation",
            "readers",
            "path",
            "p50",
            "p99",
            "throughput",
            "p50 vs tmpfs",
            "target",
        ],
    );
    let mut rows = Vec::new();
    for op in ops {
        for &c in &concurrency {
            let base_p50 = figures
                .get_mut(&(op, c, "tmpfs".into()))
                .unwrap()
                .samples
                .p50();
            for t in &targets {
                let f = figures.get_mut(&(op, c, t.key.clone())).unwrap();
                let p50 = f.samples.p50();
                let p99 = f.samples.p99();
                let ratio = p50.as_secs_f64() / base_p50.as_secs_f64().max(1e-12);
                let target = if op == Op::OpenReadClose && t.key.starts_with("fuse_audit") {
                    "≤ 4× tmpfs"
                } else {
                    ""
                };
                table.row(vec![
                    op.name().into(),
                    c.to_string(),
                    t.label.clone(),
                    fmt_dur(p50),
                    fmt_dur(p99),
                    fmt_rate(f.ops_per_s()),
                    format!("{ratio:.1}×"),
                    target.into(),
                ]);
                rows.push(json!({
                    "operation": op.key(),
                    "readers": c,
                    "path": t.key,
                    "p50_us": us(p50),
                    "p99_us": us(p99),
                    "ops_per_s": f.ops_per_s().round(),
                    "p50_ratio_vs_tmpfs": (ratio * 100.0).round() / 100.0,
                    "n": f.samples.len(),
                }));
            }
        }
    }
    table.print();
    trips.print();

    let mut cost = Table::new(
        "access events: cost in throughput (FUSE, events on vs off; median of per-round ratios)",
        &["operation", "readers", "off", "on", "cost", "target"],
    );
    let mut cost_json = Vec::new();
    // `stat` records no event (and is answered by the kernel's cache): not part of this table.
    for op in [Op::OpenReadClose, Op::ReadToEof] {
        for &c in &concurrency {
            let (off_f, on_f) = (
                &figures[&(op, c, "fuse_audit_off".into())],
                &figures[&(op, c, "fuse_audit_on".into())],
            );
            let (off_r, on_r) = (off_f.ops_per_s(), on_f.ops_per_s());
            // Paired by round (both ran back to back), so slow drifts of the machine cancel.
            let pct = median(
                &off_f
                    .rates
                    .iter()
                    .zip(&on_f.rates)
                    .map(|(off, on)| (off - on) / off * 100.0)
                    .collect::<Vec<_>>(),
            );
            cost.row(vec![
                op.name().into(),
                c.to_string(),
                fmt_rate(off_r),
                fmt_rate(on_r),
                format!("{pct:.1} %"),
                "≤ 10 %".into(),
            ]);
            cost_json.push(json!({
                "operation": op.key(), "readers": c,
                "off_ops_per_s": off_r.round(), "on_ops_per_s": on_r.round(),
                "cost_percent": (pct * 10.0).round() / 10.0,
            }));
        }
    }
    cost.print();

    // The cost of one `record()` on the hot path, measured directly (the throughput difference
    // above is within this machine's noise).
    let caller = fyvault::agent::access::Caller::from_proc(0, 0, std::process::id());
    let record_ns = |a: &Auditor| {
        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            a.record(
                &caller,
                fyvault::api::AccessAction::Accessed,
                SECRET,
                Some(1),
                fyvault::api::AccessVia::Fuse,
            );
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let rec_on = record_ns(&auditor);
    let rec_off = record_ns(&Auditor::disabled());
    let op_p50 = figures
        .get_mut(&(Op::OpenReadClose, 1, "fuse_audit_off".into()))
        .unwrap()
        .samples
        .p50();
    println!(
        "Auditor::record: {rec_on:.0} ns per access (disabled: {rec_off:.0} ns) = {:.2} % of a FUSE \
         open+read+close p50 ({})",
        rec_on / op_p50.as_nanos() as f64 * 100.0,
        fmt_dur(op_p50)
    );

    // The audit pipeline really ran: flush and show what it holds.
    let flushed = rt.block_on(auditor.flush(Duration::from_secs(10)));
    let stats = auditor.stats();
    println!(
        "\naccess events: flush {:?}; shipped {} coalesced events, dropped {}",
        flushed.map(|f| f.shipped_all),
        stats.shipped_total,
        stats.dropped_total
    );

    let mut report = Report::new("read_path_inprocess");
    report.set("rounds", json!(ROUNDS));
    report.set("ops_per_round", json!(OPS_PER_ROUND));
    report.set("results", json!(rows));
    report.set("fuse_requests_per_operation", json!(trips_json));
    report.set("access_event_cost", json!(cost_json));
    report.set(
        "audit",
        json!({
            "shipped_events": stats.shipped_total,
            "dropped": stats.dropped_total,
            "record_ns": rec_on.round(),
            "record_disabled_ns": rec_off.round(),
            "record_percent_of_open_read_close_p50":
                (rec_on / op_p50.as_nanos() as f64 * 10000.0).round() / 100.0,
        }),
    );
    report.write();

    drop(extras);
    drop(floors);
    drop(m_on);
    drop(m_off);
    rt.block_on(auditor.shutdown(Duration::from_secs(5))).ok();
    rt.shutdown_timeout(Duration::from_secs(5));
}
