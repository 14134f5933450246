//! A real vault (`fyvault server` as a subprocess, logs captured) with an org, an environment,
//! a provider and an agent token, for the agent's end-to-end tests.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyvault::agent::config;
use fyvault::agent::run::{self, Agent, RunOptions};
use fyvault::agent::sync::SyncTiming;
use fyvault::api::CreateEnvironmentRequest;
use fyvault::api::{CreateProviderRequest, CreateTokenRequest};
use fyvault::client::{VaultClient, WriteRequest, WriteValue};
use fyvault::crypto::PrivateKey;
use fyvault::secret::Secret;

use super::fyvault;

/// Captured stderr of a subprocess.
pub type Log = Arc<Mutex<String>>;

/// Spawns `cmd` with stderr captured into `log`; returns the child and a receiver of lines.
pub fn spawn_logged(mut cmd: Command, log: &Log) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Sends SIGTERM to a child we started and waits for it; returns whether it exited 0.
pub fn terminate(child: &mut Child) -> bool {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(Some(_))) {
        return false;
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + super::DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not stop on SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fyvault server` in a subprocess.
pub struct VaultProc {
    child: Child,
    pub url: String,
    pub port: u16,
    pub log: Log,
}

impl VaultProc {
    /// Starts the vault on `data_dir`, listening on `127.0.0.1:port` (0: any free port).
    pub fn start(data_dir: &Path, port: u16, log_level: &str, log: &Log) -> VaultProc {
        Self::start_with(data_dir, port, log_level, log, |_| {})
    }

    /// Like [`VaultProc::start`], with more arguments, environment or limits set by `tweak`.
    pub fn start_with(
        data_dir: &Path,
        port: u16,
        log_level: &str,
        log: &Log,
        tweak: impl FnOnce(&mut Command),
    ) -> VaultProc {
        let mut cmd = Command::new(fyvault());
        cmd.args(["server", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("FYVAULT_LOG", log_level);
        tweak(&mut cmd);
        let (child, rx) = spawn_logged(cmd, log);
        let deadline = std::time::Instant::now() + super::DEADLINE;
        let url = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.split("vault listening on ").nth(1) {
                        break u.trim().to_owned();
                    }
                }
                Err(_) => panic!("the vault did not start: {}", log.lock().unwrap()),
            }
        };
        // Keep draining (the thread owns the sender; dropping rx is fine).
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        VaultProc {
            child,
            url,
            port,
            log: log.clone(),
        }
    }

    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for VaultProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A vault with one org, environment `prod`, a provider and an agent token (in a 0600 file).
pub struct World {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub vault: VaultProc,
    pub admin: VaultClient,
    pub provider: VaultClient,
    /// The provider's token (for a client of the vault started elsewhere).
    pub provider_token: Secret,
    pub org: String,
    pub env: String,
    pub provider_id: String,
    pub agent_token_id: String,
    pub token_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn write_private(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl World {
    pub async fn new(log_level: &str, log: &Log) -> World {
        Self::new_with(log_level, log, |_| {}).await
    }

    /// Like [`World::new`], the vault's command tweaked first (see [`VaultProc::start_with`]).
    pub async fn new_with(
        log_level: &str,
        log: &Log,
        tweak: impl FnOnce(&mut Command) + Send + 'static,
    ) -> World {
        let dir = super::open_tempdir();
        let data_dir = dir.path().join("vault");
        let admin_file = dir.path().join("admin.token");
        let out = Command::new(fyvault())
            .args(["server", "init", "--data-dir"])
            .arg(&data_dir)
            .arg("--token-out")
            .arg(&admin_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vault = {
            let (d, l, lv) = (data_dir.clone(), log.clone(), log_level.to_owned());
            tokio::task::spawn_blocking(move || VaultProc::start_with(&d, 0, &lv, &l, tweak))
                .await
                .unwrap()
        };
        let admin_token = std::fs::read(&admin_file).unwrap();
        let admin = VaultClient::new(&vault.url)
            .unwrap()
            .with_token(Secret::new(admin_token.trim_ascii().to_vec()));
        let org = admin.create_org("agent-tests").await.unwrap().org_id;
        let (sk, pk) = PrivateKey::generate();
        let env = "prod".to_owned();
        admin
            .create_environment(
                &org,
                &CreateEnvironmentRequest {
                    name: env.clone(),
                    public_key: pk.to_base64(),
                    default_grace_seconds: Some(600),
                },
            )
            .await
            .unwrap();
        let key_file = dir.path().join("prod.key");
        write_private(&key_file, sk.to_file_contents().expose());
        let prov = admin
            .create_provider(
                &org,
                &CreateProviderRequest {
                    name: "acme".into(),
                    expires_in_seconds: None,
                },
            )
            .await
            .unwrap();
        let provider_token = prov.token.token.clone();
        let provider = VaultClient::new(&vault.url)
            .unwrap()
            .with_token(provider_token.clone());
        let agent_token = admin
            .create_agent_token(&org, &env, &CreateTokenRequest::default())
            .await
            .unwrap();
        let token_file = dir.path().join("agent.token");
        write_private(&token_file, agent_token.token.expose());
        World {
            dir,
            data_dir,
            vault,
            admin,
            provider,
            provider_token,
            org,
            env,
            provider_id: prov.provider_id,
            agent_token_id: agent_token.token_id,
            token_file,
            key_file,
        }
    }

    fn write(&self, name: &str, value: &[u8], grace: Option<u64>) -> WriteRequest {
        WriteRequest {
            secret_name: name.into(),
            environment: self.env.clone(),
            value: WriteValue::Plaintext(Secret::copy_from(value)),
            grace_period_seconds: grace,
            idempotency_key: None,
        }
    }

    pub async fn push(&self, name: &str, value: &[u8]) -> u64 {
        self.provider
            .push(&self.org, &self.provider_id, &self.write(name, value, None))
            .await
            .unwrap()
            .version
    }

    pub async fn rotate(&self, name: &str, value: &[u8], grace: u64) -> u64 {
        self.provider
            .rotate(
                &self.org,
                &self.provider_id,
                &self.write(name, value, Some(grace)),
            )
            .await
            .unwrap()
            .version
    }

    pub async fn revoke(&self, name: &str) {
        self.provider
            .revoke(&self.org, &self.provider_id, name)
            .await
            .unwrap();
    }

    /// A config for an agent of this world (socket in the world's dir, no FUSE; long-polls of
    /// 2 s unless `extra` sets `sync_wait_seconds`).
    pub fn agent_config(&self, extra: &str) -> PathBuf {
        let d = self.dir.path();
        let wait = if extra.contains("sync_wait_seconds") {
            ""
        } else {
            "sync_wait_seconds = 2\n"
        };
        let fuse = if extra.contains("fuse =") {
            ""
        } else {
            "fuse = false\n"
        };
        let text = format!(
            "vault_url = \"{}\"\norg_id = \"{}\"\nenvironment = \"{}\"\n\
             token_file = \"{}\"\nkey_file = \"{}\"\nsocket = \"{}\"\n{fuse}\
             state_dir = \"{}\"\n{wait}group = \"\"\n{extra}",
            self.vault.url,
            self.org,
            self.env,
            self.token_file.display(),
            self.key_file.display(),
            self.socket().display(),
            d.join("state").display(),
        );
        let p = d.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Starts an agent in this process.
    pub async fn start_agent(&self, extra: &str) -> Agent {
        let config = config::load(&self.agent_config(extra)).unwrap();
        let options = RunOptions {
            timing: SyncTiming {
                retry_base: Duration::from_millis(50),
                retry_cap: Duration::from_millis(500),
                refused_base: Duration::from_millis(100),
                refused_cap: Duration::from_millis(500),
                ..SyncTiming::default()
            },
            ..RunOptions::in_process()
        };
        tokio::time::timeout(super::DEADLINE, run::start(config, options))
            .await
            .expect("agent ready within the deadline")
            .unwrap()
    }
}
