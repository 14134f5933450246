//! `fyvault run` against a real vault (subprocess) and a real agent: the child's environment
//! holds the values and its argv does not; `--only` filters; restart, signal and exit modes on
//! a rotation; exit statuses pass through; SIGINT reaches the child; an unreachable agent
//! exits 69.

mod agent_support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use agent_support::vault::{Log, World};
use agent_support::{DEADLINE, fyvault};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `fyvault run`, its stdout read line by line.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Signalled when stderr reaches its end.
    stderr_done: mpsc::Receiver<()>,
}

impl Run {
    fn start(socket: &Path, args: &[&str]) -> Run {
        let mut child = Command::new(fyvault())
            .arg("run")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, e) = (child.stderr.take().unwrap(), stderr.clone());
        let (done_tx, stderr_done) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
            let _ = done_tx.send(());
        });
        Run {
            child,
            lines,
            stderr,
            stderr_done,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The next stdout line, within the deadline.
    fn line(&self) -> String {
        self.lines.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!(
                "no output line within the deadline; stderr: {}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Lines until one starts with `prefix` (returned); the others are kept in `seen`.
    fn until(&self, prefix: &str, seen: &mut Vec<String>) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
            seen.push(l);
        }
    }

    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything it wrote on stderr (the pipe ends once every writer has exited).
                self.stderr_done
                    .recv_timeout(DEADLINE)
                    .expect("stderr to end within the deadline");
                let stderr = self.stderr.lock().unwrap().clone();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "fyvault run did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn proc_file(pid: &str, file: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{file}")).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A child that prints its pid and the value, then waits; TERM prints the value it holds. The
/// trap is set before the line is printed: a test may signal as soon as it reads it.
const WAITER: &str = r#"trap 'echo "term $$ $STRIPE_SK"; exit 0' TERM; echo "start $$ $STRIPE_SK"; while :; do sleep 0.05; done"#;

async fn world_with(secrets: &[(&str, &[u8])]) -> (World, fyvault::agent::run::Agent) {
    let log = Log::default();
    let w = World::new("warn", &log).await;
    for (name, value) in secrets {
        w.push(name, value).await;
    }
    let agent = w.start_agent("").await;
    (w, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_in_the_environment_never_on_argv() {
    let (w, agent) = world_with(&[("STRIPE_SK", b"sk_run_env_value")]).await;
    let sock = agent.socket().to_owned();

    // Default mode: fyvault run becomes the command (same pid).
    let run = Run::start(&sock, &["--", "sh", "-c", WAITER]);
    let start = run.line();
    let pid = start.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(start, format!("start {pid} sk_run_env_value"));
    assert_eq!(pid, run.pid().to_string(), "exec replaces fyvault run");
    assert!(!contains(&proc_file(&pid, "cmdline"), b"sk_run_env_value"));
    let environ = proc_file(&pid, "environ");
    assert!(contains(&environ, b"\0STRIPE_SK=sk_run_env_value\0"));
    assert!(contains(
        &environ,
        format!("FYVAULT_SOCKET={}\0", sock.display()).as_bytes()
    ));
    kill(run.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(run.line(), format!("term {pid} sk_run_env_value"));
    assert_eq!(run.wait().0.code(), Some(0));

    // Supervised: a child of its own; neither argv holds the value.
    let run = Run::start(&sock, &["--on-rotate", "restart", "--", "sh", "-c", WAITER]);
    let start = run.line();
    let pid = start.split(' ').nth(1).unwrap().to_owned();
    assert_ne!(pid, run.pid().to_string());
    assert!(contains(
        &proc_file(&pid, "environ"),
        b"STRIPE_SK=sk_run_env_value\0"
    ));
    for p in [pid.clone(), run.pid().to_string()] {
        assert!(!contains(&proc_file(&p, "cmdline"), b"sk_run_env_value"));
    }
    kill(run.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(run.line(), format!("term {pid} sk_run_env_value"));
    assert_eq!(run.wait().0.code(), Some(0));
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_selects_by_glob() {
    let (_w, agent) = world_with(&[("APP_ONE", b"1"), ("APP_TWO", b"2"), ("OTHER", b"3")]).await;
    let sock = agent.socket().to_owned();
    let env = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend([
            "--",
            "sh",
            "-c",
            "echo ${APP_ONE:--}${APP_TWO:--}${OTHER:--}",
        ]);
        let run = Run::start(&sock, &full);
        let line = run.line();
        assert_eq!(run.wait().0.code(), Some(0));
        line
    };
    assert_eq!(env(&[]), "123");
    assert_eq!(env(&["--only", "APP_*"]), "12-");
    assert_eq!(env(&["--only", "OTHER", "--only", "APP_T?O"]), "-23");
    let (status, stderr) = Run::start(&sock, &["--only", "NOPE_*", "--", "true"]).wait();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--only NOPE_*"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_starts_a_new_child_and_terminates_the_old() {
    let (w, agent) = world_with(&[("STRIPE_SK", b"sk_old")]).await;
    let sock = agent.socket().to_owned();
    let run = Run::start(&sock, &["--on-rotate", "restart", "--", "sh", "-c", WAITER]);
    let first = run.line();
    let old = first.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(first, format!("start {old} sk_old"));

    let rotated = Instant::now();
    w.rotate("STRIPE_SK", b"sk_new", 600).await;
    let mut seen = Vec::new();
    let second = run.until("start ", &mut seen);
    eprintln!(
        "new child started {:?} after the rotation call returned",
        rotated.elapsed()
    );
    let new = second.split(' ').nth(1).unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(second, format!("start {new} sk_new"));
    // The old child got SIGTERM and stopped with the value it started with.
    let term = if seen.iter().any(|l| l.starts_with("term ")) {
        seen.into_iter().find(|l| l.starts_with("term ")).unwrap()
    } else {
        run.until("term ", &mut Vec::new())
    };
    assert_eq!(term, format!("term {old} sk_old"));
    // A revoke restarts it again, without the secret.
    w.revoke("STRIPE_SK").await;
    let third = run.until("start ", &mut Vec::new());
    let newest = third.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(third, format!("start {newest} "));
    kill(run.pid(), Signal::SIGTERM).unwrap();
    let (status, stderr) = run.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("STRIPE_SK changed"), "{stderr}");
    assert!(!stderr.contains("sk_old") && !stderr.contains("sk_new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_mode_and_exit_mode() {
    let (w, agent) = world_with(&[("STRIPE_SK", b"v1"), ("UNRELATED", b"u1")]).await;
    let sock = agent.socket().to_owned();
    let script = r#"trap 'echo "usr1 $$"' USR1; echo "start $$"; while :; do sleep 0.05; done"#;
    let run = Run::start(
        &sock,
        &[
            "--only",
            "STRIPE_SK",
            "--on-rotate",
            "signal:USR1",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let start = run.line();
    let pid = start.split(' ').nth(1).unwrap().to_owned();
    // A secret the child does not hold changes nothing; then one it holds is signalled.
    w.rotate("UNRELATED", b"u2", 600).await;
    w.rotate("STRIPE_SK", b"v2", 600).await;
    assert_eq!(
        run.line(),
        format!("usr1 {pid}"),
        "the same child, signalled"
    );
    w.rotate("STRIPE_SK", b"v3", 600).await;
    assert_eq!(run.line(), format!("usr1 {pid}"));
    kill(run.pid(), Signal::SIGTERM).unwrap();
    // sh dies of the forwarded SIGTERM: 128 + 15.
    assert_eq!(run.wait().0.code(), Some(143));

    let run = Run::start(
        &sock,
        &[
            "--on-rotate",
            "exit",
            "--stop-timeout",
            "5",
            "--",
            "sh",
            "-c",
            WAITER,
        ],
    );
    assert!(run.line().starts_with("start "));
    w.rotate("STRIPE_SK", b"v4", 600).await;
    assert!(run.line().starts_with("term "));
    let (status, stderr) = run.wait();
    assert_eq!(status.code(), Some(75), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_and_sigint() {
    let (_w, agent) = world_with(&[("STRIPE_SK", b"v1")]).await;
    let sock = agent.socket().to_owned();
    for mode in ["ignore", "restart"] {
        let (status, _) =
            Run::start(&sock, &["--on-rotate", mode, "--", "sh", "-c", "exit 7"]).wait();
        assert_eq!(status.code(), Some(7), "{mode}");
    }
    let (status, stderr) = Run::start(&sock, &["--", "no-such-command-here"]).wait();
    assert_eq!(status.code(), Some(127));
    assert!(
        stderr.contains("no-such-command-here: command not found"),
        "{stderr}"
    );

    // Ctrl-C: SIGINT to fyvault run reaches the supervised child, whose status comes back.
    let script =
        r#"trap 'echo "int $$"; exit 130' INT; echo "start $$"; while :; do sleep 0.05; done"#;
    let run = Run::start(&sock, &["--on-rotate", "restart", "--", "sh", "-c", script]);
    let pid = run.line().split(' ').nth(1).unwrap().to_owned();
    kill(run.pid(), Signal::SIGINT).unwrap();
    assert_eq!(run.line(), format!("int {pid}"));
    assert_eq!(run.wait().0.code(), Some(130));

    // Unreachable agent: one line naming the socket, exit 69 (both modes).
    let missing = sock.with_file_name("missing.sock");
    for mode in ["ignore", "restart"] {
        let (status, stderr) = Run::start(&missing, &["--on-rotate", mode, "--", "true"]).wait();
        assert_eq!(status.code(), Some(69), "{mode}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    }
}
