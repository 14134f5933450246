//! `cargo bench --bench read_path`: reading a 64-byte secret as apps do — from a process of
//! their own — through the real `fyvault agent` binary's mount, beside the same file on tmpfs
//! and beside minimal FUSE filesystems (the floors of each read path FUSE offers), all in the
//! same run, with the same reader.
//!
//! The reader is `support/reader.c` (compiled at bench time): `open(O_RDONLY)`, one `read` of
//! 4 KiB (returns the 64 bytes), `close`, in a loop, 1 thread and 8 threads, per-operation
//! latency. Targets are measured in interleaved rounds so that every figure sits beside its
//! floors in time.
//!
//! Targets:
//! - `tmpfs`: the same 64 bytes in `/dev/shm`;
//! - `fyvault agent`: the real agent (subprocess, synced from a real vault, access events on),
//!   read path `auto` (passthrough where the kernel offers it);
//! - `fyvault agent, direct I/O`: a second agent with `fuse_read_path = "direct_io"`;
//! - floors: a minimal fuser filesystem (served by this process, 4 threads) answering `open`
//!   with direct I/O, `FOPEN_KEEP_CACHE`, or passthrough to a memfd.
//!
//! `FYVAULT_BENCH_QUICK=1`: 2 rounds of 0.4 s instead of 5 of 1 s.
//! `READ_PATH_CLONE_FD=1` adds floors with `clone_fd`; `READ_PATH_FLOOR_THREADS=1,2` floors
//! with other thread counts (direct I/O and passthrough).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use support::floor_fs::{FloorMode, FloorMount};
use support::reader::{Reader, Run};
use support::report::{SummaryRow, loadavg, print_header, quick, summarize, us};
use support::world::{AgentProc, World, open_tempdir, value64};
use support::{Report, Table, fmt_dur, fmt_rate};

const SECRET: &str = "STRIPE_SK";
const READERS: [usize; 2] = [1, 8];

struct Target {
    key: String,
    label: String,
    path: PathBuf,
}

/// Median of the rounds' figures.
#[derive(Default)]
struct Rounds(Vec<Run>);

impl Rounds {
    fn median_by(&self, f: impl Fn(&Run) -> f64) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    fn p50(&self) -> Duration {
        Duration::from_secs_f64(self.median_by(|r| r.p50.as_secs_f64()))
    }

    fn p99(&self) -> Duration {
        Duration::from_secs_f64(self.median_by(|r| r.p99.as_secs_f64()))
    }

    fn ops(&self) -> f64 {
        self.median_by(|r| r.ops_per_s)
    }
}

fn main() {
    support::install_cleanup();
    support::cleanup::require_fuse();
    print_header(
        "read_path",
        "open+read+close of a 64-byte secret by a reader in its own process",
    );
    let (rounds, secs) = if quick() { (2, 0.4) } else { (5, 1.0) };
    let reader = Reader::build();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let value = value64(7);
    let world = rt.block_on(World::new());
    rt.block_on(world.push(SECRET, &value));

    let auto_dir = open_tempdir("fyvault-bench-read-");
    let direct_dir = open_tempdir("fyvault-bench-read-direct-");
    let agent = AgentProc::start(
        auto_dir.path(),
        &world.agent_config(auto_dir.path(), true, 30),
        "info",
    );
    let agent_direct = AgentProc::start(
        direct_dir.path(),
        &world.agent_config_with(
            direct_dir.path(),
            true,
            30,
            "fuse_read_path = \"direct_io\"\n",
        ),
        "info",
    );
    let read_path_in_use = |a: &AgentProc| {
        a.log
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains("fuse: mounted"))
            .and_then(|l| l.split("read_path=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(|r| r.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    let auto_path = read_path_in_use(&agent);
    println!(
        "agent read path: {auto_path} (auto); second agent: {}",
        read_path_in_use(&agent_direct)
    );

    let shm = tempfile::Builder::new()
        .prefix("fyvault-bench-")
        .tempdir_in("/dev/shm")
        .expect("a temp dir on /dev/shm (tmpfs)");
    let shm_file = shm.path().join(SECRET);
    std::fs::write(&shm_file, &value).unwrap();

    let fdir = open_tempdir("fyvault-bench-floor-");
    let mut floors: Vec<(String, String, FloorMount)> = Vec::new();
    let mut add_floor = |mode: FloorMode, threads: usize, clone_fd: bool| {
        let key = format!(
            "floor_{}_{threads}t{}",
            mode.key(),
            if clone_fd { "_clone_fd" } else { "" }
        );
        let label = format!(
            "floor: minimal fuser fs, {}, {threads} threads{}",
            mode.label(),
            if clone_fd { ", clone_fd" } else { "" }
        );
        let m = FloorMount::start_mode(
            &fdir.path().join(&key),
            SECRET,
            &value,
            threads,
            mode,
            clone_fd,
        );
        floors.push((key, label, m));
    };
    for mode in [
        FloorMode::DirectIo,
        FloorMode::KeepCache,
        FloorMode::Passthrough,
    ] {
        add_floor(mode, 4, false);
    }
    if std::env::var_os("READ_PATH_CLONE_FD").is_some() {
        add_floor(FloorMode::DirectIo, 4, true);
        add_floor(FloorMode::Passthrough, 4, true);
    }
    for t in std::env::var("READ_PATH_FLOOR_THREADS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| x.parse::<usize>().ok())
    {
        add_floor(FloorMode::DirectIo, t, false);
        add_floor(FloorMode::Passthrough, t, false);
    }

    // `READ_PATH_AGENT_THREADS=1,2`: more agents (read path auto) with other `fuse_threads`.
    let thread_agents: Vec<(usize, tempfile::TempDir, AgentProc)> =
        std::env::var("READ_PATH_AGENT_THREADS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|x| x.parse::<usize>().ok())
            .map(|t| {
                let d = open_tempdir("fyvault-bench-read-threads-");
                let cfg =
                    world.agent_config_with(d.path(), true, 30, &format!("fuse_threads = {t}\n"));
                let a = AgentProc::start(d.path(), &cfg, "info");
                (t, d, a)
            })
            .collect();
    let mut targets = vec![
        Target {
            key: "tmpfs".into(),
            label: "tmpfs (/dev/shm)".into(),
            path: shm_file.clone(),
        },
        Target {
            key: "fyvault".into(),
            label: format!("fyvault agent ({auto_path}, auto)"),
            path: agent.mount.join(SECRET),
        },
        Target {
            key: "fyvault_direct_io".into(),
            label: "fyvault agent, fuse_read_path = direct_io".into(),
            path: agent_direct.mount.join(SECRET),
        },
    ];
    for (t, _, a) in &thread_agents {
        targets.push(Target {
            key: format!("fyvault_{t}_threads"),
            label: format!("fyvault agent ({auto_path}), fuse_threads = {t}"),
            path: a.mount.join(SECRET),
        });
    }
    for (key, label, m) in &floors {
        targets.push(Target {
            key: key.clone(),
            label: label.clone(),
            path: m.path().join(SECRET),
        });
    }
    for t in &targets {
        assert_eq!(std::fs::read(&t.path).unwrap(), value, "{}", t.label);
    }

    let load_start = loadavg();
    let mut figures: BTreeMap<(String, usize), Rounds> = BTreeMap::new();
    for round in 0..rounds {
        for &n in &READERS {
            for t in &targets {
                let run = reader.file(&t.path, secs, n);
                assert_eq!(run.bytes, 64, "{}: read {} bytes", t.label, run.bytes);
                figures.entry((t.key.clone(), n)).or_default().0.push(run);
            }
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    let load_end = loadavg();

    let mut table = Table::new(
        &format!(
            "read_path: open + read 4 KiB + close of a 64-byte file, reader in its own process \
             (median of {rounds} rounds of {secs} s; load {load_start} → {load_end})"
        ),
        &["path", "readers", "p50", "p99", "ops/s", "p50 vs tmpfs"],
    );
    let mut rows = Vec::new();
    for &n in &READERS {
        let base = figures[&("tmpfs".to_owned(), n)].p50();
        for t in &targets {
            let f = &figures[&(t.key.clone(), n)];
            let ratio = f.p50().as_secs_f64() / base.as_secs_f64().max(1e-12);
            table.row(vec![
                t.label.clone(),
                n.to_string(),
                fmt_dur(f.p50()),
                fmt_dur(f.p99()),
                fmt_rate(f.ops()),
                format!("{ratio:.1}×"),
            ]);
            rows.push(json!({
                "path": t.key, "readers": n,
                "p50_us": us(f.p50()), "p99_us": us(f.p99()), "ops_per_s": f.ops().round(),
                "p50_ratio_vs_tmpfs": (ratio * 100.0).round() / 100.0,
                "rounds_p50_us": f.0.iter().map(|r| us(r.p50)).collect::<Vec<_>>(),
            }));
        }
    }
    table.print();

    let get = |k: &str, n: usize| &figures[&(k.to_owned(), n)];
    let mut summary = Vec::new();
    for &n in &READERS {
        let (fy, tmp) = (get("fyvault", n), get("tmpfs", n));
        let ratio = fy.p50().as_secs_f64() / tmp.p50().as_secs_f64();
        let mut row = SummaryRow::new(
            format!(
                "FUSE open+read+close, {n} reader{} (own process), p50 (p99; ops/s)",
                if n == 1 { "" } else { "s" }
            ),
            format!(
                "{} ({}; {})",
                fmt_dur(fy.p50()),
                fmt_dur(fy.p99()),
                fmt_rate(fy.ops())
            ),
        )
        .floor(
            format!(
                "tmpfs {} ({}; {})",
                fmt_dur(tmp.p50()),
                fmt_dur(tmp.p99()),
                fmt_rate(tmp.ops())
            ),
            ratio,
        );
        if n == 1 {
            row = row.target("≤ 4× tmpfs p50", ratio <= 4.0);
        }
        summary.push(row);
    }
    let (floor_key, floor_label) = if auto_path == "passthrough" {
        ("floor_passthrough_4t", "passthrough")
    } else {
        ("floor_direct_io_4t", "direct I/O")
    };
    let (fy, fl) = (get("fyvault", 1), get(floor_key, 1));
    summary.push(
        SummaryRow::new(
            format!("same, 1 reader, against the FUSE floor of its read path ({auto_path}), p50"),
            fmt_dur(fy.p50()),
        )
        .floor(
            format!("minimal fuser fs, {floor_label}: {}", fmt_dur(fl.p50())),
            fy.p50().as_secs_f64() / fl.p50().as_secs_f64(),
        ),
    );
    let d = get("fyvault_direct_io", 1);
    summary.push(
        SummaryRow::new(
            "same, 1 reader, fuse_read_path = direct_io (p50)",
            fmt_dur(d.p50()),
        )
        .floor(
            format!("tmpfs {}", fmt_dur(get("tmpfs", 1).p50())),
            d.p50().as_secs_f64() / get("tmpfs", 1).p50().as_secs_f64(),
        ),
    );
    let mut report = Report::new("read_path");
    report.set("rounds", json!(rounds));
    report.set("seconds_per_run", json!(secs));
    report.set("agent_read_path", json!(auto_path));
    report.set("loadavg_during", json!([load_start, load_end]));
    report.set("results", json!(rows));
    summarize(&mut report, &summary);
    report.write();
    drop(floors);
    drop(thread_agents);
    drop(agent_direct);
    drop(agent);
}
