//! `cargo bench --bench rotation`: 200 rotations; the time from the provider's PATCH returning
//! until the new value is readable through the mount and through the socket.
//!
//! Real vault (`fyvault server` subprocess) and real agent (`fyvault agent` subprocess,
//! long-polling, FUSE mounted). A poller thread reads the file and asks the socket every
//! 100 µs until both show the new value. The baseline, in the same run, is a bare long-poll
//! client in this process: the time from the PATCH returning until the vault's answer reaches
//! it (the floor any agent pays before it can even decrypt).

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use support::report::print_header;
use support::uds::{self, Sender, connect};
use support::world::{AgentProc, World, open_tempdir, value64};
use support::{Report, Samples, Table, fmt_dur};

const SECRET: &str = "STRIPE_SK";
const ROTATIONS: u64 = 200;
const POLL_EVERY: Duration = Duration::from_micros(100);
const GIVE_UP: Duration = Duration::from_secs(30);

async fn get(tx: &mut Sender, path: &str) -> Vec<u8> {
    uds::get_body(tx, path).await
}

/// What the poller is asked: watch for `value`, starting at `since` (the PATCH's return).
struct Watch {
    value: Vec<u8>,
    since: Instant,
}

/// Per rotation: (via mount, via socket) delays after the PATCH returned.
fn poller(
    file: PathBuf,
    socket: PathBuf,
    jobs: mpsc::Receiver<Watch>,
    out: mpsc::Sender<(Duration, Duration)>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tx = connect(&socket).await;
        let path = format!("/v1/secrets/{SECRET}");
        while let Ok(w) = jobs.recv() {
            let (mut fuse, mut sock) = (None, None);
            while fuse.is_none() || sock.is_none() {
                if fuse.is_none() && std::fs::read(&file).ok().as_deref() == Some(&w.value[..]) {
                    fuse = Some(w.since.elapsed());
                }
                if sock.is_none() && get(&mut tx, &path).await == w.value {
                    sock = Some(w.since.elapsed());
                }
                assert!(w.since.elapsed() < GIVE_UP, "the new value never showed");
                std::thread::sleep(POLL_EVERY);
            }
            out.send((fuse.unwrap(), sock.unwrap())).unwrap();
        }
    });
}

fn main() {
    support::install_cleanup();
    support::cleanup::require_fuse();
    print_header(
        "rotation",
        "PATCH returned → new value readable (mount and socket)",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(World::new());
    rt.block_on(world.push(SECRET, &value64(0)));
    let dir = open_tempdir("fyvault-bench-rot-");
    let config = world.agent_config(dir.path(), true, 30);
    let agent = AgentProc::start(dir.path(), &config, "warn");
    let file = agent.mount.join(SECRET);
    assert_eq!(
        std::fs::read(&file).expect("the mount serves the secret"),
        value64(0)
    );

    let (job_tx, job_rx) = mpsc::channel();
    let (res_tx, res_rx) = mpsc::channel();
    let poll = {
        let (file, socket) = (file.clone(), agent.socket.clone());
        std::thread::spawn(move || poller(file, socket, job_rx, res_tx))
    };

    let mut revision = rt.block_on(async {
        world
            .agent_client
            .sync(&world.org, &world.env, 0, 0)
            .await
            .unwrap()
            .revision
    });
    let (mut fuse, mut sock, mut base, mut patch) = (
        Samples::new(),
        Samples::new(),
        Samples::new(),
        Samples::new(),
    );
    for i in 1..=ROTATIONS {
        let value = value64(i);
        let (returned, sent, waiter_at, rev) = rt.block_on(async {
            // The baseline: a bare long-poll waiting for this change.
            let (client, org, env) = (
                world.agent_client.clone(),
                world.org.clone(),
                world.env.clone(),
            );
            let waiter = tokio::spawn(async move {
                let r = client.sync(&org, &env, revision, 60).await.unwrap();
                (Instant::now(), r.revision)
            });
            // Let the long-poll reach the vault (it is held there until the change).
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sent = Instant::now();
            world.rotate(SECRET, &value, 300).await;
            let returned = Instant::now();
            let (at, rev) = waiter.await.unwrap();
            (returned, sent, at, rev)
        });
        revision = rev;
        patch.push(returned - sent);
        base.push(waiter_at.saturating_duration_since(returned));
        job_tx
            .send(Watch {
                value,
                since: returned,
            })
            .unwrap();
        let (f, s) = res_rx.recv().unwrap();
        fuse.push(f);
        sock.push(s);
        if i % 20 == 0 {
            eprint!("\r{i}/{ROTATIONS} rotations");
        }
    }
    eprintln!();
    drop(job_tx);
    poll.join().unwrap();

    let mut t = Table::new(
        "rotation: PATCH returned → new value readable (200 rotations)",
        &["path", "p50", "p99", "max", "target"],
    );
    let mut row = |label: &str, s: &mut Samples, target: &str| {
        t.row(vec![
            label.into(),
            fmt_dur(s.p50()),
            fmt_dur(s.p99()),
            fmt_dur(s.max()),
            target.into(),
        ])
    };
    row("through the mount", &mut fuse, "p50 ≤ 20 ms, p99 ≤ 100 ms");
    row("through the socket", &mut sock, "p50 ≤ 20 ms, p99 ≤ 100 ms");
    row("baseline: bare long-poll answered", &mut base, "");
    row("(the PATCH itself, sent → returned)", &mut patch, "");
    t.print();
    println!(
        "poll interval {} (resolution of the figures above)",
        fmt_dur(POLL_EVERY)
    );

    let mut report = Report::new("rotation");
    report.set("rotations", json!(ROTATIONS));
    report.set("poll_interval_us", json!(POLL_EVERY.as_micros() as u64));
    report.set("mount", fuse.json());
    report.set("socket", sock.json());
    report.set("baseline_long_poll", base.json());
    report.set("patch", patch.json());
    report.write();
    drop(agent);
    drop(world);
}
