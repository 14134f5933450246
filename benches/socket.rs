//! `cargo bench --bench socket`: `GET /v1/secrets/NAME` over the agent's Unix socket with
//! keep-alive — latency for one client, requests/s for 16 concurrent clients.
//!
//! The agent is the real `fyvault agent` binary (subprocess) synced from a real vault. The
//! baseline, measured in the same run with the same client, is a bare hyper HTTP/1.1 server on
//! a Unix socket in a subprocess of its own (this benchmark's binary re-executed), answering
//! every request with a constant 64-byte body: the floor of HTTP over a Unix socket here.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

use support::report::{print_header, us};
use support::world::{AgentProc, World, open_tempdir, value64};
use support::{Report, Samples, Table, cleanup, fmt_dur, fmt_rate};

const SECRET: &str = "STRIPE_SK";
const ROUNDS: usize = 5;
const ONE_CLIENT_REQUESTS: usize = 4000;
const MANY: usize = 16;
const MANY_DURATION: Duration = Duration::from_secs(2);
const BASELINE_ENV: &str = "FYVAULT_BENCH_BASELINE_SOCKET";

/// The baseline server: hyper, HTTP/1.1, keep-alive, 64 bytes for every request.
fn baseline_server(path: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
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
    fn start(dir: &Path) -> Baseline {
        let socket = dir.join("baseline.sock");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(BASELINE_ENV, &socket);
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

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(sock: &Path) -> Sender {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

/// One keep-alive request; returns the body length.
async fn get(tx: &mut Sender, path: &str) -> usize {
    tx.ready().await.expect("connection ready");
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "fyvault")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.expect("request");
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
    let baseline = Baseline::start(dir.path());
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

    let servers: [(&str, &str, &Path); 2] = [
        ("fyvault", "fyvault agent", agent.socket.as_path()),
        (
            "baseline",
            "bare hyper (baseline)",
            baseline.socket.as_path(),
        ),
    ];
    let mut lat: Vec<Samples> = vec![Samples::new(), Samples::new()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (i, (_, _, sock)) in servers.iter().enumerate() {
            single.block_on(one_client(
                sock,
                &secret_path,
                ONE_CLIENT_REQUESTS,
                &mut lat[i],
            ));
            let (n, wall) = multi.block_on(many_clients(sock, &secret_path, MANY, MANY_DURATION));
            rate[i].push(n as f64 / wall.as_secs_f64());
        }
        eprint!("\rround {}/{ROUNDS}", round + 1);
    }
    eprintln!();

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
            "target",
        ],
    );
    let mut rows = Vec::new();
    for (i, (key, label, _)) in servers.iter().enumerate() {
        let r = median(&mut rate[i]);
        let (p50, p99) = (lat[i].p50(), lat[i].p99());
        table.row(vec![
            (*label).into(),
            fmt_dur(p50),
            fmt_dur(p99),
            fmt_rate(r),
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
        }));
    }
    table.print();
    println!(
        "reference (issue 7): AWS Secrets Manager Agent, TCP loopback: 45 µs p50, 43,000/s with 16"
    );

    let mut report = Report::new("socket");
    report.set("rounds", json!(ROUNDS));
    report.set("results", json!(rows));
    report.write();
    drop(baseline);
    drop(agent);
}
