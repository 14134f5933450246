//! The agent binary under a stand-in for systemd: `NOTIFY_SOCKET` is a datagram socket this
//! test owns. `READY=1` comes only after the first sync (and the mount and the socket),
//! `WATCHDOG=1` keeps coming when `WATCHDOG_USEC` is set, `STATUS=` follows the health, and
//! `SIGHUP` applies new access rules without dropping the mount.

mod agent_support;
mod common_fuse;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Instant;

use agent_support::vault::{Log, VaultProc, World, spawn_logged, terminate};
use agent_support::{DEADLINE, as_nobody, fyvault, get};
use common_fuse::{fuse_available, is_mounted};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What the agent told "systemd", one line per state.
struct Notes {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Notes {
    fn listen(path: &Path) -> Notes {
        let sock = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if tx.send(line.to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        Notes {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a message matching `pred` (deadline); returns it.
    fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        tokio::task::block_in_place(|| {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let m = self.rx.recv_timeout(left).unwrap_or_else(|_| {
                    panic!("no {what} within the deadline; seen {:?}", self.seen)
                });
                self.seen.push(m.clone());
                if pred(&m) {
                    return m;
                }
            }
        })
    }
}

/// The agent subprocess; killed (and its mount detached) if the test fails.
struct AgentProc {
    child: Child,
    mount: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mount) {
            let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn write_config(w: &World, mount: &Path, fuse: bool, extra: &str) -> PathBuf {
    let d = w.dir.path();
    let text = format!(
        "vault_url = \"{}\"\norg_id = \"{}\"\nenvironment = \"{}\"\n\
         token_file = \"{}\"\nkey_file = \"{}\"\nsocket = \"{}\"\nmount = \"{}\"\nfuse = {fuse}\n\
         state_dir = \"{}\"\ngroup = \"\"\n{extra}",
        w.vault.url,
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

/// Reads APP_KEY as uid 65534: through the mount when there is one, else through the socket.
fn nobody_reads(fuse: bool, mount: &Path, socket: &Path) -> Option<Vec<u8>> {
    let out = if fuse {
        as_nobody(
            Path::new("/usr/bin/cat"),
            &[mount.join("APP_KEY").to_str().unwrap()],
            &[],
        )
    } else {
        as_nobody(
            Path::new(fyvault().to_str().unwrap()),
            &["get", "APP_KEY", "--socket", socket.to_str().unwrap()],
            &[],
        )
    }
    .expect("running as uid 65534");
    out.status.success().then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_first_sync_watchdog_status_and_sighup() {
    if !nix::unistd::geteuid().is_root() {
        common_fuse::skip::skip(
            "ready_after_first_sync_watchdog_status_and_sighup",
            "needs root (setpriv)",
        );
        return;
    }
    let fuse = fuse_available("ready_after_first_sync_watchdog_status_and_sighup");
    let vault_log = Log::default();
    let mut w = World::new("info", &vault_log).await;
    w.push("APP_KEY", b"app-value-1").await;
    let port = w.vault.port;
    // The vault is down when the agent starts.
    w.vault.stop();
    let mount = w.dir.path().join("mnt");
    let config = write_config(&w, &mount, fuse, "sync_wait_seconds = 2\n");
    let mut notes = Notes::listen(&w.dir.path().join("notify.sock"));
    let agent_log = Log::default();
    let mut cmd = Command::new(fyvault());
    cmd.arg("agent")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", w.dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "1000000")
        .env("FYVAULT_LOG", "info");
    let started = Instant::now();
    let (child, _lines) = spawn_logged(cmd, &agent_log);
    let mut agent = AgentProc {
        child,
        mount: mount.clone(),
    };

    // 1. Alive and trying (each failed first sync says so in STATUS=), but not ready.
    for _ in 0..3 {
        notes.until("a failed first sync", |m| m.starts_with("STATUS=syncing: "));
    }
    assert!(
        !notes
            .seen
            .iter()
            .any(|m| m == "READY=1" || m == "WATCHDOG=1"),
        "nothing ready before the first sync: {:?}",
        notes.seen
    );
    assert!(
        matches!(agent.child.try_wait(), Ok(None)),
        "the agent keeps trying"
    );
    // The socket answers from the first second: not ready, and why (issue 17).
    let h = get(&w.socket(), "/v1/health").await.json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("starting: no values yet, first sync failed")),
        "{h}"
    );
    let r = get(&w.socket(), "/v1/secrets/ANY_NAME").await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "not_ready"));
    assert!(!is_mounted(&mount), "no mount before the first sync");

    // 2. The vault comes back: READY=1, with the mount and the socket already up.
    let vault_back = Instant::now();
    w.vault = {
        let (d, l) = (w.data_dir.clone(), vault_log.clone());
        tokio::task::spawn_blocking(move || VaultProc::start(&d, port, "info", &l))
            .await
            .unwrap()
    };
    notes.until("READY=1", |m| m == "READY=1");
    eprintln!(
        "READY=1 {:?} after the vault came back ({:?} after the start)",
        vault_back.elapsed(),
        started.elapsed()
    );
    assert!(w.socket().exists(), "the socket is bound before READY=1");
    if fuse {
        assert!(is_mounted(&mount), "the mount is up before READY=1");
    }
    // The status line is refreshed every second on its own: it may say ready just before
    // READY=1 is sent, or just after.
    let is_ready_status = |m: &str| m.starts_with("STATUS=ready: ");
    let status = match notes.seen.iter().find(|m| is_ready_status(m)).cloned() {
        Some(s) => s,
        None => notes.until("a ready STATUS=", is_ready_status),
    };
    assert!(
        status.contains("synced revision") && status.contains("1 secrets"),
        "{status}"
    );
    if fuse {
        assert!(
            status.contains(&format!("mounted at {}", mount.display())),
            "{status}"
        );
    }

    // 3. The watchdog keeps being fed.
    for _ in 0..3 {
        notes.until("WATCHDOG=1", |m| m == "WATCHDOG=1");
    }

    // 4. SIGHUP: a new rule lets uid 65534 read, the mount stays.
    let dev_before =
        fuse.then(|| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&mount).unwrap()));
    let (m2, s2) = (mount.clone(), w.socket());
    assert_eq!(
        tokio::task::spawn_blocking(move || nobody_reads(fuse, &m2, &s2))
            .await
            .unwrap(),
        None,
        "uid 65534 is denied by default"
    );
    write_config(
        &w,
        &mount,
        fuse,
        "sync_wait_seconds = 3\n[[access.rule]]\nsecrets = [\"APP_*\"]\nusers = [65534]\n",
    );
    kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGHUP).unwrap();
    notes.until("RELOADING=1", |m| m == "RELOADING=1");
    notes.until("READY=1 after the reload", |m| m == "READY=1");
    let (m2, s2) = (mount.clone(), w.socket());
    assert_eq!(
        tokio::task::spawn_blocking(move || nobody_reads(fuse, &m2, &s2))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"app-value-1"[..]),
        "the reloaded rule grants uid 65534"
    );
    if fuse {
        assert!(is_mounted(&mount), "the mount survived the reload");
        let dev_after = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&mount).unwrap());
        assert_eq!(dev_before, Some(dev_after), "the same mount, not a new one");
    }
    assert!(
        matches!(agent.child.try_wait(), Ok(None)),
        "SIGHUP does not stop the agent"
    );
    let log = agent_log.lock().unwrap().clone();
    assert!(
        log.contains("access rules changed: + rule secrets=[\"APP_*\"] users=[65534]"),
        "{log}"
    );
    assert!(
        log.contains("sync_wait_seconds changed; restart the agent to apply"),
        "{log}"
    );

    // 5. The vault goes away: STATUS= says degraded since when and why; reads go on.
    w.vault.stop();
    let status = notes.until("a degraded STATUS=", |m| {
        m.starts_with("STATUS=degraded since ")
    });
    assert!(status.contains("vault unreachable"), "{status}");
    assert!(status.contains("serving revision"), "{status}");
    if fuse {
        assert_eq!(
            std::fs::read(mount.join("APP_KEY")).unwrap(),
            b"app-value-1"
        );
    }
    notes.until("WATCHDOG=1 while degraded", |m| m == "WATCHDOG=1");

    // 6. SIGTERM: STOPPING=1, exit 0, the mount and the socket gone.
    let clean = tokio::task::block_in_place(|| terminate(&mut agent.child));
    assert!(clean, "exit 0 on SIGTERM");
    notes.until("STOPPING=1", |m| m == "STOPPING=1");
    assert!(!is_mounted(&mount));
    assert!(!w.socket().exists());
}
