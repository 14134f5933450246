//! Access events end to end (issue 5, "How it is checked"): the real vault, the real agent, a
//! real mount. Reads through FUSE and the socket are counted exactly, with who read them; a
//! vault outage loses nothing; a SIGKILL while a batch is in flight counts nothing twice; a
//! denied read by another uid is a `denied` event; `fyvault audit` shows it all.
//!
//! (The spool's own damage and overflow cases are in `tests/spool_*.rs`.)

mod agent_support;
mod common_fuse;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_support::vault::{Log, VaultProc, World, spawn_logged};
use agent_support::{DEADLINE, as_nobody, eventually, fyvault, get, ship_all};
use common_fuse::{MountGuard, fuse_available};
use fyvault::agent::config;
use fyvault::agent::run::{self, Agent, AuditTuning, RunOptions};
use fyvault::agent::sync::SyncTiming;
use fyvault::api::{AccessVia, AuditQuery, AuditRecord};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

fn write_config(w: &World, vault_url: &str, mount: &Path, fuse: bool) -> PathBuf {
    let d = w.dir.path();
    let text = format!(
        "vault_url = \"{vault_url}\"\norg_id = \"{}\"\nenvironment = \"{}\"\n\
         token_file = \"{}\"\nkey_file = \"{}\"\nsocket = \"{}\"\nmount = \"{}\"\nfuse = {fuse}\n\
         state_dir = \"{}\"\nsync_wait_seconds = 2\ngroup = \"\"\n",
        w.org,
        w.env,
        w.token_file.display(),
        w.key_file.display(),
        w.socket().display(),
        mount.display(),
        d.join("state").display(),
    );
    let p = d.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// An in-process agent with a mount (when FUSE is here) and quick retries.
async fn start_agent(w: &World, mount: &Path, fuse: bool) -> (Agent, MountGuard) {
    let cfg = config::load(&write_config(w, &w.vault.url, mount, fuse)).unwrap();
    let options = RunOptions {
        timing: SyncTiming {
            retry_base: Duration::from_millis(50),
            retry_cap: Duration::from_millis(500),
            ..SyncTiming::default()
        },
        audit: AuditTuning {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..AuditTuning::default()
        },
        ..RunOptions::in_process()
    };
    let guard = MountGuard(mount.to_owned());
    let agent = tokio::time::timeout(DEADLINE, run::start(cfg, options))
        .await
        .expect("agent ready within the deadline")
        .unwrap();
    assert_eq!(agent.mount_path().is_some(), fuse);
    (agent, guard)
}

async fn records(w: &World, secret: &str) -> Vec<AuditRecord> {
    w.admin
        .audit(
            &w.org,
            &AuditQuery {
                secret: Some(secret.into()),
                limit: Some(10_000),
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap()
        .records
}

/// Sum of `count` over records matching `f`.
fn sum(rs: &[AuditRecord], f: impl Fn(&AuditRecord) -> bool) -> u64 {
    rs.iter()
        .filter(|r| f(r))
        .map(|r| r.count.unwrap_or(0))
        .sum()
}

fn accessed(rs: &[AuditRecord]) -> u64 {
    sum(rs, |r| r.action == "accessed")
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

/// `n` reads of `name` through the mount (a blocking loop off the runtime).
async fn fuse_reads(mount: &Path, name: &str, n: u64, want: &'static [u8]) {
    let file = mount.join(name);
    tokio::task::spawn_blocking(move || {
        for _ in 0..n {
            assert_eq!(std::fs::read(&file).unwrap(), want);
        }
    })
    .await
    .unwrap();
}

async fn socket_reads(sock: &Path, name: &str, n: u64) {
    for _ in 0..n {
        let a = get(sock, &format!("/v1/secrets/{name}")).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_and_socket_reads_are_counted_exactly_with_who_read_them() {
    let fuse = fuse_available("fuse_and_socket_reads_are_counted_exactly_with_who_read_them");
    let log = Log::default();
    let w = World::new("info", &log).await;
    const VALUE: &[u8] = b"audited-value";
    w.push("AUDITED_KEY", VALUE).await;
    let mount = w.dir.path().join("mnt");
    let (agent, _guard) = start_agent(&w, &mount, fuse).await;
    let sock = w.socket();
    const N: u64 = 137;
    const M: u64 = 59;
    if fuse {
        fuse_reads(&mount, "AUDITED_KEY", N, VALUE).await;
    }
    socket_reads(&sock, "AUDITED_KEY", M).await;
    // One read by another program (the CLI), and two refused reads by uid 65534.
    let s = sock.clone();
    let m = mount.clone();
    let (cli, denied_fuse, denied_socket) = tokio::task::spawn_blocking(move || {
        let cli = Command::new(fyvault())
            .args(["get", "AUDITED_KEY", "--socket"])
            .arg(&s)
            .output()
            .unwrap();
        let file = m.join("AUDITED_KEY");
        let denied_fuse = fuse
            .then(|| as_nobody(Path::new("/usr/bin/cat"), &[file.to_str().unwrap()], &[]))
            .flatten();
        let denied_socket = as_nobody(
            &fyvault(),
            &["get", "AUDITED_KEY", "--socket", s.to_str().unwrap()],
            &[],
        );
        (cli, denied_fuse, denied_socket)
    })
    .await
    .unwrap();
    assert_eq!(cli.stdout, VALUE);
    for d in [&denied_fuse, &denied_socket].into_iter().flatten() {
        assert!(
            !d.status.success() && d.stdout.is_empty(),
            "uid 65534 is refused"
        );
    }

    let me = canonical(&std::env::current_exe().unwrap());
    let cat = canonical(Path::new("/usr/bin/cat"));
    let bin = canonical(&fyvault());
    let fuse_n = if fuse { N } else { 0 };
    let by = |rs: &[AuditRecord], action: &str, via: AccessVia, uid: u32, exe: &str| {
        sum(rs, |r| {
            r.action == action
                && r.via == Some(via)
                && r.uid == Some(uid)
                && r.exe.as_deref() == Some(exe)
        })
    };
    let expected_denied = u64::from(denied_fuse.is_some()) + u64::from(denied_socket.is_some());
    let rs = eventually("every read in the vault's audit", || async {
        let rs = records(&w, "AUDITED_KEY").await;
        let done = accessed(&rs) == fuse_n + M + 1
            && sum(&rs, |r| r.action == "denied") == expected_denied;
        done.then_some(rs)
    })
    .await;
    assert_eq!(by(&rs, "accessed", AccessVia::Fuse, 0, &me), fuse_n);
    assert_eq!(by(&rs, "accessed", AccessVia::Socket, 0, &me), M);
    assert_eq!(by(&rs, "accessed", AccessVia::Socket, 0, &bin), 1);
    if denied_fuse.is_some() {
        assert_eq!(by(&rs, "denied", AccessVia::Fuse, 65534, &cat), 1);
    }
    if denied_socket.is_some() {
        assert_eq!(by(&rs, "denied", AccessVia::Socket, 65534, &bin), 1);
    }
    for r in rs
        .iter()
        .filter(|r| r.action == "accessed" || r.action == "denied")
    {
        assert_eq!(r.host.as_deref(), Some(host().as_str()), "{r:?}");
        assert_eq!(r.environment.as_deref(), Some(w.env.as_str()));
        assert!(r.pid.is_some() && !r.time.is_empty(), "{r:?}");
        assert!(r.actor.starts_with("agent:"), "{r:?}");
    }
    // Nothing more arrives later: the counts stay exact after a full flush.
    ship_all(&agent).await;
    let again = records(&w, "AUDITED_KEY").await;
    assert_eq!(accessed(&again), fuse_n + M + 1, "nothing counted twice");
    let h = get(&sock, "/v1/health").await.json();
    assert_eq!(h["audit"]["backlog_events"], 0, "{h}");
    assert!(h["audit"]["last_shipped_at"].is_string(), "{h}");
    assert_eq!(h["audit"]["dropped_total"], 0, "{h}");
    if fuse {
        assert_eq!(h["mount"]["state"], "mounted", "{h}");
        // The read path chosen at mount time (passthrough where the kernel offers it; see
        // tests/fuse_read_paths.rs for the choice itself).
        let read_path = h["mount"]["read_path"].as_str();
        assert!(
            matches!(read_path, Some("passthrough" | "direct_io")),
            "{h}"
        );
    }

    // `fyvault audit --secret NAME` shows who read it: host, process, uid, unit, count, time.
    let args: Vec<String> = vec![
        "audit".into(),
        "--url".into(),
        w.vault.url.clone(),
        "--token-file".into(),
        w.dir.path().join("admin.token").display().to_string(),
        "--org".into(),
        w.org.clone(),
        "--secret".into(),
        "AUDITED_KEY".into(),
    ];
    let out =
        tokio::task::spawn_blocking(move || Command::new(fyvault()).args(&args).output().unwrap())
            .await
            .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table.lines().next().unwrap();
    for col in ["TIME", "HOST", "UID", "EXE", "UNIT", "COUNT"] {
        assert!(header.contains(col), "{header}");
    }
    let row = |what: &str, exe: &str| {
        table
            .lines()
            .find(|l| l.contains(what) && l.contains(exe) && l.contains(&host()))
            .map(str::to_owned)
    };
    assert!(row("accessed (socket)", &me).is_some(), "{table}");
    assert!(row("accessed (socket)", &bin).is_some(), "{table}");
    if fuse {
        assert!(row("accessed (fuse)", &me).is_some(), "{table}");
    }
    if denied_fuse.is_some() {
        let r = row("denied (fuse)", &cat).expect("a denied row");
        assert!(r.contains(" 65534 "), "{r}");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_loses_no_event_and_counts_none_twice() {
    let fuse = fuse_available("vault_outage_loses_no_event_and_counts_none_twice");
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    const VALUE: &[u8] = b"outage-value";
    w.push("OUTAGE_KEY", VALUE).await;
    let mount = w.dir.path().join("mnt");
    let (agent, _guard) = start_agent(&w, &mount, fuse).await;
    let port = w.vault.port;
    w.vault.stop();
    const READS: u64 = 10_000;
    if fuse {
        fuse_reads(&mount, "OUTAGE_KEY", READS, VALUE).await;
    } else {
        socket_reads(&w.socket(), "OUTAGE_KEY", READS).await;
    }
    // Everything is on disk and shipping is failing.
    eventually("the events spooled while the vault is down", || async {
        let a = agent.state().auditor.stats();
        (a.pending_events == 0 && a.backlog_events > 0 && a.failing_since.is_some()).then_some(())
    })
    .await;
    let h = get(&w.socket(), "/v1/health").await.json();
    assert!(h["audit"]["failing_since"].is_string(), "{h}");
    assert!(h["audit"]["backlog_events"].as_u64().unwrap() > 0, "{h}");

    w.vault = {
        let (d, l) = (w.data_dir.clone(), log.clone());
        tokio::task::spawn_blocking(move || VaultProc::start(&d, port, "info", &l))
            .await
            .unwrap()
    };
    eventually("all 10,000 reads counted by the vault", || async {
        (accessed(&records(&w, "OUTAGE_KEY").await) == READS).then_some(())
    })
    .await;
    let out = agent
        .state()
        .auditor
        .flush(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(out.shipped_all);
    assert_eq!(
        accessed(&records(&w, "OUTAGE_KEY").await),
        READS,
        "none counted twice"
    );
    assert_eq!(agent.state().auditor.stats().dropped_total, 0);
    agent.shutdown().await.unwrap();
}

/// A TCP proxy in front of the vault that can withhold the vault's answers: the vault records
/// a batch, the agent never hears so.
struct Proxy {
    port: u16,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, hold_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let mut hold = hold_rx.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let requests = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if hold.wait_for(|h| !*h).await.is_err()
                            || cw.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                    requests.abort();
                });
            }
        });
        Proxy { port, hold, task }
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent binary; SIGKILLed on drop.
struct AgentProc(std::process::Child);

impl AgentProc {
    fn start(config: &Path, log: &Log) -> AgentProc {
        let mut cmd = Command::new(fyvault());
        cmd.arg("agent")
            .arg("--config")
            .arg(config)
            .env("FYVAULT_LOG", "info");
        AgentProc(spawn_logged(cmd, log).0)
    }

    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn health(sock: &Path) -> Option<serde_json::Value> {
    // A dead agent's socket file refuses connections until the next agent replaces it.
    drop(tokio::net::UnixStream::connect(sock).await.ok()?);
    let a = tokio::time::timeout(Duration::from_secs(5), get(sock, "/v1/health"))
        .await
        .ok()?;
    (a.status == 200).then(|| a.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_batch_is_in_flight_counts_nothing_twice() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("KEPT_KEY", b"kept").await;
    w.push("LAST_KEY", b"last").await;
    let proxy = Proxy::start(w.vault.port).await;
    let config = write_config(
        &w,
        &format!("http://127.0.0.1:{}", proxy.port),
        &w.dir.path().join("mnt"),
        false,
    );
    let sock = w.socket();
    let agent_log = Log::default();
    let mut agent = AgentProc::start(&config, &agent_log);
    eventually("the agent to be ready", || async {
        (health(&sock).await?["status"] == "ready").then_some(())
    })
    .await;

    // Phase 1: shipped and acknowledged.
    const N1: u64 = 40;
    socket_reads(&sock, "KEPT_KEY", N1).await;
    eventually("phase 1 counted", || async {
        (accessed(&records(&w, "KEPT_KEY").await) == N1).then_some(())
    })
    .await;

    // Phase 2: the vault records the batch, its acknowledgement never reaches the agent.
    proxy.hold(true);
    const N2: u64 = 25;
    socket_reads(&sock, "KEPT_KEY", N2).await;
    eventually("phase 2 recorded by the vault", || async {
        (accessed(&records(&w, "KEPT_KEY").await) == N1 + N2).then_some(())
    })
    .await;
    let h = health(&sock).await.unwrap();
    assert!(
        h["audit"]["backlog_events"].as_u64().unwrap() > 0,
        "the batch is unacknowledged on the agent's side: {h}"
    );
    // Phase 3: reads just before the kill (only these may be lost: the documented window).
    const N3: u64 = 10;
    socket_reads(&sock, "LAST_KEY", N3).await;
    agent.kill9();
    proxy.hold(false);

    let mut agent = AgentProc::start(&config, &agent_log);
    eventually("the restarted agent to ship its spool", || async {
        let h = health(&sock).await?;
        let a = &h["audit"];
        (h["status"] == "ready" && a["backlog_events"] == 0 && a["pending_events"] == 0)
            .then_some(())
    })
    .await;
    let kept = accessed(&records(&w, "KEPT_KEY").await);
    assert_eq!(kept, N1 + N2, "the re-sent batch is counted once");
    let last = accessed(&records(&w, "LAST_KEY").await);
    assert!(
        last <= N3,
        "counted {last} of {N3}: never more than were made"
    );
    eprintln!(
        "SIGKILL: {} of the {N3} reads made in the last window before the kill were lost",
        N3 - last
    );
    let text = agent_log.lock().unwrap().clone();
    assert!(!text.contains("panicked"), "{text}");
    agent.kill9();
}
