//! `cargo bench --bench socket`: `GET /v1/secrets/NAME` over the agent's Unix socket with
//! keep-alive — latency for one client, requests/s for 16 concurrent clients.
//!
//! The agent is the real `fyvault agent` binary (subprocess) synced from a real vault. The
//! baseline, measured in the same run with the same client, is a bare hyper HTTP/1.1 server on
//! a Unix socket in a subprocess of its own (this benchmark's binary re-executed), answering
//! every request with a constant 64-byte body: the floor of HTTP over a Unix socket here.
//!
//! Also from the separate-process reader (`support/reader.c`, keep-alive GETs in C, 1 and 16
//! connections), against the agent and the bare hyper server in interleaved rounds: the
//! figures `scripts/bench` summarizes. `FYVAULT_BENCH_QUICK=1`: 2 rounds, shorter, no SDKs.
//!
//! Then the SDKs (`support::sdk`): one Node and one Python process each doing sequential
//! `get`s for 3 s through the SDK, beside the same language's raw HTTP client on the same
//! socket, and the Rust hyper client's p50 from above.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

use support::reader::{Reader, Run};
use support::report::{SummaryRow, cpu_ns, loadavg, print_header, quick, summarize, us};
use support::uds::{self, Sender, connect};
use support::world::{AgentProc, World, open_tempdir, value64};
use support::{Report, Samples, Table, cleanup, fmt_dur, fmt_rate};

const SECRET: &str = "STRIPE_SK";
const ROUNDS: usize = 5;
const ONE_CLIENT_REQUESTS: usize = 4000;
const MANY: usize = 16;
const MANY_DURATION: Duration = Duration::from_secs(2);
const SDK_DURATION: Duration = Duration::from_secs(3);
const BASELINE_ENV: &str = "FYVAULT_BENCH_BASELINE_SOCKET";

/// The baseline server: hyper, HTTP/1.1, keep-alive, 64 bytes for every request.
fn baseline_server(path: &Path) {
    let rt = if std::env::var_os("FYVAULT_BENCH_BASELINE_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    if std::env::var_os("FYVAULT_BENCH_BASELINE_AXUM").is_some() {
        rt.block_on(async {
            let listener = tokio::net::UnixListener::bind(path).unwrap();
            let body = Bytes::from(value64(1));
            let app = axum::Router::new().route(
                "/v1/secrets/{name}",
                axum::routing::get(move || {
                    let body = body.clone();
                    async move { body }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
        return;
    }
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let body = Bytes::from(value64(1));
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/plain; charset=utf-8")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

struct Baseline {
    child: Child,
    socket: PathBuf,
}

impl Baseline {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Baseline {
    fn start(dir: &Path, axum: bool) -> Baseline {
        Self::start_variant(dir, axum, false)
    }

    fn start_variant(dir: &Path, axum: bool, current_thread: bool) -> Baseline {
        let socket = dir.join(format!("baseline-{axum}-{current_thread}.sock"));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(BASELINE_ENV, &socket);
        if axum {
            cmd.env("FYVAULT_BENCH_BASELINE_AXUM", "1");
        }
        if current_thread {
            cmd.env("FYVAULT_BENCH_BASELINE_CURRENT_THREAD", "1");
        } else {
            cmd.env_remove("FYVAULT_BENCH_BASELINE_CURRENT_THREAD");
        }
        cleanup::clean_signal_mask(&mut cmd);
        let child = cmd.spawn().expect("start the baseline server");
        cleanup::register_child(child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the baseline server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Baseline { child, socket }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        cleanup::stop_pid(self.child.id(), Duration::from_secs(5));
        cleanup::unregister_child(self.child.id());
    }
}

/// One keep-alive request; returns the body length.
async fn get(tx: &mut Sender, path: &str) -> usize {
    let resp = uds::get(tx, path).await;
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

async fn one_client(sock: &Path, path: &str, n: usize, out: &mut Samples) {
    let mut tx = connect(sock).await;
    for _ in 0..20 {
        get(&mut tx, path).await;
    }
    for _ in 0..n {
        let t = Instant::now();
        let len = get(&mut tx, path).await;
        out.push(t.elapsed());
        assert_eq!(len, 64);
    }
}

/// `clients` connections, each sending requests back to back for `duration`; returns (requests,
/// wall time).
async fn many_clients(
    sock: &Path,
    path: &str,
    clients: usize,
    duration: Duration,
) -> (u64, Duration) {
    let mut senders = Vec::new();
    for _ in 0..clients {
        let mut tx = connect(sock).await;
        get(&mut tx, path).await;
        senders.push(tx);
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut tx| {
            let (done, stop, path) = (done.clone(), stop.clone(), path.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(get(&mut tx, &path).await, 64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

fn main() {
    if let Some(path) = std::env::var_os(BASELINE_ENV) {
        baseline_server(Path::new(&path));
        return;
    }
    support::install_cleanup();
    print_header(
        "socket",
        "GET /v1/secrets/NAME over the Unix socket, keep-alive",
    );

    let setup = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let world = setup.block_on(World::new());
    setup.block_on(world.push(SECRET, &value64(1)));
    let dir = open_tempdir("fyvault-bench-socket-");
    let config = world.agent_config(dir.path(), false, 30);
    let agent = AgentProc::start(dir.path(), &config, "warn");
    let baseline = Baseline::start(dir.path(), false);
    let axum_base =
        std::env::var_os("SOCKET_AXUM_BASELINE").map(|_| Baseline::start(dir.path(), true));
    let ct_base = std::env::var_os("SOCKET_CURRENT_THREAD_BASELINE")
        .map(|_| Baseline::start_variant(dir.path(), false, true));
    let secret_path = format!("/v1/secrets/{SECRET}");

    // Client runtimes: one thread for the single client, two for the 16.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Profiling aid: `SOCKET_PROFILE_SECONDS=N` only drives one client against the agent for N
    // seconds (attach `perf record -p PID` to the pid printed).
    if let Some(secs) = std::env::var("SOCKET_PROFILE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let (pid, sock) = if std::env::var_os("SOCKET_PROFILE_BASELINE").is_some() {
            (baseline.pid(), baseline.socket.as_path())
        } else {
            (agent.pid(), agent.socket.as_path())
        };
        eprintln!("agent pid {pid}");
        let until = Instant::now() + Duration::from_secs(secs);
        let mut s = Samples::new();
        while Instant::now() < until {
            single.block_on(one_client(sock, &secret_path, 10_000, &mut s));
        }
        eprintln!("p50 {}", fmt_dur(s.p50()));
        return;
    }
    let mut servers: Vec<(&str, &str, &Path, u32)> = vec![
        (
            "fyvault",
            "fyvault agent",
            agent.socket.as_path(),
            agent.pid(),
        ),
        (
            "baseline",
            "bare hyper (baseline)",
            baseline.socket.as_path(),
            baseline.pid(),
        ),
    ];
    if let Some(a) = &axum_base {
        servers.push((
            "axum",
            "axum::serve, constant handler",
            a.socket.as_path(),
            a.pid(),
        ));
    }
    if let Some(a) = &ct_base {
        servers.push((
            "baseline_current_thread",
            "bare hyper, current_thread runtime",
            a.socket.as_path(),
            a.pid(),
        ));
    }
    let rounds = if quick() { 2 } else { ROUNDS };
    let mut lat: Vec<Samples> = servers.iter().map(|_| Samples::new()).collect();
    let mut rate: Vec<Vec<f64>> = servers.iter().map(|_| Vec::new()).collect();
    // Server CPU per request: (ns, requests) for one client and for 16.
    let mut cpu1: Vec<(u64, u64)> = servers.iter().map(|_| (0, 0)).collect();
    let mut cpu16: Vec<(u64, u64)> = servers.iter().map(|_| (0, 0)).collect();
    for round in 0..rounds {
        for (i, (_, _, sock, pid)) in servers.iter().enumerate() {
            let c0 = cpu_ns(*pid);
            single.block_on(one_client(
                sock,
                &secret_path,
                ONE_CLIENT_REQUESTS,
                &mut lat[i],
            ));
            let c1 = cpu_ns(*pid);
            // +20: the warm-up requests of `one_client`.
            cpu1[i].0 += c1 - c0;
            cpu1[i].1 += ONE_CLIENT_REQUESTS as u64 + 20;
            let (n, wall) = multi.block_on(many_clients(sock, &secret_path, MANY, MANY_DURATION));
            rate[i].push(n as f64 / wall.as_secs_f64());
            cpu16[i].0 += cpu_ns(*pid) - c1;
            cpu16[i].1 += n + MANY as u64;
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();

    // The separate-process C reader: agent and bare hyper, 1 and 16 connections, interleaved.
    let reader = Reader::build();
    let secs = if quick() { 0.5 } else { 1.5 };
    let load_start = loadavg();
    let mut c_runs: Vec<[Vec<Run>; 2]> = vec![Default::default(), Default::default()];
    for _ in 0..rounds {
        for (i, (_, _, sock, _)) in servers.iter().take(2).enumerate() {
            for (j, n) in [1usize, MANY].into_iter().enumerate() {
                let r = reader.http(sock, &secret_path, secs, n);
                assert_eq!(r.bytes, 64);
                c_runs[i][j].push(r);
            }
        }
    }
    let med = |v: &[Run], f: &dyn Fn(&Run) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    let p50 = |v: &[Run]| Duration::from_secs_f64(med(v, &|r| r.p50.as_secs_f64()));
    let p99 = |v: &[Run]| Duration::from_secs_f64(med(v, &|r| r.p99.as_secs_f64()));
    let ops = |v: &[Run]| med(v, &|r| r.ops_per_s);
    let mut c_table = Table::new(
        &format!(
            "socket: GET /v1/secrets/NAME from the C reader in its own process (median of \
             {rounds} rounds of {secs} s; load {load_start} → {})",
            loadavg()
        ),
        &[
            "server",
            "1 connection p50",
            "p99",
            "16 connections",
            "p50",
            "p99",
        ],
    );
    for (i, label) in ["fyvault agent", "bare hyper (floor)"].iter().enumerate() {
        let [one, many] = &c_runs[i];
        c_table.row(vec![
            (*label).into(),
            fmt_dur(p50(one)),
            fmt_dur(p99(one)),
            fmt_rate(ops(many)),
            fmt_dur(p50(many)),
            fmt_dur(p99(many)),
        ]);
    }
    c_table.print();
    let ([fy1, fy16], [hy1, hy16]) = (&c_runs[0], &c_runs[1]);
    let summary = vec![
        SummaryRow::new(
            "socket GET, 1 client (own process, keep-alive), p50 (p99)",
            format!("{} ({})", fmt_dur(p50(fy1)), fmt_dur(p99(fy1))),
        )
        .floor(
            format!("bare hyper {} ({})", fmt_dur(p50(hy1)), fmt_dur(p99(hy1))),
            p50(fy1).as_secs_f64() / p50(hy1).as_secs_f64(),
        )
        .target("p50 ≤ 30 µs", p50(fy1) <= Duration::from_micros(30)),
        SummaryRow::new("socket GET, 16 clients, requests/s", fmt_rate(ops(fy16)))
            .floor(
                format!("bare hyper {}", fmt_rate(ops(hy16))),
                ops(fy16) / ops(hy16),
            )
            .target("≥ 60,000/s", ops(fy16) >= 60_000.0),
    ];

    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut table = Table::new(
        "socket: GET /v1/secrets/NAME (64-byte value), keep-alive",
        &[
            "server",
            "1 client p50",
            "1 client p99",
            "16 clients",
            "server CPU/request (1 client; 16)",
            "target",
        ],
    );
    let mut rows = Vec::new();
    for (i, (key, label, _, _)) in servers.iter().enumerate() {
        let r = median(&mut rate[i]);
        let (p50, p99) = (lat[i].p50(), lat[i].p99());
        let per = |(ns, n): (u64, u64)| Duration::from_nanos(ns / n.max(1));
        table.row(vec![
            (*label).into(),
            fmt_dur(p50),
            fmt_dur(p99),
            fmt_rate(r),
            format!("{}; {}", fmt_dur(per(cpu1[i])), fmt_dur(per(cpu16[i]))),
            if i == 0 {
                "p50 ≤ 30 µs; ≥ 60,000/s"
            } else {
                ""
            }
            .into(),
        ]);
        rows.push(json!({
            "server": key,
            "one_client": {"p50_us": us(p50), "p99_us": us(p99), "n": lat[i].len()},
            "clients_16_requests_per_s": r.round(),
            "clients_16_rounds": rate[i].iter().map(|x| x.round()).collect::<Vec<_>>(),
            "server_cpu_per_request_us": {
                "one_client": us(per(cpu1[i])),
                "clients_16": us(per(cpu16[i])),
            },
        }));
    }
    table.print();
    println!(
        "reference (issue 7): AWS Secrets Manager Agent, TCP loopback: 45 µs p50, 43,000/s with 16"
    );

    let sdk_runs = if quick() {
        Vec::new()
    } else {
        support::sdk::run_all(&agent.socket, SECRET, SDK_DURATION)
    };
    let mut sdk_table = Table::new(
        "socket: sequential GET /v1/secrets/NAME from SDKs, one client each (3 s)",
        &["client", "requests", "p50", "p99"],
    );
    sdk_table.row(vec![
        "Rust hyper client (the table above)".into(),
        lat[0].len().to_string(),
        fmt_dur(lat[0].p50()),
        fmt_dur(lat[0].p99()),
    ]);
    let mut sdk_rows = vec![json!({
        "client": "rust-hyper",
        "n": lat[0].len(),
        "p50_us": us(lat[0].p50()),
        "p99_us": us(lat[0].p99()),
    })];
    for r in &sdk_runs {
        sdk_table.row(vec![
            r.label.into(),
            r.n.to_string(),
            fmt_dur(r.p50),
            fmt_dur(r.p99),
        ]);
        sdk_rows.push(json!({"client": r.key, "n": r.n, "p50_us": us(r.p50), "p99_us": us(r.p99)}));
    }
    sdk_table.print();

    let mut report = Report::new("socket");
    report.set("rounds", json!(rounds));
    report.set("results", json!(rows));
    report.set("sdk", json!(sdk_rows));
    report.set(
        "c_reader",
        json!({
            "fyvault": {"p50_us": us(p50(fy1)), "p99_us": us(p99(fy1)), "clients_16_per_s": ops(fy16).round()},
            "bare_hyper": {"p50_us": us(p50(hy1)), "p99_us": us(p99(hy1)), "clients_16_per_s": ops(hy16).round()},
        }),
    );
    summarize(&mut report, &summary);
    report.write();
    drop(ct_base);
    drop(axum_base);
    drop(baseline);
    drop(agent);
}
