//! A real vault (`fyvault server` subprocess) with an org, an environment, a provider and an
//! agent token; and a real agent (`fyvault agent` subprocess) whose readiness is taken from
//! `READY=1` on a `NOTIFY_SOCKET` we own.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fyvault::api::{CreateEnvironmentRequest, CreateProviderRequest, CreateTokenRequest};
use fyvault::client::{VaultClient, WriteRequest, WriteValue};
use fyvault::crypto::PrivateKey;
use fyvault::secret::Secret;

use super::cleanup::{self, ForeignMount};

pub const DEADLINE: Duration = Duration::from_secs(120);

/// The `fyvault` binary of this build (`FYVAULT_BENCH_BIN` overrides it, to compare builds).
pub fn fyvault_bin() -> PathBuf {
    std::env::var_os("FYVAULT_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fyvault")))
}

/// A temp dir every uid may traverse (mounts and sockets live in it).
pub fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

pub fn write_private(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Captured stderr of a child.
pub type Log = Arc<Mutex<String>>;

fn spawn_logged(mut cmd: Command, log: &Log) -> (Child, std::sync::mpsc::Receiver<String>) {
    cleanup::clean_signal_mask(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    cleanup::register_child(child.id());
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
                if l.len() < 1 << 20 {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// `fyvault server` in a subprocess (stopped on drop).
pub struct VaultProc {
    child: Child,
    pub url: String,
    pub log: Log,
}

impl VaultProc {
    pub fn start(data_dir: &Path) -> VaultProc {
        Self::start_with(data_dir, |_| {})
    }

    /// Like [`VaultProc::start`], with more arguments or environment set by `tweak`.
    pub fn start_with(data_dir: &Path, tweak: impl FnOnce(&mut Command)) -> VaultProc {
        Self::start_on_with(data_dir, "127.0.0.1:0", tweak)
    }

    /// On a given address (a restarted vault must come back where its agents look for it).
    pub fn start_on(data_dir: &Path, listen: &str) -> VaultProc {
        Self::start_on_with(data_dir, listen, |_| {})
    }

    fn start_on_with(data_dir: &Path, listen: &str, tweak: impl FnOnce(&mut Command)) -> VaultProc {
        let log = Log::default();
        let mut cmd = Command::new(fyvault_bin());
        cmd.args(["server", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .env("FYVAULT_LOG", "warn");
        tweak(&mut cmd);
        let (child, rx) = spawn_logged(cmd, &log);
        let deadline = Instant::now() + DEADLINE;
        let url = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(u) = line.split("vault listening on ").nth(1) {
                        break u.trim().to_owned();
                    }
                }
                Err(_) => panic!("the vault did not start: {}", log.lock().unwrap()),
            }
        };
        VaultProc { child, url, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for VaultProc {
    fn drop(&mut self) {
        cleanup::stop_pid(self.child.id(), Duration::from_secs(10));
        cleanup::unregister_child(self.child.id());
    }
}

/// A vault with org, environment `prod`, one provider and an agent token (0600 file).
pub struct World {
    pub dir: tempfile::TempDir,
    /// The vault subprocess (None when the benchmark runs the vault in-process).
    pub vault: Option<VaultProc>,
    pub url: String,
    pub admin: VaultClient,
    pub provider: VaultClient,
    /// The provider's token (raw calls: per-user values).
    pub provider_token: Secret,
    pub agent_client: VaultClient,
    pub org: String,
    pub env: String,
    pub provider_id: String,
    pub token_file: PathBuf,
    pub key_file: PathBuf,
    pub key: PrivateKey,
}

impl World {
    pub async fn new() -> World {
        Self::new_listening("127.0.0.1:0").await
    }

    /// The vault's data dir (to restart it with [`VaultProc::start_on`]).
    pub fn vault_data_dir(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    /// [`World::new`] with the vault on `listen`.
    pub async fn new_listening(listen: &str) -> World {
        let listen = listen.to_owned();
        let dir = open_tempdir("fyvault-bench-");
        let data_dir = dir.path().join("vault");
        let admin_file = dir.path().join("admin.token");
        let out = Command::new(fyvault_bin())
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
            let d = data_dir.clone();
            tokio::task::spawn_blocking(move || VaultProc::start_on(&d, &listen))
                .await
                .unwrap()
        };
        let admin_token = std::fs::read(&admin_file).unwrap();
        let url = vault.url.clone();
        World::on(
            dir,
            Some(vault),
            &url,
            Secret::new(admin_token.trim_ascii().to_vec()),
        )
        .await
    }

    /// Sets up org, environment, provider and agent token on the vault at `url`.
    pub async fn on(
        dir: tempfile::TempDir,
        vault: Option<VaultProc>,
        url: &str,
        admin_token: Secret,
    ) -> World {
        let admin = VaultClient::new(url).unwrap().with_token(admin_token);
        let org = admin.create_org("bench").await.unwrap().org_id;
        let (sk, pk) = PrivateKey::generate();
        let env = "prod".to_owned();
        admin
            .create_environment(
                &org,
                &CreateEnvironmentRequest {
                    name: env.clone(),
                    public_key: pk.to_base64(),
                    default_grace_seconds: Some(300),
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
        let provider = VaultClient::new(url)
            .unwrap()
            .with_token(prov.token.token.clone());
        let agent_token = admin
            .create_agent_token(&org, &env, &CreateTokenRequest::default())
            .await
            .unwrap();
        let token_file = dir.path().join("agent.token");
        write_private(&token_file, agent_token.token.expose());
        let agent_client = VaultClient::new(url)
            .unwrap()
            .with_token(agent_token.token.clone());
        World {
            dir,
            vault,
            url: url.to_owned(),
            admin,
            provider,
            provider_token: prov.token.token.clone(),
            agent_client,
            org,
            env,
            provider_id: prov.provider_id,
            token_file,
            key_file,
            key: sk,
        }
    }

    /// Another provider of the org: (its client, its id).
    pub async fn new_provider(&self, name: &str) -> (VaultClient, String) {
        let prov = self
            .admin
            .create_provider(
                &self.org,
                &CreateProviderRequest {
                    name: name.into(),
                    expires_in_seconds: None,
                },
            )
            .await
            .unwrap();
        let client = VaultClient::new(&self.url)
            .unwrap()
            .with_token(prov.token.token.clone());
        (client, prov.provider_id)
    }

    pub fn write(&self, name: &str, value: &[u8], grace: Option<u64>) -> WriteRequest {
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

    /// Pushes `n` secrets `S00000…` of 64 bytes, `concurrency` at a time.
    pub async fn push_many(&self, n: usize, concurrency: usize) {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(0..n)
            .map(|i| async move {
                let value = value64(i as u64);
                self.push(&format!("S{i:05}"), &value).await;
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }

    /// Writes `user`'s value of the user-vault secret `name` (sealed here; `patch`: a rotation
    /// with a 300 s grace, else a push).
    pub async fn write_user(
        &self,
        http: &reqwest::Client,
        name: &str,
        user: &str,
        value: &[u8],
        patch: bool,
    ) {
        let sealed = self
            .key
            .public_key()
            .seal(value, &fyvault::crypto::aad(&self.org, &self.env, name))
            .unwrap();
        let mut body = serde_json::json!({"secret_name": name, "environment": self.env,
            "sealed_value": sealed, "user_id": user});
        let base = format!(
            "{}/api/v1/orgs/{}/providers/{}",
            self.url, self.org, self.provider_id
        );
        let req = if patch {
            body["grace_period_seconds"] = serde_json::json!(300);
            http.patch(base)
        } else {
            http.post(format!("{base}/push"))
        };
        let token = std::str::from_utf8(self.provider_token.expose()).unwrap();
        let resp = req.bearer_auth(token).json(&body).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// An agent config in `dir` (socket, mount, state), FUSE on or off.
    pub fn agent_config(&self, dir: &Path, fuse: bool, sync_wait: u64) -> PathBuf {
        self.agent_config_with(dir, fuse, sync_wait, "")
    }

    /// [`agent_config`](Self::agent_config) with more top-level `key = value` lines.
    pub fn agent_config_with(
        &self,
        dir: &Path,
        fuse: bool,
        sync_wait: u64,
        extra: &str,
    ) -> PathBuf {
        let text = format!(
            "vault_url = \"{}\"\norg_id = \"{}\"\nenvironment = \"{}\"\n\
             token_file = \"{}\"\nkey_file = \"{}\"\nsocket = \"{}\"\nmount = \"{}\"\n\
             fuse = {fuse}\nstate_dir = \"{}\"\nsync_wait_seconds = {sync_wait}\ngroup = \"\"\n{extra}",
            self.url,
            self.org,
            self.env,
            self.token_file.display(),
            self.key_file.display(),
            dir.join("agent.sock").display(),
            dir.join("mnt").display(),
            dir.join("state").display(),
        );
        let p = dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// 64 printable bytes that differ per `i`.
pub fn value64(i: u64) -> Vec<u8> {
    let mut v = format!("sk_live_{i:016}_").into_bytes();
    while v.len() < 64 {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.truncate(64);
    v
}

/// `fyvault agent` in a subprocess; ready when it sent `READY=1` to our notify socket.
pub struct AgentProc {
    child: Child,
    stopped: bool,
    pub socket: PathBuf,
    pub mount: PathBuf,
    /// From spawn to `READY=1`.
    pub ready_after: Duration,
    pub log: Log,
    _mount: ForeignMount,
}

impl AgentProc {
    /// Starts an agent from `config` (made by [`World::agent_config`] in `dir`) and waits for
    /// `READY=1`.
    pub fn start(dir: &Path, config: &Path, log_level: &str) -> AgentProc {
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mount = dir.join("mnt");
        let guard = ForeignMount::new(&mount);
        let log = Log::default();
        let mut cmd = if std::env::var_os("FOOTPRINT_NO_MLOCK").is_some() {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-ipc_lock",
                "--inh-caps=-ipc_lock",
                "prlimit",
                "--memlock=0:0",
            ])
            .arg(fyvault_bin());
            c
        } else {
            Command::new(fyvault_bin())
        };
        cmd.arg("agent")
            .arg("--config")
            .arg(config)
            .env("FYVAULT_LOG", log_level)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("WATCHDOG_USEC");
        let started = Instant::now();
        let (mut child, _rx) = spawn_logged(cmd, &log);
        let mut buf = [0u8; 4096];
        let ready_after = loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        break started.elapsed();
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("the agent exited ({status}): {}", log.lock().unwrap());
                    }
                    assert!(
                        started.elapsed() < DEADLINE,
                        "the agent was not ready within {DEADLINE:?}: {}",
                        log.lock().unwrap()
                    );
                }
            }
        };
        AgentProc {
            child,
            stopped: false,
            socket: dir.join("agent.sock"),
            mount,
            ready_after,
            log,
            _mount: guard,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent (SIGTERM) and waits; true if it exited 0.
    pub fn stop(&mut self) -> bool {
        if std::mem::replace(&mut self.stopped, true) {
            return true;
        }
        let status = cleanup::stop_pid(self.child.id(), Duration::from_secs(20));
        cleanup::unregister_child(self.child.id());
        let ok = matches!(status, Some(nix::sys::wait::WaitStatus::Exited(_, 0)));
        if !ok {
            eprintln!("the agent ended with {status:?}");
        }
        ok
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop();
    }
}
