//! `cargo bench --bench fleet`: one vault instance (SQLite) holding 1,000 / 5,000 / 15,000
//! agents' long-polls, and two instances over PostgreSQL holding 7,500 each; one push wakes
//! them all.
//!
//! The vault is `fyvault server` in a subprocess (so its RSS, fds, threads and CPU are its own);
//! the fleet is simulated in this process on loopback: each agent is one keep-alive HTTP/1.1
//! connection (`support/longpoll.rs`) sending `sync?since=REV&wait=300` with one of 100 agent
//! tokens, and after its answer it polls again at the new revision, as the real agent does.
//! Printed per fleet: the connect time of the whole fleet (first connect to the last poll
//! parked), the wake latency from the push to each answer (p50 / p99 / max), the vault's CPU
//! for the wake (push to last answer) and for the whole cycle (until every agent parked again),
//! RSS before / parked / a while after the fleet disconnected, fds and threads. The floor, in
//! the same run, is a fleet of one.
//!
//! Bounded: at most `FLEET_SIZES` (default `1000,5000,15000`) agents, each phase under a
//! deadline; `FLEET_SETTLE_SECS` (default 60) is the wait after the fleet disconnects;
//! PostgreSQL only when `FYVAULT_TEST_POSTGRES` is set (`eval "$(scripts/pg-test-setup)"`),
//! `FLEET_PG_PER_INSTANCE` (default 7500) agents on each of two instances, after a floor of one
//! agent each, `FLEET_PG_ROUNDS` (default 2) times on the same instances. `FLEET_VAULT_ENV`
//! (`K=V …`) sets environment variables of the vault processes only (allocator tunables), and
//! `FYVAULT_BENCH_BIN` runs another build of the vault (an allocator variant).

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fyvault::api::CreateTokenRequest;
use fyvault::secret::Secret;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use support::longpoll::Conn;
use support::report::{fmt_mb, print_header, rss_bytes};
use support::world::{VaultProc, World, fyvault_bin, open_tempdir};
use support::{Report, Samples, Table, fmt_dur};

const TOKENS: usize = 100;
const WAIT: u64 = 300;
const PHASE_DEADLINE: Duration = Duration::from_secs(180);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("FLEET_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000, 15000])
}

/// `FLEET_VAULT_ENV="K=V K2=V2"`: environment for the vault processes only (allocator
/// tunables such as `MALLOC_ARENA_MAX=2`, without touching the simulator's own allocator).
fn vault_env(cmd: &mut Command) {
    let spec = std::env::var("FLEET_VAULT_ENV").unwrap_or_default();
    for kv in spec.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// User + system CPU of `pid`, dead threads included (`/proc/PID/stat`, clock ticks).
fn proc_cpu(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One vault instance of a run.
struct Instance {
    proc: VaultProc,
    addr: SocketAddr,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("vault address")
}

/// `GET /api/v1/admin/stats` of one instance (`?heap=true`: with the allocator's counters,
/// which cost the vault a walk of its heap: only outside the timed phases).
async fn stats(addr: SocketAddr, admin: &str, heap: bool) -> Value {
    let mut c = Conn::connect(addr).await.expect("stats connect");
    let path = format!("/api/v1/admin/stats?heap={heap}");
    c.send_get(&path, admin).await.unwrap();
    c.read_answer().await.expect("stats").json()
}

async fn sum(instances: &[Instance], admin: &str, field: &str, heap: bool) -> u64 {
    let mut n = 0;
    for i in instances {
        let s = stats(i.addr, admin, heap).await;
        n += s.pointer(field).and_then(Value::as_u64).unwrap_or(0);
    }
    n
}

async fn total(instances: &[Instance], admin: &str, field: &str) -> u64 {
    sum(instances, admin, field, false).await
}

/// Bytes in live heap allocations, summed over the instances (glibc's count; 0 elsewhere).
async fn heap_in_use(instances: &[Instance], admin: &str) -> u64 {
    sum(instances, admin, "/heap/in_use_bytes", true).await
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one fleet measured.
struct Outcome {
    label: String,
    agents: usize,
    connect: Duration,
    wake: Samples,
    cpu_wake: Duration,
    cpu_cycle: Duration,
    /// From sending the push to its answer (part of every wake).
    push: Duration,
    rss_base: u64,
    rss_parked: u64,
    rss_after: u64,
    heap_base: u64,
    heap_parked: u64,
    heap_after: u64,
    fds_parked: usize,
    threads_parked: u64,
    threads_wake: u64,
    load: String,
}

/// Connects `n` agents spread over `instances`, parks them, pushes once, times every answer,
/// lets them poll again, disconnects them and waits `settle`.
async fn run_fleet(
    label: &str,
    world: &World,
    instances: &[Instance],
    admin: &str,
    tokens: &[String],
    n: usize,
    settle: Duration,
) -> Outcome {
    let pids: Vec<u32> = instances.iter().map(Instance::pid).collect();
    let rss = || pids.iter().filter_map(|p| rss_bytes(*p)).sum::<u64>();
    let cpu = || pids.iter().map(|p| proc_cpu(*p)).sum::<Duration>();
    let rss_base = rss();
    let heap_base = heap_in_use(instances, admin).await;
    let since = world
        .agent_client
        .sync(&world.org, &world.env, 0, 0)
        .await
        .unwrap()
        .revision;
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Instant>();
    let (bye_tx, bye) = watch::channel(false);
    let started = Instant::now();
    for i in 0..n {
        let addr = instances[i % instances.len()].addr;
        let token = tokens[i % tokens.len()].clone();
        let (org, env) = (world.org.clone(), world.env.clone());
        let answers = answers_tx.clone();
        let mut bye = bye.clone();
        tokio::spawn(async move {
            let mut conn = loop {
                match Conn::connect(addr).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let poll = async {
                conn.send_sync(&org, &env, since, WAIT, &token).await?;
                let a = conn.read_answer().await?;
                let _ = answers.send(Instant::now());
                let rev = a.revision().unwrap_or(since);
                conn.send_sync(&org, &env, rev, WAIT, &token).await?;
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            };
            tokio::select! {
                r = poll => if let Err(e) = r { eprintln!("agent {i}: {e}") },
                _ = bye.wait_for(|b| *b) => {}
            }
        });
    }
    drop(answers_tx);
    wait_for("the fleet to park", async || {
        total(instances, admin, "/long_polls").await >= n as u64
    })
    .await;
    let connect = started.elapsed();
    let rss_parked = rss();
    let heap_parked = heap_in_use(instances, admin).await;
    let fds_parked = pids.iter().map(|p| fds(*p)).sum();
    let threads_parked = pids.iter().map(|p| threads(*p)).sum();
    let load = loadavg();

    let cpu0 = cpu();
    let t0 = Instant::now();
    world
        .push("FLEET_KEY", format!("v-{label}-{n}").as_bytes())
        .await;
    // The push is answered once its transaction is durable, and only then announced.
    let push = t0.elapsed();
    let mut wake = Samples::with_capacity(n);
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    while wake.len() < n {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some(at)) => wake.push(at.duration_since(t0)),
            _ => panic!("{label}: only {} of {n} agents woke", wake.len()),
        }
    }
    let cpu_wake = cpu() - cpu0;
    let threads_wake = pids.iter().map(|p| threads(*p)).sum();
    wait_for("the fleet to park again", async || {
        total(instances, admin, "/long_polls").await >= n as u64
    })
    .await;
    let cpu_cycle = cpu() - cpu0;

    let _ = bye_tx.send(true);
    wait_for("the fleet to disconnect", async || {
        total(instances, admin, "/connections").await <= instances.len() as u64
    })
    .await;
    tokio::time::sleep(settle).await;
    let heap_after = heap_in_use(instances, admin).await;
    Outcome {
        label: label.to_owned(),
        agents: n,
        connect,
        wake,
        cpu_wake,
        cpu_cycle,
        push,
        rss_base,
        rss_parked,
        rss_after: rss(),
        heap_base,
        heap_parked,
        heap_after,
        fds_parked,
        threads_parked,
        threads_wake,
        load,
    }
}

async fn agent_tokens(world: &World) -> Vec<String> {
    let mut tokens = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        let t = world
            .admin
            .create_agent_token(&world.org, &world.env, &CreateTokenRequest::default())
            .await
            .unwrap();
        tokens.push(String::from_utf8(t.token.expose().to_vec()).unwrap());
    }
    tokens
}

fn init_admin(args: &[&str], dir: &Path, db: Option<&str>) -> String {
    let file = dir.join("admin.token");
    let mut cmd = Command::new(fyvault_bin());
    cmd.args(["server", "init"])
        .args(args)
        .arg("--token-out")
        .arg(&file);
    if let Some(url) = db {
        cmd.env("FYVAULT_DATABASE", url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(std::fs::read(&file).unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

/// One SQLite instance, fleets of every size (the first a fleet of one: the floor).
async fn sqlite_runs(settle: Duration) -> Vec<Outcome> {
    let dir = open_tempdir("fyvault-fleet-");
    let data = dir.path().join("vault");
    let admin = init_admin(&["--data-dir", data.to_str().unwrap()], dir.path(), None);
    let proc = {
        let d = data.clone();
        tokio::task::spawn_blocking(move || VaultProc::start_with(&d, vault_env))
            .await
            .unwrap()
    };
    let addr = addr_of(&proc.url);
    let url = proc.url.clone();
    let world = World::on(dir, None, &url, Secret::new(admin.clone().into_bytes())).await;
    let instances = [Instance { proc, addr }];
    let tokens = agent_tokens(&world).await;
    let mut out = vec![
        run_fleet(
            "floor",
            &world,
            &instances,
            &admin,
            &tokens,
            1,
            Duration::ZERO,
        )
        .await,
    ];
    for n in sizes() {
        let o = run_fleet(
            "SQLite, 1 instance",
            &world,
            &instances,
            &admin,
            &tokens,
            n,
            settle,
        )
        .await;
        print_one(&o);
        out.push(o);
    }
    out
}

/// `url` with its database name replaced.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').expect("a postgres://…/DB URL");
    let mut u = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// Two instances over one PostgreSQL database, `per` agents on each.
async fn pg_run(base: &str, per: usize, settle: Duration) -> Option<Vec<Outcome>> {
    let db = format!("fyvault_fleet_{}", std::process::id());
    let (client, conn) = match tokio_postgres::connect(base, tokio_postgres::NoTls).await {
        Ok(x) => x,
        Err(e) => {
            println!("SKIPPED PostgreSQL fleet: cannot connect ({e})");
            return None;
        }
    };
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = with_db(base, &db);
    let dir = open_tempdir("fyvault-fleet-pg-");
    let admin = init_admin(&[], dir.path(), Some(&url));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (d, u) = (dir.path().join("unused"), url.clone());
        let proc = tokio::task::spawn_blocking(move || {
            VaultProc::start_with(&d, |c| {
                c.env("FYVAULT_DATABASE", &u);
                vault_env(c);
            })
        })
        .await
        .unwrap();
        let addr = addr_of(&proc.url);
        instances.push(Instance { proc, addr });
    }
    let url_a = instances[0].proc.url.clone();
    let world = World::on(dir, None, &url_a, Secret::new(admin.clone().into_bytes())).await;
    let tokens = agent_tokens(&world).await;
    // As on SQLite, a floor first (one agent per instance), then the fleet; then the same fleet
    // again on the same instances, whose base is what the first one left.
    let mut out = vec![
        run_fleet(
            "PostgreSQL floor",
            &world,
            &instances,
            &admin,
            &tokens,
            2,
            Duration::ZERO,
        )
        .await,
    ];
    for round in 0..env_num("FLEET_PG_ROUNDS", 2) {
        let label = if round == 0 {
            "PostgreSQL, 2 instances"
        } else {
            "PostgreSQL, 2 instances, again"
        };
        let o = run_fleet(label, &world, &instances, &admin, &tokens, 2 * per, settle).await;
        print_one(&o);
        out.push(o);
    }
    drop(instances);
    drop(world);
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    Some(out)
}

fn print_one(o: &Outcome) {
    println!(
        "  {} × {}: parked after {}, push answered after {}, wake p50 {} max {}, load {}",
        o.label,
        o.agents,
        fmt_dur(o.connect),
        fmt_dur(o.push),
        fmt_dur(o.wake.clone().p50()),
        fmt_dur(o.wake.clone().max()),
        o.load
    );
}

fn per_poll(base: u64, parked: u64, agents: usize) -> String {
    let grew = parked.saturating_sub(base);
    format!("{:.1} KiB", grew as f64 / 1024.0 / agents as f64)
}

fn main() {
    support::install_cleanup();
    fyvault::vault::limits::raise_nofile().expect("raise the open-file limit");
    print_header(
        "fleet",
        "agents' long-polls held by one SQLite instance and two PostgreSQL instances, one push wakes them all",
    );
    let settle = Duration::from_secs(env_num("FLEET_SETTLE_SECS", 60));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut outcomes = rt.block_on(sqlite_runs(settle));
    if let Ok(base) = std::env::var("FYVAULT_TEST_POSTGRES") {
        let per = env_num("FLEET_PG_PER_INSTANCE", 7500) as usize;
        if let Some(o) = rt.block_on(pg_run(base.trim(), per, settle)) {
            outcomes.extend(o);
        }
    } else {
        println!(
            "SKIPPED PostgreSQL fleet: set FYVAULT_TEST_POSTGRES (eval \"$(scripts/pg-test-setup)\")"
        );
    }

    let mut table = Table::new(
        "fleet: one push wakes every parked agent",
        &[
            "setup",
            "agents",
            "connect all",
            "wake p50",
            "p99",
            "max",
            "CPU wake",
            "CPU cycle",
            "RSS base",
            "parked",
            "per poll",
            "heap per poll",
            "after",
            "heap in use base → after",
            "fds",
            "threads",
            "load",
        ],
    );
    let mut report = Report::new("fleet");
    let mut rows = Vec::new();
    for o in &mut outcomes {
        table.row(vec![
            o.label.clone(),
            o.agents.to_string(),
            fmt_dur(o.connect),
            fmt_dur(o.wake.p50()),
            fmt_dur(o.wake.p99()),
            fmt_dur(o.wake.max()),
            fmt_dur(o.cpu_wake),
            fmt_dur(o.cpu_cycle),
            fmt_mb(o.rss_base),
            fmt_mb(o.rss_parked),
            per_poll(o.rss_base, o.rss_parked, o.agents),
            per_poll(o.heap_base, o.heap_parked, o.agents),
            format!(
                "{} ({:+.0} %)",
                fmt_mb(o.rss_after),
                (o.rss_after as f64 / o.rss_base.max(1) as f64 - 1.0) * 100.0
            ),
            format!("{} → {}", fmt_mb(o.heap_base), fmt_mb(o.heap_after)),
            o.fds_parked.to_string(),
            format!("{} / {}", o.threads_parked, o.threads_wake),
            o.load.clone(),
        ]);
        rows.push(json!({
            "setup": o.label,
            "agents": o.agents,
            "connect_ms": o.connect.as_secs_f64() * 1e3,
            "wake": o.wake.json(),
            "cpu_wake_ms": o.cpu_wake.as_secs_f64() * 1e3,
            "cpu_cycle_ms": o.cpu_cycle.as_secs_f64() * 1e3,
            "push_ms": o.push.as_secs_f64() * 1e3,
            "rss_base_bytes": o.rss_base,
            "rss_parked_bytes": o.rss_parked,
            "rss_after_bytes": o.rss_after,
            "heap_in_use_base_bytes": o.heap_base,
            "heap_in_use_parked_bytes": o.heap_parked,
            "heap_in_use_after_bytes": o.heap_after,
            "settle_s": settle.as_secs(),
            "fds_parked": o.fds_parked,
            "threads_parked": o.threads_parked,
            "threads_after_wake": o.threads_wake,
            "loadavg": o.load,
        }));
    }
    table.print();
    println!(
        "threads: parked / right after the wake. RSS after: {} s after the fleet disconnected \
         (against RSS base). Heap in use: glibc's live allocations, same moments. \
         Heap per poll: live heap allocations (glibc's mallinfo2) per parked poll. \
         Wake: from the push to each answer, as the simulated agents saw it (they share the 2 CPUs \
         with the vault).",
        settle.as_secs()
    );
    report.set("fleets", Value::Array(rows));
    report.write();
}
