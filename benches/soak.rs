//! `cargo bench --bench soak`: the agent under a long, hostile day. 10 minutes by default
//! (`FYVAULT_SOAK_SECONDS=120` for a try), with
//! - 50 reader threads (25 through the mount, 25 through the socket, a read every 10 ms each)
//!   checking every value they get: whole (its checksum holds), of the secret asked for, and
//!   never older than one the same reader saw before;
//! - a rotation every 100 ms (round robin over 10 secrets, grace 1 s);
//! - the vault stopped (SIGTERM) and started again on the same address every minute, down for
//!   2 s each time.
//!
//! Reports reads done, torn or wrong reads (must be 0), failed reads (inside and outside the
//! vault's restarts), the agent's RSS and open fds at start and end, and access events lost:
//! every successful read must be in the vault's audit trail as an `accessed` event (counts
//! summed, the agent having shipped everything), or as a `dropped` count.
//!
//! Real vault (`fyvault server` subprocess, SQLite), real agent (`fyvault agent` subprocess,
//! FUSE mounted). Needs root and /dev/fuse.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use serde_json::json;

use support::report::{fmt_mb, print_header, rss_bytes};
use support::uds;
use support::world::{AgentProc, VaultProc, World, open_tempdir};
use support::{Report, Table, fmt_rate};

const SECRETS: usize = 10;
const READERS: usize = 50;
const READ_EVERY: Duration = Duration::from_millis(10);
const ROTATE_EVERY: Duration = Duration::from_millis(100);
const RESTART_EVERY: Duration = Duration::from_secs(60);
const OUTAGE: Duration = Duration::from_secs(2);
/// After the vault is back, the agent may take this long to reconnect: failures inside
/// [stop, start + RECOVERY] count as "during restarts".
const RECOVERY: Duration = Duration::from_secs(5);
const VALUE_LEN: usize = 256;

fn name(i: usize) -> String {
    format!("SOAK_{i}")
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `NAME|SEQ|padding…|CHECKSUM`: a value that says whose it is, which rotation made it, and
/// whether it arrived whole.
fn value(name: &str, seq: u64) -> Vec<u8> {
    let mut v = format!("{name}|{seq:012}|").into_bytes();
    while v.len() < VALUE_LEN - 16 {
        v.push(b'a' + ((v.len() as u64 + seq) % 26) as u8);
    }
    let sum = fnv(&v);
    v.extend_from_slice(format!("{sum:016x}").as_bytes());
    v
}

/// The rotation a value came from, if it is a whole value of `name`.
fn check(name: &str, v: &[u8]) -> Option<u64> {
    if v.len() != VALUE_LEN {
        return None;
    }
    let (body, sum) = v.split_at(VALUE_LEN - 16);
    if format!("{:016x}", fnv(body)).as_bytes() != sum {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut parts = text.split('|');
    (parts.next()? == name).then_some(())?;
    parts.next()?.parse().ok()
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    torn_or_wrong: AtomicU64,
    went_back: AtomicU64,
    /// Failed reads: when (relative to the start) and why (the via, the secret, the error:
    /// an errno or the agent's HTTP answer; never a value).
    failed_at: Mutex<Vec<(Duration, String)>>,
}

/// How the reader asks.
enum Via {
    Mount(PathBuf),
    Socket(PathBuf),
}

fn reader(via: Via, start: Instant, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut last = [0u64; SECRETS];
    let mut tx = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = i % SECRETS;
        i += 1;
        let secret = name(n);
        let got: Result<Vec<u8>, String> = match &via {
            Via::Mount(dir) => {
                std::fs::read(dir.join(&secret)).map_err(|e| format!("mount {secret}: {e}"))
            }
            Via::Socket(sock) => rt.block_on(async {
                if tx.is_none() {
                    tx = Some(uds::connect(sock).await);
                }
                let t = tx.as_mut().unwrap();
                let resp = uds::get(t, &format!("/v1/secrets/{secret}")).await;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("socket {secret}: body: {e}"))?
                    .to_bytes()
                    .to_vec();
                if status == 200 {
                    Ok(body)
                } else {
                    // An error answer: JSON with a code and a message, no value.
                    Err(format!(
                        "socket {secret}: {status} {}",
                        String::from_utf8_lossy(&body)
                    ))
                }
            }),
        };
        match got {
            Ok(v) => {
                counts.reads.fetch_add(1, Ordering::Relaxed);
                match check(&secret, &v) {
                    Some(seq) if seq >= last[n] => last[n] = seq,
                    Some(_) => {
                        counts.went_back.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        counts.torn_or_wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(why) => counts
                .failed_at
                .lock()
                .unwrap()
                .push((start.elapsed(), why)),
        }
        std::thread::sleep(READ_EVERY);
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent's audit figures from `/v1/health`.
fn audit_health(rt: &tokio::runtime::Runtime, sock: &Path) -> serde_json::Value {
    rt.block_on(async {
        let mut tx = uds::connect(sock).await;
        let resp = uds::get(&mut tx, "/v1/health").await;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
        h["audit"].clone()
    })
}

fn main() {
    support::install_cleanup();
    support::cleanup::require_fuse();
    let secs: u64 = std::env::var("FYVAULT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let run_for = Duration::from_secs(secs);
    print_header(
        "soak",
        &format!(
            "{READERS} readers, a rotation every {ROTATE_EVERY:?}, the vault restarted every \
             {RESTART_EVERY:?}, for {run_for:?}"
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut world = rt.block_on(World::new_listening(&listen));
    let mut seqs = [0u64; SECRETS];
    for (i, seq) in seqs.iter_mut().enumerate() {
        *seq = 1;
        rt.block_on(world.push(&name(i), &value(&name(i), 1)));
    }
    let dir = open_tempdir("fyvault-bench-soak-");
    let config = world.agent_config(dir.path(), true, 30);
    let agent = AgentProc::start(dir.path(), &config, "warn");
    let pid = agent.pid();
    let (rss_start, fds_start) = (rss_bytes(pid).unwrap_or(0), open_fds(pid));

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let via = if i % 2 == 0 {
                Via::Mount(agent.mount.clone())
            } else {
                Via::Socket(agent.socket.clone())
            };
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || reader(via, start, stop, counts))
        })
        .collect();

    // Rotations every 100 ms; the vault restarted every minute.
    let (mut rotations, mut rotations_failed) = (0u64, 0u64);
    let mut restarts: Vec<(Duration, Duration)> = Vec::new();
    let mut next_restart = start + RESTART_EVERY;
    let mut next_rotation = start;
    let mut turn = 0usize;
    let mut progress = start;
    while start.elapsed() < run_for {
        let now = Instant::now();
        if now >= next_restart && start.elapsed() + OUTAGE + RECOVERY < run_for {
            let down_at = start.elapsed();
            world.vault = None; // SIGTERM, waits for the exit
            std::thread::sleep(OUTAGE);
            world.vault = Some(VaultProc::start_on(&world.vault_data_dir(), &listen));
            restarts.push((down_at, start.elapsed()));
            next_restart += RESTART_EVERY;
            continue;
        }
        if now >= next_rotation {
            let n = turn % SECRETS;
            turn += 1;
            let secret = name(n);
            let seq = seqs[n] + 1;
            let ok = rt.block_on(async {
                world
                    .provider
                    .rotate(
                        &world.org,
                        &world.provider_id,
                        &world.write(&secret, &value(&secret, seq), Some(1)),
                    )
                    .await
                    .is_ok()
            });
            if ok {
                seqs[n] = seq;
                rotations += 1;
            } else {
                rotations_failed += 1;
            }
            next_rotation += ROTATE_EVERY;
            if next_rotation < Instant::now() {
                next_rotation = Instant::now();
            }
        }
        if progress.elapsed() >= Duration::from_secs(10) {
            progress = Instant::now();
            eprint!(
                "\r{:>4}s: {} reads, {} rotations, {} restarts",
                start.elapsed().as_secs(),
                counts.reads.load(Ordering::Relaxed),
                rotations,
                restarts.len()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let elapsed = start.elapsed();
    let (rss_end, fds_end) = (rss_bytes(pid).unwrap_or(0), open_fds(pid));

    // Every access shipped: then the trail must account for every read.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = audit_health(&rt, &agent.socket);
        if a["backlog_events"] == 0 && a["pending_events"] == 0 && a["pending_dropped"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not ship its events: {a}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let db = rusqlite::Connection::open_with_flags(
        world.vault_data_dir().join("vault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let sum = |action: &str| -> u64 {
        db.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM audit WHERE action = ?1 AND secret LIKE 'SOAK_%'",
            [action],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    };
    let (accessed, dropped_events) = (sum("accessed"), {
        db.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM audit WHERE action = 'dropped'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    });
    // Nothing but the readers read the secrets.
    let reads = counts.reads.load(Ordering::Relaxed);
    let failed = counts.failed_at.lock().unwrap().clone();
    let in_restart = |t: &Duration| {
        restarts
            .iter()
            .any(|(down, up)| *t >= *down && *t <= *up + RECOVERY)
    };
    let failed_in = failed.iter().filter(|(t, _)| in_restart(t)).count();
    let failed_out = failed.len() - failed_in;
    // Each failure, placed against the restarts (the first 50).
    for (t, why) in failed.iter().take(50) {
        let place = restarts
            .iter()
            .find(|(down, up)| *t >= *down && *t <= *up + RECOVERY)
            .map_or("outside the restarts".to_owned(), |(down, up)| {
                if t <= up {
                    format!(
                        "{:.3} s after the vault stopped",
                        (*t - *down).as_secs_f64()
                    )
                } else {
                    format!(
                        "{:.3} s after the vault was up again",
                        (*t - *up).as_secs_f64()
                    )
                }
            });
        eprintln!("failed read at {:.3} s ({place}): {why}", t.as_secs_f64());
    }
    let lost = reads.saturating_sub(accessed + dropped_events);

    let mut t = Table::new(
        &format!("soak: {:.0} s", elapsed.as_secs_f64()),
        &["figure", "value", "expected"],
    );
    let mut row = |k: &str, v: String, want: &str| t.row(vec![k.into(), v, want.into()]);
    row(
        "reads done",
        format!(
            "{reads} ({})",
            fmt_rate(reads as f64 / elapsed.as_secs_f64())
        ),
        &format!(
            "≈ {} (the readers' pace)",
            fmt_rate(READERS as f64 / READ_EVERY.as_secs_f64())
        ),
    );
    row(
        "torn or wrong reads",
        counts.torn_or_wrong.load(Ordering::Relaxed).to_string(),
        "0",
    );
    row(
        "reads older than one seen before",
        counts.went_back.load(Ordering::Relaxed).to_string(),
        "0",
    );
    row("failed reads outside restarts", failed_out.to_string(), "0");
    row(
        "failed reads during restarts",
        failed_in.to_string(),
        "0 (values stay served)",
    );
    row(
        "rotations applied / failed (vault down)",
        format!("{rotations} / {rotations_failed}"),
        &format!(
            "≈ {} in all",
            elapsed.as_millis() / ROTATE_EVERY.as_millis()
        ),
    );
    row("vault restarts", restarts.len().to_string(), "");
    row(
        "agent RSS start → end",
        format!("{} → {}", fmt_mb(rss_start), fmt_mb(rss_end)),
        "flat",
    );
    row(
        "agent open fds start → end",
        format!("{fds_start} → {fds_end}"),
        "flat",
    );
    row(
        "access events: reads / accessed in the trail / dropped",
        format!("{reads} / {accessed} / {dropped_events}"),
        "equal",
    );
    row("access events lost", lost.to_string(), "0");
    t.print();

    let mut report = Report::new("soak");
    report.set("seconds", json!(elapsed.as_secs_f64()));
    report.set("reads", json!(reads));
    report.set(
        "torn_or_wrong",
        json!(counts.torn_or_wrong.load(Ordering::Relaxed)),
    );
    report.set("went_back", json!(counts.went_back.load(Ordering::Relaxed)));
    report.set("failed_outside_restarts", json!(failed_out));
    report.set("failed_during_restarts", json!(failed_in));
    report.set("rotations", json!(rotations));
    report.set("rotations_failed", json!(rotations_failed));
    report.set("restarts", json!(restarts.len()));
    report.set("rss_start", json!(rss_start));
    report.set("rss_end", json!(rss_end));
    report.set("fds_start", json!(fds_start));
    report.set("fds_end", json!(fds_end));
    report.set("accessed_in_trail", json!(accessed));
    report.set("dropped_in_trail", json!(dropped_events));
    report.set("events_lost", json!(lost));
    report.write();
    drop(agent);
    drop(world);
}
