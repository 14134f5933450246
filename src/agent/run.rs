//! Wiring, readiness, shutdown: the only place that knows every part of the agent.
//!
//! Startup order (DESIGN §4.1): config (validated by the caller) → memory hygiene → token and
//! key → audit pipeline (spool in `state_dir`) → first full sync → mount (a stale mount left by
//! a crash is cleaned first) → bind the socket → `READY=1`. Then the sync loop, the token file
//! watch, the grace expiry task, the socket server, the supervisor (`STATUS=`, `WATCHDOG=1`;
//! see [`supervise`]) and, in the binary, the `SIGHUP` reload ([`reload`]) run until shutdown.
//!
//! Shutdown (SIGTERM/SIGINT, or the future given to [`run`]): `STOPPING=1`, stop accepting on
//! the socket and end event streams, stop syncing, detach the mount lazily and give open
//! readers a bounded time to finish, flush the audit spool (bounded), remove the socket file,
//! zeroize every held value, return.
//!
//! Tests start the agent in-process with [`start`] (or [`run`]) and a [`RunOptions`] that
//! skips process-wide hygiene and signal handling and shortens timings.

mod identity;
pub mod reload;
mod supervise;

pub use identity::{AGENT_ID_FILE, host_name};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::agent::audit::{AuditConfig, AuditError, Auditor};
use crate::agent::cache;
use crate::agent::config::AgentConfig;
use crate::agent::fs::ReadPathChoice;
use crate::agent::hygiene::{self, MlockStatus};
use crate::agent::mount::{MountError, Mounted};
use crate::agent::ship::VaultUplink;
use crate::agent::socket::wire::MountHealth;
use crate::agent::socket::{self, Ctx, RunInfo, SocketError};
use crate::agent::state::AgentState;
use crate::agent::sync::{SyncError, SyncTiming, Syncer};
use crate::agent::tokenfile::{self, TokenFileError, TokenWatch};
use crate::client::{ClientError, ClientOptions, VaultClient};
use crate::crypto::PrivateKey;

use self::reload::ReloadReport;

/// How long shutdown waits for socket requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for readers of files opened before the mount was detached.
const MOUNT_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown gives the audit shipper to get the spool acknowledged (what is left is
/// on disk and shipped at the next start).
const AUDIT_SHIP_GRACE: Duration = Duration::from_secs(5);
/// …and the disk half of the audit flush, on top.
const AUDIT_DISK_GRACE: Duration = Duration::from_secs(5);

/// Audit pipeline knobs (the binary uses the defaults; tests shorten them).
#[derive(Debug, Clone)]
pub struct AuditTuning {
    /// Record and ship access events (off: the disabled auditor).
    pub enabled: bool,
    pub coalesce_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub spool_max_bytes: u64,
}

impl Default for AuditTuning {
    fn default() -> Self {
        let d = AuditConfig::new(Path::new("/"), "x", None);
        AuditTuning {
            enabled: true,
            coalesce_window: d.coalesce_window,
            backoff_initial: d.backoff_initial,
            backoff_max: d.backoff_max,
            spool_max_bytes: d.spool_max_bytes,
        }
    }
}

/// How to run (the binary uses the defaults).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Make the process non-dumpable and lock its memory (process-wide: off for in-process
    /// tests).
    pub hygiene: bool,
    pub timing: SyncTiming,
    /// Interval of keep-alive comments on `/v1/events`.
    pub keep_alive: Duration,
    /// When the mount fails, keep running with the socket only (and say why in the health)
    /// instead of failing the start. `fyvault dev` sets it; a production agent must mount.
    pub mount_optional: bool,
    /// Re-read the config on `SIGHUP` (process-wide: off for in-process tests, which call
    /// [`Agent::reload`]).
    pub reload_on_sighup: bool,
    pub audit: AuditTuning,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            hygiene: true,
            timing: SyncTiming::default(),
            keep_alive: Duration::from_secs(15),
            mount_optional: false,
            reload_on_sighup: true,
            audit: AuditTuning::default(),
        }
    }
}

impl RunOptions {
    /// Options for an agent inside a test process: no process-wide hygiene or signal handling.
    pub fn in_process() -> Self {
        RunOptions {
            hygiene: false,
            reload_on_sighup: false,
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
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("audit spool in {path}: {source}")]
    Audit { path: PathBuf, source: AuditError },
    #[error("first sync: {0}")]
    Sync(#[from] SyncError),
    #[error("mount: {0}")]
    Mount(#[from] MountError),
    #[error("socket: {0}")]
    Socket(#[from] SocketError),
    #[error("the socket server failed: {0}")]
    Serve(std::io::Error),
}

/// Background tasks, aborted when dropped (so a start abandoned half-way leaves nothing).
/// The socket server until `start` hands it to the [`Agent`]: a failed start stops it and
/// removes the socket file it bound.
struct AbortOnDrop(Option<JoinHandle<std::io::Result<()>>>, PathBuf);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
            let _ = std::fs::remove_file(&self.1);
        }
    }
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Tasks {
    async fn stop(&mut self) {
        let tasks = std::mem::take(&mut self.0);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A started agent: serving, syncing, watching.
pub struct Agent {
    state: Arc<AgentState>,
    info: Arc<RunInfo>,
    config: Arc<Mutex<AgentConfig>>,
    socket: PathBuf,
    mount: Option<Mounted>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    /// Sync, supervisor, SIGHUP: stopped first on shutdown.
    tasks: Tasks,
    /// The grace expiry task: runs until the mount's readers are done.
    expiry: Tasks,
    _token_watch: TokenWatch,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("socket", &self.socket)
            .field("mount", &self.mount.as_ref().map(Mounted::path))
            .finish_non_exhaustive()
    }
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKey, RunError> {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the access-event pipeline: spool in `STATE_DIR/spool`, shipping through `client`.
fn start_auditor(
    config: &AgentConfig,
    client: &VaultClient,
    tuning: &AuditTuning,
) -> Result<Auditor, RunError> {
    if !tuning.enabled {
        return Ok(Auditor::disabled());
    }
    let err = |source| RunError::Audit {
        path: config.state_dir.join("spool"),
        source,
    };
    let agent_id = identity::agent_id(&config.state_dir, &config.org_id, &config.environment)
        .map_err(|source| RunError::StateDir {
            path: config.state_dir.join(AGENT_ID_FILE),
            source,
        })?;
    let mut ac = AuditConfig::new(&config.state_dir, agent_id.clone(), host_name());
    ac.coalesce_window = tuning.coalesce_window;
    ac.backoff_initial = tuning.backoff_initial;
    ac.backoff_max = tuning.backoff_max;
    ac.spool_max_bytes = config
        .audit_spool_max_bytes
        .unwrap_or(tuning.spool_max_bytes);
    let auditor =
        Auditor::start(ac, VaultUplink::new(client.clone(), config.org_id.clone())).map_err(err)?;
    let st = auditor.stats();
    tracing::info!(
        agent_id,
        backlog_events = st.backlog_events,
        corrupt_skipped = st.corrupt_skipped,
        "audit: spool open"
    );
    Ok(auditor)
}

/// Mounts the filesystem (blocking work on the blocking pool). With `optional`, a failure
/// leaves the agent serving the socket only and says why in the health.
async fn start_mount(
    path: Option<&Path>,
    (read_path, threads): (ReadPathChoice, usize),
    state: &Arc<AgentState>,
    info: &RunInfo,
    optional: bool,
) -> Result<Option<Mounted>, RunError> {
    let Some(path) = path else {
        info.set_mount(MountHealth {
            path: None,
            state: "off".into(),
            reason: None,
            read_path: None,
        });
        return Ok(None);
    };
    let (p, st) = (path.to_owned(), state.clone());
    let result =
        tokio::task::spawn_blocking(move || Mounted::start_configured(p, st, read_path, threads))
            .await
            .unwrap_or_else(|e| {
                Err(MountError::Session {
                    path: path.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
    let shown = Some(path.display().to_string());
    match result {
        Ok(m) => {
            info.set_mount(MountHealth {
                path: shown,
                state: "mounted".into(),
                reason: None,
                read_path: Some(m.read_path().as_str().into()),
            });
            Ok(Some(m))
        }
        Err(e) if optional => {
            let mut reason = e.to_string();
            if !nix::unistd::geteuid().is_root() {
                reason.push_str(
                    " (the agent mounts FUSE itself, with mount(2) and no fusermount3, which \
                     needs root or CAP_SYS_ADMIN)",
                );
            }
            tracing::warn!(
                "no filesystem at {}: {reason}; serving the socket only",
                path.display()
            );
            info.set_mount(MountHealth {
                path: shown,
                state: "unavailable".into(),
                reason: Some(reason),
                read_path: None,
            });
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the agent: returns once it is ready (first sync done, mounted, socket bound,
/// `READY=1` sent). Dropping the returned future before then leaves nothing running (a mount
/// made meanwhile is detached).
pub async fn start(config: AgentConfig, options: RunOptions) -> Result<Agent, RunError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // Before anything can take long: a SIGHUP must never kill the agent.
    let hangup = if options.reload_on_sighup {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(RunError::Signal)?,
        )
    } else {
        None
    };
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

    let auditor = start_auditor(&config, &client, &options.audit)?;
    let state = AgentState::new(config.policy.clone(), auditor);
    // User values stay sealed until read: the user table opens them with its own copy of the
    // key (zeroized with it).
    if let Ok(k) = PrivateKey::from_file_contents(key.to_file_contents().expose()) {
        state
            .users
            .set_opener(k, &config.org_id, &config.environment);
    }
    state.users.set_connector(crate::agent::users::Connector {
        client: client.clone(),
        org: config.org_id.clone(),
        env: config.environment.clone(),
    });
    state.set_delivery(config.delivery.clone());
    let (stop, stop_rx) = watch::channel(false);
    let expiry = Tasks(vec![tokio::spawn(state.clone().run_expiry())]);
    let mut tasks = Tasks(Vec::new());

    let token_changed = Arc::new(Notify::new());
    let token_watch = {
        let client = client.clone();
        let changed = token_changed.clone();
        tokenfile::watch(&config.token_file, token, move |t| {
            client.set_token(t);
            changed.notify_one();
        })?
    };

    // The offline cache: its rollback floor holds from the start, whatever the vault says;
    // its values are served only if the vault is unreachable now (and the cache is young).
    let cached = match cache::read(&config.state_dir, &key, &config.org_id, &config.environment) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    if let Some(c) = &cached {
        state.view.remember(c.floor());
        crate::agent::restore::record_offline(&state, c);
    }
    let servable = cached.as_ref().filter(|c| {
        let fresh = config.cache_max_age.is_some_and(|max| c.age() <= max);
        if !fresh {
            tracing::info!(
                "the offline cache is older than cache_max_age_seconds (or disabled): it keeps \
                 its rollback floor but is not served"
            );
        }
        fresh
    });
    let keeper = Arc::new(Mutex::new(cache::Keeper::new(
        &config.state_dir,
        &config.org_id,
        &config.environment,
        cached.clone(),
    )));

    // The socket answers from the first second (status, and why nothing is served yet).
    let listener = socket::bind(&config.socket)?;
    let ctx = Ctx {
        state: state.clone(),
        info: info.clone(),
        shutdown: stop_rx.clone(),
        keep_alive: options.keep_alive,
    };
    let mut server = AbortOnDrop(
        Some(tokio::spawn(socket::serve(listener, ctx))),
        config.socket.clone(),
    );

    let syncer = Syncer {
        cache: Some(keeper),
        client: client.with_own_connections().map_err(RunError::Client)?,
        org: config.org_id.clone(),
        env: config.environment.clone(),
        key,
        state: state.clone(),
        report: supervise::sync_reporter(state.clone(), info.clone()),
        timing: SyncTiming {
            wait: config.sync_wait,
            ..options.timing.clone()
        },
        grace_cap: config.grace_cap,
        token_changed,
        shutdown: stop_rx.clone(),
    };
    // The last known values, until the first sync replaces them (a full answer: what the
    // vault revoked meanwhile goes at once; an older version than the cache's is refused).
    if let Some(c) = servable {
        syncer.serve_cache(c);
    }
    supervise::notify_status("syncing");
    let revision = syncer.first_sync(servable).await?;
    tracing::info!(
        revision,
        secrets = state.view.summary().secrets,
        "first sync done"
    );
    check_key(&syncer, &config).await?;

    let mount = start_mount(
        config.mount.as_deref(),
        (config.fuse_read_path, config.fuse_threads),
        &state,
        &info,
        options.mount_optional,
    )
    .await?;

    let server = server.0.take().expect("the socket server runs");
    tasks.0.push(tokio::spawn(syncer.run(revision)));
    tasks.0.push(tokio::spawn(
        supervise::Supervisor {
            state: state.clone(),
            info: info.clone(),
            socket: config.socket.clone(),
            mount: mount.as_ref().map(|m| m.path().to_owned()),
            watchdog: sd_notify::watchdog_enabled(),
            stop: stop_rx.clone(),
        }
        .run(),
    ));
    let socket_path = config.socket.clone();
    let config = Arc::new(Mutex::new(config));
    if let Some(mut hup) = hangup {
        let (config, state) = (config.clone(), state.clone());
        tasks.0.push(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config");
                let mut msg = vec![sd_notify::NotifyState::Reloading];
                msg.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                let _ = sd_notify::notify(&msg);
                reload::reload_and_log(&mut lock(&config), &state);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }));
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        "agent ready: serving {}/{} on {}{}",
        info.org_id,
        info.environment,
        socket_path.display(),
        mount
            .as_ref()
            .map(|m| format!(" and {}", m.path().display()))
            .unwrap_or_default()
    );
    Ok(Agent {
        state,
        info,
        config,
        socket: socket_path,
        mount,
        stop,
        server,
        tasks,
        expiry,
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

    /// Where the filesystem is mounted (None: `fuse = false`, or the mount was optional and
    /// failed).
    pub fn mount_path(&self) -> Option<&Path> {
        self.mount.as_ref().map(Mounted::path)
    }

    /// Re-reads the config file and applies the access rules (what `SIGHUP` does).
    pub fn reload(&self) -> Result<ReloadReport, crate::agent::config::ConfigError> {
        reload::reload(&mut lock(&self.config), &self.state)
    }

    /// Orderly shutdown; see the module docs for the order.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        // 1. The socket: requests in flight get a few seconds; a client that holds its
        // connection longer is cut off.
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
        if let Err(e) = std::fs::remove_file(&self.socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.socket.display());
        }
        // 2. Sync, supervisor, reload.
        self.tasks.stop().await;
        // 3. The mount: detached at once (the path is free), open readers get a bounded time.
        if let Some(m) = self.mount.take() {
            let path = m.path().to_owned();
            self.info.set_mount(MountHealth {
                path: Some(path.display().to_string()),
                state: "detached".into(),
                reason: None,
                read_path: Some(m.read_path().as_str().into()),
            });
            match tokio::task::spawn_blocking(move || m.shutdown_timeout(MOUNT_GRACE)).await {
                Ok(Ok(())) => tracing::info!("{} unmounted", path.display()),
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!("unmounting {}: {e}", path.display()),
            }
        }
        self.expiry.stop().await;
        // 4. The audit spool: everything to disk, a bounded time to ship the rest.
        let auditor = self.state.auditor.clone();
        match tokio::time::timeout(
            AUDIT_SHIP_GRACE + AUDIT_DISK_GRACE,
            auditor.shutdown(AUDIT_SHIP_GRACE),
        )
        .await
        {
            Ok(Ok(o)) if o.shipped_all => tracing::info!("audit: everything shipped"),
            Ok(Ok(o)) => tracing::info!(
                "audit: {} events kept in the spool; they are shipped at the next start",
                o.backlog_events
            ),
            Ok(Err(e)) => tracing::warn!("audit: flush failed: {e}"),
            Err(_) => tracing::warn!("audit: the spool did not flush in time"),
        }
        // 5. Drop every value now (zeroized), whoever still holds the state.
        self.state.view.clear();
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
