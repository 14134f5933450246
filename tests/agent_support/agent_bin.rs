//! The agent as a real process (`fyvault agent --config`), and what the offline and restore
//! tests do around it: health over the socket, values, the files of a state dir, a copy of a
//! vault's data dir (a "backup").

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::vault::{Log, VaultProc, spawn_logged, terminate};
use super::{eventually, fyvault, get};

/// `fyvault agent` (the binary), stopped with SIGTERM by [`AgentBin::stop`] (killed when
/// dropped otherwise).
pub struct AgentBin {
    child: Child,
    pub log: Log,
}

impl AgentBin {
    pub fn start(config: &Path) -> AgentBin {
        let log = Log::default();
        let mut cmd = Command::new(fyvault());
        cmd.arg("agent")
            .arg("--config")
            .arg(config)
            .env("FYVAULT_LOG", "info")
            .env_remove("NOTIFY_SOCKET");
        let (child, _rx) = spawn_logged(cmd, &log);
        AgentBin { child, log }
    }

    pub fn stop(mut self) {
        assert!(terminate(&mut self.child), "{}", self.log.lock().unwrap());
    }
}

impl Drop for AgentBin {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `/v1/health` (as root: with the detail), `None` while nothing answers.
pub async fn health(sock: &Path) -> Option<serde_json::Value> {
    if !sock.exists() {
        return None;
    }
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), get(sock, "/v1/health"))
        .await
        .ok()?;
    Some(r.json())
}

pub async fn wait_health(sock: &Path, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    eventually(what, || async { health(sock).await.filter(|h| ok(h)) }).await;
}

/// A secret's current value through the socket: (status, body).
pub async fn value(sock: &Path, name: &str) -> (u16, Vec<u8>) {
    let r = get(sock, &format!("/v1/secrets/{name}")).await;
    (r.status, r.body)
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Copies the files of `from` into `to` (a vault's data dir, stopped: a backup).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Replaces the files of `data_dir` with those of `backup` (a restore).
pub fn restore_dir(backup: &Path, data_dir: &Path) {
    for f in files(data_dir) {
        std::fs::remove_file(f).unwrap();
    }
    copy_dir(backup, data_dir);
}

/// `fyvault ARGS`, its (status success, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(fyvault());
    cmd.args(args).env("FYVAULT_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `fyvault server` on `data_dir` at `127.0.0.1:port` (0: any), started off the runtime.
pub async fn start_vault(data_dir: &Path, port: u16, log: &Log) -> VaultProc {
    let (d, l) = (data_dir.to_owned(), log.clone());
    tokio::task::spawn_blocking(move || VaultProc::start(&d, port, "info", &l))
        .await
        .unwrap()
}
