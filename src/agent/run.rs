//! Wiring, readiness, shutdown: the only place that knows every part of the agent.
//!
//! Startup order (DESIGN §4.1): config (validated by the caller) → memory hygiene → token and
//! key → first full sync → mount → bind the socket → `READY=1`. Then the sync loop, the token
//! file watch, the grace expiry task and the socket server run until shutdown.
//!
//! Shutdown (SIGTERM/SIGINT, or the future given to [`run`]): `STOPPING=1`, stop accepting on
//! the socket and end event streams, stop syncing, detach the mount, flush the audit spool,
//! remove the socket file, zeroize every held value, return.
//!
//! Tests start the agent in-process with [`start`] (or [`run`]) and a [`RunOptions`] that
//! skips process-wide hygiene and shortens timings.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::agent::audit::Auditor;
use crate::agent::config::AgentConfig;
use crate::agent::hygiene::{self, MlockStatus};
use crate::agent::socket::{self, Ctx, RunInfo, SocketError};
use crate::agent::state::AgentState;
use crate::agent::sync::{SyncError, SyncTiming, Syncer};
use crate::agent::tokenfile::{self, TokenFileError, TokenWatch};
use crate::agent::view::View;
use crate::client::{ClientError, ClientOptions, VaultClient};
use crate::crypto::PrivateKey;

/// How long shutdown waits for socket requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run (the binary uses the defaults).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Make the process non-dumpable and lock its memory (process-wide: off for in-process
    /// tests).
    pub hygiene: bool,
    pub timing: SyncTiming,
    /// Interval of keep-alive comments on `/v1/events`.
    pub keep_alive: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            hygiene: true,
            timing: SyncTiming::default(),
            keep_alive: Duration::from_secs(15),
        }
    }
}

impl RunOptions {
    /// Options for an agent inside a test process: no process-wide hygiene.
    pub fn in_process() -> Self {
        RunOptions {
            hygiene: false,
            ..RunOptions::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] TokenFileError),
    #[error("key_file: {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("ca_file: {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("state_dir: cannot create {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vault_url: {0}")]
    Client(ClientError),
    #[error("cannot watch the token file: {0}")]
    Watch(#[from] notify::Error),
    #[error("first sync: {0}")]
    Sync(#[from] SyncError),
    #[error("socket: {0}")]
    Socket(#[from] SocketError),
    #[error("the socket server failed: {0}")]
    Serve(std::io::Error),
}

/// Background tasks, aborted when dropped (so a start abandoned half-way leaves nothing).
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A started agent: serving, syncing, watching.
pub struct Agent {
    state: Arc<AgentState>,
    info: Arc<RunInfo>,
    socket: PathBuf,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Tasks,
    _token_watch: TokenWatch,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Sends `STATUS=…` to systemd (a no-op outside systemd).
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}

fn load_key(path: &Path) -> Result<PrivateKey, RunError> {
    let err = |reason: String| RunError::Key {
        path: path.to_owned(),
        reason,
    };
    let raw = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    PrivateKey::from_file_contents(&raw).map_err(|e| err(e.to_string()))
}

/// A key file of another environment would open nothing: compare its public half with the
/// environment's public key on the vault, and refuse to start on a mismatch. (When the vault
/// cannot answer, the check is skipped with a warning: values that fail to open are logged.)
async fn check_key(syncer: &Syncer, config: &AgentConfig) -> Result<(), RunError> {
    match syncer
        .client
        .public_key(&config.org_id, &config.environment)
        .await
    {
        Ok(pk) => {
            if pk.public_key.trim() != syncer.key.public_key().to_base64() {
                return Err(RunError::Key {
                    path: config.key_file.clone(),
                    reason: format!(
                        "this is not the private key of {}/{} (its public half differs from the                          vault's)",
                        config.org_id, config.environment
                    ),
                });
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!("cannot check the key file against the vault's public key: {e}");
            Ok(())
        }
    }
}

/// Starts the agent: returns once it is ready (first sync done, socket bound, `READY=1` sent).
/// Dropping the returned future before then leaves nothing running.
pub async fn start(config: AgentConfig, options: RunOptions) -> Result<Agent, RunError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let info = Arc::new(RunInfo::new(&config.org_id, &config.environment));
    if options.hygiene {
        let report = hygiene::apply();
        info.set_mlock(report.mlock);
    } else {
        info.set_mlock(MlockStatus::Off);
    }

    let token = tokenfile::read_token(&config.token_file)?;
    let key = load_key(&config.key_file)?;
    let ca_pem = match &config.ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| RunError::Ca {
            path: p.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let client = VaultClient::with_options(config.vault_url.as_str(), ClientOptions { ca_pem })
        .map_err(RunError::Client)?
        .with_token(token.clone());
    std::fs::create_dir_all(&config.state_dir).map_err(|source| RunError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;

    // HOOK(audit): the spooling auditor (state_dir + client) replaces the stub here.
    let auditor = Auditor::disabled();
    let state = AgentState::new(config.policy.clone(), auditor);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Tasks(vec![tokio::spawn(state.clone().run_expiry())]);

    let token_changed = Arc::new(Notify::new());
    let token_watch = {
        let client = client.clone();
        let changed = token_changed.clone();
        tokenfile::watch(&config.token_file, token, move |t| {
            client.set_token(t);
            changed.notify_one();
        })?
    };

    let syncer = Syncer {
        client,
        org: config.org_id.clone(),
        env: config.environment.clone(),
        key,
        state: state.clone(),
        info: info.clone(),
        timing: SyncTiming {
            wait: config.sync_wait,
            ..options.timing.clone()
        },
        grace_cap: config.grace_cap,
        token_changed,
        shutdown: stop_rx.clone(),
    };
    notify_status("syncing");
    let revision = syncer.first_sync().await?;
    tracing::info!(
        revision,
        secrets = state.view.read().expect("view lock").len(),
        "first sync done"
    );
    check_key(&syncer, &config).await?;

    // HOOK(fuse): mount the filesystem here when `config.mount` is Some (clean a stale mount
    // first), before the socket is bound and READY is sent:
    //     let mount = crate::agent::mount::mount(path, state.clone())?;
    // and keep the handle in `Agent` for the unmount in `shutdown`.
    if let Some(m) = &config.mount {
        tracing::debug!("filesystem mount at {} is not wired yet", m.display());
    }

    let listener = socket::bind(&config.socket)?;
    let ctx = Ctx {
        state: state.clone(),
        info: info.clone(),
        shutdown: stop_rx.clone(),
        keep_alive: options.keep_alive,
    };
    let server = tokio::spawn(socket::serve(listener, ctx));
    tasks.0.push(tokio::spawn(syncer.run(revision)));
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tasks.0.push(tokio::spawn(async move {
            loop {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(interval / 2).await;
            }
        }));
    }
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!(
        "agent ready: serving {}/{} on {}",
        config.org_id,
        config.environment,
        config.socket.display()
    );
    Ok(Agent {
        state,
        info,
        socket: config.socket,
        stop,
        server,
        tasks,
        _token_watch: token_watch,
    })
}

impl Agent {
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    pub fn info(&self) -> &Arc<RunInfo> {
        &self.info
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Orderly shutdown; see the module docs for the order.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        // Requests in flight get a few seconds; a client that holds its connection longer is
        // cut off.
        let mut server = self.server;
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(r)) => r.map_err(RunError::Serve),
            Ok(Err(e)) => Err(RunError::Serve(std::io::Error::other(e.to_string()))),
            Err(_) => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
                server.abort();
                Ok(())
            }
        };
        // HOOK(fuse): detach the mount lazily here (open readers finish).
        // HOOK(audit): flush the audit spool here.
        let tasks = std::mem::take(&mut self.tasks.0);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = std::fs::remove_file(&self.socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.socket.display());
        }
        // Drop every value now (zeroized), whoever still holds the state.
        *self.state.view.write().expect("view lock") = View::new();
        tracing::info!("stopped");
        served
    }
}

/// Runs the agent until `shutdown` resolves (or a start error), then shuts down in order.
pub async fn run(
    config: AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    tokio::pin!(shutdown);
    let agent = tokio::select! {
        a = start(config, options) => a?,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested before the agent was ready");
            return Ok(());
        }
    };
    shutdown.await;
    agent.shutdown().await
}
