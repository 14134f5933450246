//! The PostgreSQL store: several stateless `fyvault server` instances over one database.
//!
//! - A small connection pool (`deadpool-postgres`); every operation is one transaction on one
//!   pooled connection, bounded by [`PgOptions::op_timeout`], so a request never hangs on a
//!   dead database: it fails with [`StoreError::Unavailable`] (the routes answer 503).
//! - Writers to one secret are serialized across instances with transaction-scoped advisory
//!   locks (one per `(org, secret name)`, one per idempotency key, always taken in that order);
//!   the environment row, updated for its revision, orders commits of one environment, so
//!   revisions become visible in increasing order and versions are consecutive.
//! - Every transaction that moves an environment's revision also does
//!   `pg_notify('fyvault_changes', 'org|env|revision')`, delivered at commit to every instance's
//!   LISTEN connection ([`feed::PgChangeFeed`]).
//! - Migrations are versioned (`schema_migrations`) and applied at start under an advisory
//!   lock, so two instances starting together migrate once.
//! - Lost connections: refused or broken connections trip a small breaker with capped
//!   exponential backoff (requests fail at once while it is open, one request probes after the
//!   backoff) that closes as soon as a connection succeeds again, also the LISTEN connection's.
//!
//! TLS is asked for in the URL (`sslmode=verify-full&sslrootcert=FILE`) and always verified
//! ([`tls`]); without it connections are plain (for a Unix socket, loopback or a private
//! network; the store warns when such a connection leaves the machine). The connection URL may
//! hold a password: it is never logged, only [`describe`]d (user, host, port, database).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{StoreError, StoreFuture};

mod audit;
pub mod feed;
mod floors;
mod rows;
mod schema;
mod secrets;
pub mod tls;
mod users;

pub use feed::PgChangeFeed;
pub use schema::SCHEMA_VERSION;
pub use tls::TlsChoice;

/// The NOTIFY channel of environment changes.
pub const CHANGES_CHANNEL: &str = "fyvault_changes";
/// The channel a token revocation notifies (payload: the token id), so every instance forgets
/// it from its [`crate::vault::token_cache::TokenCache`].
pub const TOKENS_CHANNEL: &str = "fyvault_tokens";

/// Tuning of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections this instance opens for requests (the LISTEN connection is extra).
    pub pool_size: usize,
    /// Bound on opening one connection (TCP + authentication).
    pub connect_timeout: Duration,
    /// Bound on one whole store operation, waiting for a pooled connection included.
    pub op_timeout: Duration,
    /// First and longest pause of the reconnect backoff (breaker and LISTEN connection).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// True for `postgres://…` and `postgresql://…` URLs.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A PostgreSQL connection URL. It may hold a password, so `Debug` shows only
/// `user@host:port/dbname`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts `postgres://…` / `postgresql://…` URLs that parse.
    pub fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::Backend(
                "the database must be a postgres:// URL (SQLite is the default: leave it unset)"
                    .into(),
            ));
        }
        parse_config(url, &PgOptions::default())?;
        Ok(DatabaseUrl(url.to_string()))
    }

    /// The URL itself (with its password, if any): only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `user@host:port/dbname`.
    pub fn describe(&self) -> String {
        tls::split_tls(&self.0)
            .ok()
            .and_then(|(url, _)| tokio_postgres::Config::from_str(&url).ok())
            .map(|c| describe(&c))
            .unwrap_or_else(|| "(invalid URL)".into())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.describe())
    }
}

/// `user@host:port/dbname` of a configuration: what logs and errors may show (no password).
pub fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// Parses a connection URL (or `key=value` string) and applies fyvault's defaults: a bounded
/// connect timeout, TCP keepalives and a TCP user timeout so a vanished server is noticed; and
/// the TLS it asks for ([`tls::split_tls`]), set on the configuration as its `sslmode`.
pub fn parse_config(
    url: &str,
    opts: &PgOptions,
) -> Result<(tokio_postgres::Config, TlsChoice), StoreError> {
    let (url, choice) = tls::split_tls(url)?;
    // The parser's message never repeats the URL (so never its password).
    let mut config = tokio_postgres::Config::from_str(&url)
        .map_err(|e| StoreError::Backend(format!("invalid database URL: {e}")))?;
    config.ssl_mode(match choice {
        TlsChoice::Off => tokio_postgres::config::SslMode::Disable,
        TlsChoice::Verified { .. } => tokio_postgres::config::SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(opts.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("fyvault");
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    #[cfg(target_os = "linux")]
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(15));
    }
    Ok((config, choice))
}

/// True when every host of `config` is a Unix socket or a loopback address.
fn stays_on_this_machine(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let host_local = |h: &Host| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    if !addrs.is_empty() {
        return addrs.iter().all(|a| a.is_loopback());
    }
    // No host at all: libpq's default, the local Unix socket.
    hosts.iter().all(host_local)
}

/// A database error as text: SQLSTATE and message, never the DETAIL (which can quote rows).
pub(super) fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        // tokio-postgres' own text leaves out the cause ("error performing TLS handshake"):
        // add the chain, which says why ("invalid peer certificate: UnknownIssuer").
        None => {
            let mut text = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let more = cause.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                src = cause.source();
            }
            text
        }
    }
}

/// True when the error says the connection or the server is gone (not a query problem).
pub(super) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now;
        // 53300: too many connections.
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300")
        }
        None => {
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                if s.is::<std::io::Error>() {
                    return true;
                }
                src = s.source();
            }
            false
        }
    }
}

/// True when an I/O timeout caused the error.
fn is_timeout(e: &tokio_postgres::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        src = s.source();
    }
    false
}

/// Maps a query error: lost connections are [`StoreError::Unavailable`].
pub(super) fn pe(e: tokio_postgres::Error) -> StoreError {
    if is_connection_error(&e) {
        StoreError::Unavailable(err_text(&e))
    } else {
        StoreError::Backend(err_text(&e))
    }
}

/// Maps a unique violation to `AlreadyExists(what)`, anything else like [`pe`].
pub(super) fn unique_as(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            StoreError::AlreadyExists(what)
        } else {
            pe(e)
        }
    }
}

pub(super) use crate::vault::store::{i, u};

/// Fail-fast state of the connection to the database, shared by the pool users and the
/// LISTEN task.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<BreakerState>,
    min: Duration,
    max: Duration,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Breaker {
    fn new(min: Duration, max: Duration) -> Self {
        Breaker {
            state: Mutex::new(BreakerState::default()),
            min,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` while the backoff after a failed connection runs.
    fn check(&self) -> Result<(), StoreError> {
        match self.lock().retry_at {
            Some(at) if Instant::now() < at => Err(StoreError::Unavailable(
                "the database is unreachable; the vault retries in the background".into(),
            )),
            _ => Ok(()),
        }
    }

    /// A connection failed: back off (capped exponential) before the next attempt.
    pub(crate) fn failed(&self) -> Duration {
        let mut s = self.lock();
        let delay = crate::retry::ceiling(self.min, self.max, s.failures);
        s.failures = s.failures.saturating_add(1);
        s.retry_at = Some(Instant::now() + delay);
        delay
    }

    /// A connection worked: requests go through again.
    pub(crate) fn succeeded(&self) {
        let mut s = self.lock();
        if s.failures > 0 {
            tracing::info!("database reachable again");
        }
        *s = BreakerState::default();
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    opts: PgOptions,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &describe(&self.config))
            .finish()
    }
}

impl PgStore {
    /// Connects to `url` with default options and applies pending migrations.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects and applies pending migrations. Fails (without retrying) when the database
    /// cannot be reached: the caller decides whether to retry.
    pub async fn connect_with(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let (config, choice) = parse_config(url, &opts)?;
        let tls = tls::connector(&choice)?;
        if choice == TlsChoice::Off && !stays_on_this_machine(&config) {
            tracing::warn!(database = %describe(&config),
                "connecting to PostgreSQL without TLS: add sslmode=verify-full (and \
                 sslrootcert=FILE) to the URL unless the network is private");
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.op_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("database pool: {e}")))?;
        let store = PgStore {
            pool,
            breaker: Arc::new(Breaker::new(opts.backoff_min, opts.backoff_max)),
            config,
            tls,
            opts,
        };
        let mut client = store.client().await?;
        let applied = schema::migrate(&mut client).await?;
        if applied > 0 {
            tracing::info!(database = %store.describe(), applied, "database schema migrated");
        }
        Ok(store)
    }

    /// Opens every pooled connection now (`fyvault server` does at start): a fleet that
    /// reconnects after a restart does not wait on connection setup, a PostgreSQL
    /// `max_connections` too small for the instances shows at start rather than under load, and
    /// the memory an open pool holds (~25 KiB per connection) is part of the vault's resting
    /// size, not left behind by the first burst. Logs how many opened; never fatal.
    pub async fn open_pool(&self) {
        let want = self.opts.pool_size.max(1);
        let got = futures_util::future::join_all((0..want).map(|_| self.pool.get())).await;
        let opened = got.iter().filter(|c| c.is_ok()).count();
        drop(got);
        if opened < want {
            tracing::warn!(
                opened,
                pool_size = want,
                "could not open every pooled database connection at start (PostgreSQL's \
                 max_connections?); the pool keeps trying as requests need them"
            );
        } else {
            tracing::info!(connections = opened, "database pool open");
        }
    }

    /// `user@host:port/dbname`, for logs.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector every connection of this store uses (also the LISTEN connection).
    pub(crate) fn pg_tls(&self) -> &MakeRustlsConnect {
        &self.tls
    }

    pub(crate) fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    /// A pooled connection, or `Unavailable` at once while the breaker is open.
    ///
    /// A connection the database refuses or drops opens the breaker; a slow one (a timeout)
    /// does not, since a loaded but healthy database would otherwise turn every request away.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.breaker.check()?;
        let e = match self.pool.get().await {
            Ok(c) => {
                self.breaker.succeeded();
                return Ok(c);
            }
            Err(e) => e,
        };
        let (text, trip) = match &e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                return Err(StoreError::Unavailable(
                    "every database connection is busy".into(),
                ));
            }
            PoolError::Timeout(_) => (e.to_string(), false),
            PoolError::Backend(pg) => (err_text(pg), !is_timeout(pg)),
            _ => (e.to_string(), true),
        };
        if trip {
            let delay = self.breaker.failed();
            tracing::warn!(database = %self.describe(), error = %text,
                retry_in_ms = delay.as_millis() as u64, "cannot connect to the database");
        } else {
            tracing::warn!(database = %self.describe(), error = %text,
                "connecting to the database timed out");
        }
        Err(StoreError::Unavailable(text))
    }

    /// Runs `fut` within [`PgOptions::op_timeout`].
    fn op<'a, T, F>(&'a self, fut: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        let limit = self.opts.op_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the database did not answer within {} ms",
                    limit.as_millis()
                ))),
            }
        })
    }
}

/// One store operation in one read-write transaction: `in_tx!(self, tx => BODY)`, where BODY
/// evaluates (with `.await?` inside) to the result.
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {{
        let store = $store;
        store.op(async move {
            let mut client = store.client().await?;
            let $tx = client.transaction().await.map_err(pe)?;
            let out = $body;
            $tx.commit().await.map_err(pe)?;
            Ok(out)
        })
    }};
}

/// A read of several statements on one consistent snapshot.
macro_rules! in_snapshot {
    ($store:expr, $tx:ident => $body:expr) => {{
        let store = $store;
        store.op(async move {
            let mut client = store.client().await?;
            let $tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pe)?;
            let out = $body;
            $tx.commit().await.map_err(pe)?;
            Ok(out)
        })
    }};
}

/// One statement on a pooled connection: `on_conn!(self, c => BODY)`.
macro_rules! on_conn {
    ($store:expr, $c:ident => $body:expr) => {{
        let store = $store;
        store.op(async move {
            let $c = store.client().await?;
            Ok($body)
        })
    }};
}

mod store_impl;

#[cfg(test)]
mod tests {
    use super::*;

    fn local(url: &str) -> bool {
        stays_on_this_machine(&parse_config(url, &PgOptions::default()).unwrap().0)
    }

    #[test]
    fn plain_connections_off_the_machine_are_told_apart() {
        assert!(local("postgres://u@localhost/db"));
        assert!(local("postgres://u@127.0.0.1:5433/db"));
        assert!(local("postgres://u@[::1]/db"));
        assert!(local("postgres://u@%2Fvar%2Frun%2Fpostgresql/db"));
        assert!(!local("postgres://u@db.internal/db"));
        assert!(!local("postgres://u@10.0.0.7/db"));
        assert!(!local("postgres://u@localhost,db.internal/db"));
    }

    #[test]
    fn the_tls_choice_becomes_the_sslmode() {
        use tokio_postgres::config::SslMode;
        let opts = PgOptions::default();
        let (c, choice) = parse_config("postgres://u@h/db", &opts).unwrap();
        assert_eq!(
            (c.get_ssl_mode(), choice),
            (SslMode::Disable, TlsChoice::Off)
        );
        let (c, _) = parse_config("postgres://u@h/db?sslmode=verify-full", &opts).unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        let url = DatabaseUrl::parse("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=%2Fca")
            .unwrap();
        assert_eq!(url.describe(), "u@h:5432/db");
    }
}
