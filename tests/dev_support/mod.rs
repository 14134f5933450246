//! A running `fyvault dev` (the vault and the agent in one real process) for tests: started on
//! a free port with its data, mount and socket in the test's directory, ready when `dev.json`
//! names it and the walkthrough is printed; killed and its mount detached if a test fails.
//! Used by tests/dev_mode.rs and tests/studio_browser.rs.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

// The test file declares `mod common_fuse;` beside `mod dev_support;`.
use crate::common_fuse::is_mounted;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn fyvault() -> &'static str {
    env!("CARGO_BIN_EXE_fyvault")
}

/// Polls `f` until it returns `Some`, or panics after the deadline.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `fyvault dev`; on drop (a failed test) it is killed and its mount detached.
pub struct Dev {
    pub child: Child,
    pub data: PathBuf,
    pub mount: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Dev {
    pub fn start(data: &Path, mount: &Path, socket: &Path, extra: &[&str]) -> Dev {
        Self::start_with(Command::new(fyvault()), data, mount, socket, extra)
    }

    pub fn start_with(
        mut cmd: Command,
        data: &Path,
        mount: &Path,
        socket: &Path,
        extra: &[&str],
    ) -> Dev {
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--mount")
            .arg(mount)
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let o = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                o.lock().unwrap().push(line);
            }
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let dev = Dev {
            child,
            data: data.to_owned(),
            mount: mount.to_owned(),
            stdout,
            stderr,
        };
        dev.wait_ready();
        dev
    }

    /// Ready = `dev.json` names this process (`pid`) and the walkthrough is printed.
    pub fn wait_ready(&self) {
        let pid = self.child.id();
        let started = Instant::now();
        let deadline = started + DEADLINE;
        loop {
            let f = std::fs::read(self.data.join("dev.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let printed = self.stdout().iter().any(|l| l.starts_with("Ready."));
            if f.is_some_and(|f| f["pid"] == pid) && printed {
                eprintln!("fyvault dev ready after {:?}", started.elapsed());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fyvault dev did not get ready: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn facts(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.data.join("dev.json")).unwrap()).unwrap()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The printed curl commands, continuation lines joined.
    pub fn curl_commands(&self) -> Vec<String> {
        let mut cmds = Vec::new();
        let mut cur: Option<String> = None;
        for line in self.stdout() {
            match cur.as_mut() {
                Some(c) => c.push_str(line.trim_end_matches('\\')),
                None if line.starts_with("curl ") => {
                    cur = Some(line.trim_end_matches('\\').to_string())
                }
                None => continue,
            }
            if !line.ends_with('\\') {
                cmds.extend(cur.take());
            }
        }
        cmds
    }

    /// Sends `sig` and waits for the exit; returns whether it exited 0.
    pub fn stop(mut self, sig: Signal) -> bool {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
        let status = eventually("fyvault dev to exit", || self.child.try_wait().unwrap());
        if !status.success() {
            eprintln!("{}", self.stderr.lock().unwrap());
        }
        status.success()
    }
}

impl Drop for Dev {
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
