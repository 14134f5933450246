//! `cargo bench --bench footprint`: the agent's resident memory and its startup-to-ready time
//! with 10, 1,000 and 10,000 secrets.
//!
//! For each size: a fresh real vault (`fyvault server` subprocess) holding N secrets of 64
//! bytes, then the real `fyvault agent` binary started as a subprocess (FUSE mount, socket,
//! audit spool, long-poll) with `NOTIFY_SOCKET` pointing at a datagram socket this benchmark
//! owns. Ready = `READY=1` received (the agent sends it after the first sync, the mount and the
//! socket bind). RSS = `VmRSS` of `/proc/PID/status` right after ready, and again after one
//! second of idling. The agent is started `STARTS` times per size (the vault stays).
//!
//! Baseline in the same run: a bare client fetching the full state (`sync?since=0`) and opening
//! every sealed value, in this process — the floor of "synced".
//!
//! Listing: `opendir` + `readdir` to the end of the mount with N secrets, by the separate-process
//! reader (`support/reader.c`), beside a tmpfs directory of N files in the same run.
//! `FYVAULT_BENCH_QUICK=1`: one start per size instead of three.
//!
//! Then (issue 14) one user-vault secret with a value for each of 10,000 users
//! (`FOOTPRINT_USERS`): ready time and RSS beside the fetch alone, and one user's rotation from
//! the provider's call to the agent serving it, beside the provider's call alone.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fyvault::crypto::aad;
use serde_json::json;

use support::reader::Reader;
use support::report::{
    SummaryRow, fmt_mb, memory_breakdown, print_header, quick, rss_bytes, summarize, us,
};
use support::world::{AgentProc, World, open_tempdir};
use support::{Report, Samples, Table, cleanup, fmt_dur};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// `FOOTPRINT_SIZES=10,1000` runs only those sizes.
fn sizes() -> Vec<usize> {
    match std::env::var("FOOTPRINT_SIZES") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => SIZES.to_vec(),
    }
}
const STARTS: usize = 3;

fn starts() -> usize {
    if quick() { 1 } else { STARTS }
}

fn main() {
    support::install_cleanup();
    support::cleanup::require_fuse();
    print_header("footprint", "agent RSS and startup-to-ready");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut t = Table::new(
        "footprint: fyvault agent (real binary, FUSE + socket + audit spool)",
        &[
            "secrets",
            "ready p50 (max)",
            "baseline: fetch + open all",
            "RSS at ready",
            "RSS after 1 s",
            "target",
        ],
    );
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let reader = Reader::build();
    let list_secs = if quick() { 0.5 } else { 2.0 };
    for n in sizes() {
        let world = rt.block_on(World::new());
        let t0 = Instant::now();
        rt.block_on(world.push_many(n, 8));
        eprintln!("{n} secrets pushed in {}", fmt_dur(t0.elapsed()));

        let mut ready = Samples::new();
        let mut fetch = Samples::new();
        let mut fetch_only = Samples::new();
        let mut rss_ready = Vec::new();
        let mut rss_idle = Vec::new();
        let mut breakdowns = Vec::new();
        let mut listing = None;
        for i in 0..starts() {
            // Baseline: fetch the full state and open every value.
            let t = Instant::now();
            let opened = rt.block_on(async {
                let resp = world
                    .agent_client
                    .sync(&world.org, &world.env, 0, 0)
                    .await
                    .unwrap();
                fetch_only.push(t.elapsed());
                resp.secrets
                    .iter()
                    .filter_map(|s| {
                        let sealed = s.sealed_value.as_deref()?;
                        world
                            .key
                            .open(sealed, &aad(&world.org, &world.env, &s.name))
                            .ok()
                    })
                    .count()
            });
            fetch.push(t.elapsed());
            assert_eq!(opened, n);

            let dir = open_tempdir("fyvault-bench-fp-");
            let config = world.agent_config(dir.path(), true, 30);
            let mut agent = AgentProc::start(dir.path(), &config, "warn");
            let rss0 = rss_bytes(agent.pid()).expect("VmRSS");
            let breakdown = memory_breakdown(agent.pid());
            if std::env::var_os("FOOTPRINT_SMAPS").is_some() {
                print_smaps(agent.pid());
            }
            ready.push(agent.ready_after);
            assert!(
                cleanup::is_mounted(&agent.mount),
                "the agent said READY=1 without its mount"
            );
            let entries = std::fs::read_dir(&agent.mount).unwrap().count();
            assert_eq!(
                entries,
                n + 3,
                "the mount lists every secret (+ .env, .env.sh, .previous)"
            );
            if i == 0 {
                let shm = tempfile::Builder::new()
                    .prefix("fyvault-bench-ls-")
                    .tempdir_in("/dev/shm")
                    .unwrap();
                for k in 0..n {
                    std::fs::write(shm.path().join(format!("S{k:05}")), b"x").unwrap();
                }
                let fy = reader.list(&agent.mount, list_secs);
                let tmp = reader.list(shm.path(), list_secs);
                assert_eq!(
                    fy.bytes as usize,
                    n + 5,
                    "the mount lists every secret (+ . .. .env .env.sh .previous)"
                );
                listing = Some((fy, tmp));
            }
            std::thread::sleep(Duration::from_secs(1));
            let rss1 = rss_bytes(agent.pid()).expect("VmRSS");
            rss_ready.push(rss0);
            rss_idle.push(rss1);
            assert!(
                agent.stop(),
                "the agent stops cleanly: {}",
                agent.log.lock().unwrap()
            );
            eprintln!(
                "{n} secrets, start {}: ready after {}, RSS {} → {} (at ready: {breakdown})",
                i + 1,
                fmt_dur(agent.ready_after),
                fmt_mb(rss0),
                fmt_mb(rss1)
            );
            breakdowns.push(breakdown);
        }
        rss_ready.sort_unstable();
        rss_idle.sort_unstable();
        let (r0, r1) = (rss_ready[starts() / 2], rss_idle[starts() / 2]);
        let (ls_fy, ls_tmp) = listing.expect("listed once");
        let ready_target = match n {
            10 => Some((Duration::from_millis(100), "≤ 100 ms")),
            1_000 => Some((Duration::from_millis(500), "≤ 500 ms")),
            10_000 => Some((Duration::from_secs(2), "≤ 2 s")),
            _ => None,
        };
        let mut row = SummaryRow::new(
            format!("agent ready (READY=1), {n} secrets, p50"),
            fmt_dur(ready.p50()),
        )
        .floor(
            format!("fetch + open all: {}", fmt_dur(fetch.p50())),
            ready.p50().as_secs_f64() / fetch.p50().as_secs_f64(),
        );
        if let Some((limit, label)) = ready_target {
            row = row.target(label, ready.p50() <= limit);
        }
        summary.push(row);
        let mut rss_row = SummaryRow::new(
            format!("agent RSS at ready / after 1 s, {n} secrets"),
            format!("{} / {}", fmt_mb(r0), fmt_mb(r1)),
        );
        if n == 10_000 {
            rss_row = rss_row.target("≤ 30 MB", r0.max(r1) <= 30 * 1024 * 1024);
        }
        summary.push(rss_row);
        summary.push(
            SummaryRow::new(
                format!("`ls` of the mount, {n} secrets (own process), p50"),
                fmt_dur(ls_fy.p50),
            )
            .floor(
                format!("tmpfs, {n} files: {}", fmt_dur(ls_tmp.p50)),
                ls_fy.p50.as_secs_f64() / ls_tmp.p50.as_secs_f64(),
            ),
        );
        let target = match n {
            10 => "ready ≤ 100 ms; RSS ≤ 12 MB",
            1_000 => "ready ≤ 500 ms",
            _ => "RSS ≤ 30 MB",
        };
        t.row(vec![
            format!("{n}"),
            format!("{} ({})", fmt_dur(ready.p50()), fmt_dur(ready.max())),
            format!(
                "{} (fetch {})",
                fmt_dur(fetch.p50()),
                fmt_dur(fetch_only.p50())
            ),
            fmt_mb(r0),
            fmt_mb(r1),
            target.into(),
        ]);
        rows.push(json!({
            "secrets": n,
            "ready_us": ready.json(),
            "baseline_fetch_and_open_us": fetch.json(),
            "baseline_fetch_only_us": fetch_only.json(),
            "ready_p50_ms": us(ready.p50()) / 1000.0,
            "rss_at_ready_bytes": rss_ready,
            "rss_after_1s_bytes": rss_idle,
            "memory_at_ready": breakdowns,
            "rss_at_ready_mb": (r0 as f64 / 1048576.0 * 10.0).round() / 10.0,
            "rss_after_1s_mb": (r1 as f64 / 1048576.0 * 10.0).round() / 10.0,
            "ls_p50_us": us(ls_fy.p50),
            "ls_tmpfs_p50_us": us(ls_tmp.p50),
        }));
        drop(world);
    }
    t.print();
    println!(
        "reference (issue 7): AWS Secrets Manager Agent 13.5 MB RSS, about 50 ms to first answer"
    );
    let n = users();
    if n > 0 {
        user_values(&rt, n);
    }
    let mut report = Report::new("footprint");
    report.set("starts_per_size", json!(starts()));
    report.set("results", json!(rows));
    summarize(&mut report, &summary);
    report.write();
}

/// Resident size per mapping (file mappings by path and permissions), largest first.
fn print_smaps(pid: u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut rows: Vec<(u64, String)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let f: Vec<&str> = line.split_whitespace().collect();
            current = format!(
                "{} {}",
                f.get(1).unwrap_or(&""),
                f.get(5).unwrap_or(&"[anon]")
            );
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            rows.push((kb, current.clone()));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (kb, what) in rows.iter().take(15) {
        eprintln!("  {kb:>7} kB  {what}");
    }
}

/// `FOOTPRINT_USERS=N` (default 10,000; 0 skips): the user-vault section's number of users.
fn users() -> usize {
    std::env::var("FOOTPRINT_USERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10_000)
}

/// Issue 14: one user-vault secret with a value for each of `n` users. The agent keeps them
/// sealed until read, so ready time and memory are measured against the fetch alone (the
/// floor: `sync?since=0` in this process); then one user's rotation, from the provider's call
/// to the agent serving it on the socket, beside the provider's call alone.
fn user_values(rt: &tokio::runtime::Runtime, n: usize) {
    const NAME: &str = "AI_KEY";
    const ROTATIONS: usize = 10;
    let world = rt.block_on(World::new());
    let http = reqwest::Client::new();
    rt.block_on(async {
        world
            .admin
            .set_policy(
                &world.org,
                &world.env,
                NAME,
                fyvault::api::SecretPolicy::User,
            )
            .await
            .unwrap();
        use futures_util::StreamExt as _;
        let t0 = Instant::now();
        futures_util::stream::iter(0..n)
            .map(|i| {
                let (w, http) = (&world, &http);
                async move {
                    w.write_user(
                        http,
                        NAME,
                        &format!("user-{i}"),
                        &support::world::value64(i as u64),
                        false,
                    )
                    .await
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        eprintln!("{n} user values pushed in {}", fmt_dur(t0.elapsed()));
    });
    let (mut ready, mut fetch, mut rotation, mut floor) = (
        Samples::new(),
        Samples::new(),
        Samples::new(),
        Samples::new(),
    );
    let (mut rss_ready, mut rss_idle) = (Vec::new(), Vec::new());
    let mut sync_bytes = 0usize;
    let starts = starts();
    for start in 0..starts {
        let t = Instant::now();
        let full = rt
            .block_on(world.agent_client.sync(&world.org, &world.env, 0, 0))
            .unwrap();
        fetch.push(t.elapsed());
        assert_eq!(full.user_values.len(), n);
        let dir = open_tempdir("fyvault-bench-fpu-");
        let config = world.agent_config(dir.path(), true, 30);
        let mut agent = AgentProc::start(dir.path(), &config, "warn");
        let rss0 = rss_bytes(agent.pid()).expect("VmRSS");
        ready.push(agent.ready_after);
        std::thread::sleep(Duration::from_secs(1));
        rss_ready.push(rss0);
        rss_idle.push(rss_bytes(agent.pid()).expect("VmRSS"));
        rt.block_on(async {
            let mut tx = support::uds::connect(&agent.socket).await;
            let health = support::uds::get_body(&mut tx, "/v1/health").await;
            let h: serde_json::Value = serde_json::from_slice(&health).unwrap();
            assert_eq!(h["user_values"], n, "every user value held at ready");
            if start > 0 {
                return;
            }
            // One user's rotation among n, ROTATIONS times: provider call → agent serves it.
            for r in 0..ROTATIONS {
                let user = format!("user-{}", (r * 997) % n);
                let path = format!("/v1/secrets/{NAME}?user={user}");
                let value = format!("rotated-{r}-{}", "x".repeat(40));
                let before = world
                    .agent_client
                    .sync(&world.org, &world.env, 0, 0)
                    .await
                    .unwrap()
                    .revision;
                let t = Instant::now();
                world
                    .write_user(&http, NAME, &user, value.as_bytes(), true)
                    .await;
                floor.push(t.elapsed());
                loop {
                    let got = support::uds::get_body(&mut tx, &path).await;
                    if got == value.as_bytes() {
                        break;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "rotation never arrived"
                    );
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                rotation.push(t.elapsed());
                let delta = world
                    .agent_client
                    .sync(&world.org, &world.env, before, 0)
                    .await
                    .unwrap();
                assert_eq!(
                    delta.user_values.len(),
                    1,
                    "one user's rotation is one change"
                );
                sync_bytes = serde_json::to_vec(&delta).unwrap().len();
            }
        });
        assert!(
            agent.stop(),
            "the agent stops cleanly: {}",
            agent.log.lock().unwrap()
        );
    }
    rss_ready.sort_unstable();
    rss_idle.sort_unstable();
    let mut t = Table::new(
        "footprint: user-vault secret, one value per user (agent holds them sealed until read)",
        &[
            "user values",
            "ready p50 (max)",
            "floor: fetch full state",
            "RSS at ready",
            "RSS after 1 s",
            "one user's rotation p50 (max)",
            "floor: provider PATCH",
            "delta answer",
        ],
    );
    t.row(vec![
        format!("{n}"),
        format!("{} ({})", fmt_dur(ready.p50()), fmt_dur(ready.max())),
        fmt_dur(fetch.p50()),
        fmt_mb(rss_ready[starts / 2]),
        fmt_mb(rss_idle[starts / 2]),
        format!("{} ({})", fmt_dur(rotation.p50()), fmt_dur(rotation.max())),
        fmt_dur(floor.p50()),
        format!("{sync_bytes} B"),
    ]);
    t.print();
    let mut report = Report::new("footprint_users");
    report.set(
        "results",
        json!({
            "user_values": n,
            "ready_us": ready.json(),
            "floor_fetch_us": fetch.json(),
            "rss_at_ready_bytes": rss_ready,
            "rss_after_1s_bytes": rss_idle,
            "rotation_us": rotation.json(),
            "floor_patch_us": floor.json(),
            "delta_bytes": sync_bytes,
        }),
    );
    report.write();
}
