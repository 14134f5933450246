//! `cargo bench --bench vault`: the vault under load — pushes/s with 8 concurrent providers, and
//! the time one push takes to reach 1,000 waiting long-poll clients.
//!
//! The vault runs in this process on a runtime of its own (2 workers, as `fyvault server`),
//! with the SQLite store in a temp dir, so the benchmark can see how many long-polls it holds.
//! Clients use the product's `VaultClient` (reqwest, HTTP/1.1 keep-alive) on another runtime.
//!
//! Baselines in the same run: an authenticated read (`GET …/public-key`) by the same 8
//! providers (the HTTP + auth floor of a push), and one long-poll client instead of 1,000.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fyvault::client::VaultClient;
use fyvault::vault::store::sqlite::SqliteStore;
use fyvault::vault::{ServerConfig, ServerHandle};
use serde_json::json;

use support::report::{print_header, us};
use support::world::{World, open_tempdir, value64};
use support::{Report, Samples, Table, fmt_dur, fmt_rate};

const PROVIDERS: usize = 8;
const PUSH_ROUNDS: usize = 3;
const PUSH_DURATION: Duration = Duration::from_secs(3);
const NAMES_PER_PROVIDER: usize = 20;
const WAITERS: usize = 1000;
const FANOUT_ROUNDS: usize = 5;

/// `clients` each run `op` back to back for `duration`; returns operations per second.
async fn load<F, Fut>(clients: usize, duration: Duration, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (op, done, stop) = (op.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(c, i).await;
                    i += 1;
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
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Arms `n` long-polls at `since`, waits until the vault holds them all, pushes once, and
/// returns (push latency, per-client time from the push's answer to the long-poll's answer).
async fn fanout(
    world: &World,
    server: &ServerHandle,
    n: usize,
    since: u64,
    round: u64,
) -> (Duration, Samples, u64) {
    let org = world.org.clone();
    let env = world.env.clone();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, org, env) = (world.agent_client.clone(), org.clone(), env.clone());
            tokio::spawn(async move {
                let resp = client.sync(&org, &env, since, 60).await.expect("long-poll");
                (Instant::now(), resp.revision)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.held_long_polls(&org, &env) < n {
        assert!(
            Instant::now() < deadline,
            "the vault never held {n} long-polls"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = Instant::now();
    world.push("FANOUT_KEY", &value64(round)).await;
    let answered = Instant::now();
    let mut reach = Samples::with_capacity(n);
    let mut revision = since;
    for t in tasks {
        let (at, rev) = t.await.unwrap();
        assert!(rev > since, "a long-poll answered without the push");
        revision = revision.max(rev);
        reach.push(at.saturating_duration_since(answered));
    }
    (answered - sent, reach, revision)
}

fn main() {
    support::install_cleanup();
    print_header(
        "vault",
        "pushes/s with 8 providers; one push reaching 1,000 long-polls",
    );

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = open_tempdir("fyvault-bench-vault-");
    let data_dir = dir.path().join("vault");
    let (server, admin_token) = server_rt.block_on(async {
        let store = SqliteStore::open(&data_dir).expect("open the store");
        let issued = fyvault::vault::bootstrap_admin_token(&store, "bench", "bench")
            .await
            .unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let handle =
            fyvault::vault::start_with_store(ServerConfig::new(&data_dir, listen), Arc::new(store))
                .await
                .unwrap();
        (handle, issued.token)
    });
    let url = server.url();
    let world = client_rt.block_on(World::on(
        open_tempdir("fyvault-bench-vault-w-"),
        None,
        &url,
        admin_token,
    ));

    // ---- pushes/s ---------------------------------------------------------------------------
    let providers: Arc<Vec<(VaultClient, String)>> = Arc::new(client_rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..PROVIDERS {
            v.push(world.new_provider(&format!("p{i}")).await);
        }
        v
    }));
    let (org, env) = (world.org.clone(), world.env.clone());
    let push_op = {
        let (providers, org, env) = (providers.clone(), org.clone(), env.clone());
        move |c: usize, i: u64| {
            let (providers, org, env) = (providers.clone(), org.clone(), env.clone());
            async move {
                let (client, id) = &providers[c];
                let req = fyvault::client::WriteRequest {
                    secret_name: format!("P{c}_S{}", i as usize % NAMES_PER_PROVIDER),
                    environment: env,
                    value: fyvault::client::WriteValue::Plaintext(fyvault::secret::Secret::new(
                        value64(i),
                    )),
                    grace_period_seconds: None,
                    idempotency_key: None,
                };
                client.push(&org, id, &req).await.expect("push");
            }
        }
    };
    let read_op = {
        let (providers, org, env) = (providers.clone(), org.clone(), env.clone());
        move |c: usize, _i: u64| {
            let (providers, org, env) = (providers.clone(), org.clone(), env.clone());
            async move {
                providers[c]
                    .0
                    .public_key(&org, &env)
                    .await
                    .expect("public key");
            }
        }
    };
    // One provider, sequential: the latency of one push.
    let mut push_lat = Samples::new();
    let mut push_rates = Vec::new();
    let mut read_rates = Vec::new();
    let only_fanout = std::env::var_os("VAULT_ONLY_FANOUT").is_some();
    client_rt.block_on(async {
        if only_fanout {
            push_lat.push(Duration::ZERO);
            push_rates.push(0.0);
            read_rates.push(0.0);
            return;
        }
        // Warm-up: creates the names.
        load(PROVIDERS, Duration::from_millis(500), push_op.clone()).await;
        for round in 0..PUSH_ROUNDS {
            push_rates.push(load(PROVIDERS, PUSH_DURATION, push_op.clone()).await);
            read_rates.push(load(PROVIDERS, PUSH_DURATION, read_op.clone()).await);
            for i in 0..200u64 {
                let t = Instant::now();
                push_op(0, i).await;
                push_lat.push(t.elapsed());
            }
            eprint!("\rpush round {}/{PUSH_ROUNDS}", round + 1);
        }
        eprintln!();
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let push_rate = median(&mut push_rates);
    let read_rate = median(&mut read_rates);

    // ---- fan-out ------------------------------------------------------------------------------
    let mut since = client_rt.block_on(async {
        world.push("FANOUT_KEY", &value64(0)).await;
        world
            .agent_client
            .sync(&world.org, &world.env, 0, 0)
            .await
            .unwrap()
            .revision
    });
    let mut many = Samples::new();
    let mut many_max = Samples::new();
    let mut one = Samples::new();
    let mut fan_push = Samples::new();
    for round in 0..FANOUT_ROUNDS {
        let (push, mut reach, rev) = client_rt.block_on(fanout(
            &world,
            &server,
            WAITERS,
            since,
            round as u64 * 2 + 1,
        ));
        since = rev;
        fan_push.push(push);
        many_max.push(reach.max());
        many.extend(&reach);
        let (_, reach1, rev) =
            client_rt.block_on(fanout(&world, &server, 1, since, round as u64 * 2 + 2));
        since = rev;
        one.extend(&reach1);
        eprint!("\rfan-out round {}/{FANOUT_ROUNDS}", round + 1);
    }
    eprintln!();

    let mut t = Table::new(
        "vault (SQLite, in-process server, loopback HTTP)",
        &["measure", "fyvault", "baseline", "target"],
    );
    t.row(vec![
        format!("pushes/s, {PROVIDERS} concurrent providers"),
        fmt_rate(push_rate),
        format!("{} (authenticated GET public-key)", fmt_rate(read_rate)),
        "≥ 1,000/s".into(),
    ]);
    t.row(vec![
        "one push, one provider: p50 / p99".into(),
        format!("{} / {}", fmt_dur(push_lat.p50()), fmt_dur(push_lat.p99())),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("push answered → all {WAITERS} long-polls answered: p50 / max of rounds"),
        format!("{} / {}", fmt_dur(many_max.p50()), fmt_dur(many_max.max())),
        format!(
            "{} / {} (1 long-poll)",
            fmt_dur(one.p50()),
            fmt_dur(one.max())
        ),
        "≤ 200 ms".into(),
    ]);
    t.row(vec![
        format!("push answered → a long-poll answered, p50 over {WAITERS}×{FANOUT_ROUNDS}"),
        fmt_dur(many.p50()),
        String::new(),
        String::new(),
    ]);
    t.print();

    let mut report = Report::new("vault");
    report.set(
        "pushes",
        json!({
            "providers": PROVIDERS,
            "pushes_per_s": push_rate.round(),
            "rounds_pushes_per_s": push_rates.iter().map(|x| x.round()).collect::<Vec<_>>(),
            "baseline_authenticated_reads_per_s": read_rate.round(),
            "one_provider_push": push_lat.json(),
        }),
    );
    report.set(
        "fanout",
        json!({
            "waiters": WAITERS,
            "rounds": FANOUT_ROUNDS,
            "all_reached_us": many_max.json(),
            "each_reached_us": many.json(),
            "push_latency_us": fan_push.json(),
            "baseline_one_waiter_us": one.json(),
            "all_reached_p50_ms": us(many_max.p50()) / 1000.0,
        }),
    );
    report.write();
    drop(world);
    server_rt.block_on(server.shutdown());
}
