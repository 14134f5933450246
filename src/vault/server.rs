//! Listening, TLS, the connection loop and graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::vault::error::VaultError;
use crate::vault::fanout::Fanout;
use crate::vault::limits::{Admission, Limits};
use crate::vault::listener;
use crate::vault::store::Store;
use crate::vault::store::postgres::{DatabaseUrl, PgChangeFeed, PgStore};
use crate::vault::store::sqlite::SqliteStore;
use crate::vault::sync::{ChangeFeed, LocalChangeFeed};
use crate::vault::token_cache::TokenCache;
use crate::vault::{AppState, routes};

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to run a vault.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `vault.db` lives (created 0700 if missing).
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (see [`ServerHandle::local_addr`]).
    pub listen: SocketAddr,
    /// TLS; without it only a loopback `listen` is accepted.
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// PostgreSQL instead of `data_dir/vault.db` (several instances over one database).
    pub database: Option<DatabaseUrl>,
    /// Connection caps, timeouts and the listen backlog.
    pub limits: Limits,
    /// Base of connect links (`<public_url>/connect/<token>`); `None`: this server's own URL.
    pub public_url: Option<String>,
    /// PostgreSQL: open every pooled connection at start ([`PgStore::open_pool`]).
    /// `fyvault server` does; tests, which start many stores at once, do not.
    pub open_pool_at_start: bool,
}

impl ServerConfig {
    /// Plain HTTP on `listen` (must be loopback) with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            tls: None,
            trusted_proxies: Vec::new(),
            database: None,
            limits: Limits::default(),
            public_url: None,
            open_pool_at_start: false,
        }
    }
}

/// A running vault. Dropping the handle starts a graceful shutdown.
pub struct ServerHandle {
    addr: SocketAddr,
    tls: bool,
    store: Arc<dyn Store>,
    fanout: Arc<Fanout>,
    /// The LISTEN connection of a PostgreSQL store (ends when the handle goes).
    pg_feed: Option<Arc<PgChangeFeed>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The store the server uses.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Whether the PostgreSQL LISTEN connection is up (`None` on SQLite).
    pub fn listening(&self) -> Option<bool> {
        self.pg_feed.as_ref().map(|f| f.is_listening())
    }

    /// Long-polls currently held for an environment (observability, tests).
    pub fn held_long_polls(&self, org_id: &str, env: &str) -> usize {
        self.fanout.parked(org_id, env)
    }

    /// Store reads made to answer woken long-polls: one per change with parked polls, however
    /// many it wakes (observability, tests).
    pub fn shared_sync_reads(&self) -> u64 {
        self.fanout.shared_reads()
    }

    /// Store reads long-polls made for themselves (not answered by what the fanout knew).
    pub fn own_sync_reads(&self) -> u64 {
        self.fanout.own_reads()
    }

    /// Asks the server to stop: no new connections, long-polls answer at once, open
    /// connections get a few seconds to finish.
    pub fn trigger_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops the server and waits until it has.
    pub async fn shutdown(mut self) {
        self.trigger_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (after [`ServerHandle::trigger_shutdown`] from elsewhere).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Opens the store (`DATA_DIR/vault.db`, or PostgreSQL when `database` is set) and starts
/// serving.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, VaultError> {
    check_listen(&config)?;
    if let Some(url) = &config.database {
        let store = PgStore::connect(url.expose()).await?;
        if config.open_pool_at_start {
            store.open_pool().await;
        }
        let local = Arc::new(LocalChangeFeed::new());
        let tokens = Arc::new(TokenCache::new());
        let feed = Arc::new(PgChangeFeed::start(&store, local.clone(), tokens.clone()));
        if !feed.wait_listening(store.options().connect_timeout).await {
            tracing::warn!("no LISTEN connection yet: cross-instance wake-ups start once it is up");
        }
        tracing::info!(database = %store.describe(), "using PostgreSQL");
        return start_inner(config, Arc::new(store), local, Some(feed), tokens).await;
    }
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir))
        .await
        .map_err(|_| VaultError::Io("opening the store failed".into()))??;
    start_with_store(config, Arc::new(store)).await
}

fn check_listen(config: &ServerConfig) -> Result<(), VaultError> {
    config.check()
}

impl ServerConfig {
    /// Refuses what [`start`] would refuse before touching anything: plain HTTP off loopback.
    pub fn check(&self) -> Result<(), VaultError> {
        if self.tls.is_none() && !self.listen.ip().to_canonical().is_loopback() {
            return Err(VaultError::PlainHttpNotLoopback(self.listen));
        }
        Ok(())
    }
}

/// Starts serving with a given store (tests, `fyvault dev`, other backends).
pub async fn start_with_store(
    config: ServerConfig,
    store: Arc<dyn Store>,
) -> Result<ServerHandle, VaultError> {
    start_inner(
        config,
        store,
        Arc::new(LocalChangeFeed::new()),
        None,
        Arc::new(TokenCache::new()),
    )
    .await
}

async fn start_inner(
    config: ServerConfig,
    store: Arc<dyn Store>,
    feed: Arc<LocalChangeFeed>,
    pg_feed: Option<Arc<PgChangeFeed>>,
    tokens: Arc<TokenCache>,
) -> Result<ServerHandle, VaultError> {
    check_listen(&config)?;
    let acceptor = config.tls.as_ref().map(load_tls).transpose()?;
    let listener = listener::bind(config.listen, config.limits.listen_backlog)?;
    let addr = listener
        .local_addr()
        .map_err(|e| VaultError::Io(e.to_string()))?;
    let (tx, rx) = watch::channel(false);
    let app_feed: Arc<dyn ChangeFeed> = match &pg_feed {
        Some(f) => f.clone(),
        None => feed.clone(),
    };
    let admission = Arc::new(Admission::new(config.limits.clone()));
    crate::vault::trim::spawn(admission.clone(), rx.clone());
    let fanout = Arc::new(Fanout::new(store.clone(), app_feed.clone(), rx.clone()));
    let own_url = format!(
        "{}://{addr}",
        if acceptor.is_some() { "https" } else { "http" }
    );
    let public_url = config
        .public_url
        .as_deref()
        .unwrap_or(&own_url)
        .trim_end_matches('/')
        .to_string();
    let state = AppState {
        public_url: Arc::from(public_url),
        store: store.clone(),
        feed: app_feed,
        fanout: fanout.clone(),
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        shutdown: rx.clone(),
        admission: admission.clone(),
        tls: acceptor.is_some(),
        tokens,
    };
    let app = routes::router(state.clone());
    let tls = acceptor.is_some();
    match &config.database {
        Some(db) => tracing::info!(%addr, tls, database = %db.describe(), "vault listening"),
        None => {
            tracing::info!(%addr, tls, data_dir = %config.data_dir.display(), "vault listening")
        }
    }
    tracing::info!(
        max_connections = config.limits.max_connections,
        max_long_polls = config.limits.max_long_polls,
        listen_backlog = config.limits.listen_backlog,
        header_read_timeout_s = config.limits.header_read_timeout.as_secs_f64(),
        idle_timeout_s = config.limits.idle_timeout.as_secs_f64(),
        "admission limits"
    );
    let task = tokio::spawn(listener::accept_loop(listener, acceptor, app, state, rx));
    Ok(ServerHandle {
        addr,
        tls,
        store,
        fanout,
        pg_feed,
        shutdown: tx,
        task: Some(task),
    })
}

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, VaultError> {
    crate::client::install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| VaultError::Tls(format!("certificate {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(VaultError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| VaultError::Tls(format!("private key {}: {e}", files.key.display())))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| VaultError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
