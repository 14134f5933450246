//! `fyvault server` (run the vault) and `fyvault server init` (first admin token).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::cli::admin::{print_json, runtime, write_private_file};
use crate::vault::clock::now_ms;
use crate::vault::limits::{Limits, raise_nofile, soft_nofile};
use crate::vault::store::Store;
use crate::vault::store::postgres::{DatabaseUrl, PgStore};
use crate::vault::store::sqlite::SqliteStore;
use crate::vault::{ServerConfig, TlsFiles};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of the SQLite database (`vault.db`), created 0700 if missing. Not used (and
    /// not created) with --database.
    #[arg(
        long,
        env = "FYVAULT_DATA_DIR",
        default_value = "/var/lib/fyvault-server"
    )]
    pub data_dir: PathBuf,
    /// Address to listen on. Without TLS only a loopback address is accepted.
    #[arg(long, env = "FYVAULT_LISTEN", default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,
    /// PEM certificate chain (enables HTTPS; needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A reverse proxy whose X-Forwarded-For is believed (repeatable; the environment
    /// variable takes a comma-separated list).
    #[arg(
        long,
        value_name = "IP",
        env = "FYVAULT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<IpAddr>,
    /// The vault's address as end users' browsers reach it (`https://vault.example.com`):
    /// the base of connect links. Default: this server's own URL.
    #[arg(long, value_name = "URL", env = "FYVAULT_PUBLIC_URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub db: DatabaseArg,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Connection caps (defaults follow the open-file limit; docs/vault.md).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Open client connections admitted at once [default: the open-file limit minus up to
    /// 256 kept for the store and logs].
    #[arg(long, env = "FYVAULT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Long-polls (agents) parked at once; below --max-connections so providers, admins and
    /// health checks always get in [default: the connection cap minus a tenth of it, at least
    /// 16, at most 1024].
    #[arg(long, env = "FYVAULT_MAX_LONG_POLLS", value_name = "N")]
    pub max_long_polls: Option<usize>,
    /// Listen queue length (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "FYVAULT_LISTEN_BACKLOG", value_name = "N",
          default_value_t = crate::vault::limits::DEFAULT_LISTEN_BACKLOG)]
    pub listen_backlog: u32,
    /// The longest Retry-After, in seconds, of a long-poll refused over the cap; each refusal
    /// names a figure from a sixth of it up to it, so refused agents come back spread out.
    #[arg(long, env = "FYVAULT_LONG_POLL_RETRY_AFTER", value_name = "SECONDS",
          default_value_t = crate::vault::limits::DEFAULT_LONG_POLL_RETRY_AFTER.as_secs())]
    pub long_poll_retry_after: u64,
}

impl LimitArgs {
    /// The limits for a process allowed `nofile` open files.
    pub fn limits(&self, nofile: u64) -> anyhow::Result<Limits> {
        let mut l = Limits::for_fd_limit(nofile);
        if let Some(n) = self.max_connections {
            l = l.with_max_connections(n);
        }
        if let Some(n) = self.max_long_polls {
            l.max_long_polls = n;
        }
        if l.max_long_polls >= l.max_connections {
            bail!(
                "--max-long-polls ({}) must be below --max-connections ({}): the difference is what providers and admins can always use",
                l.max_long_polls,
                l.max_connections
            );
        }
        l.listen_backlog = self.listen_backlog;
        l.long_poll_retry_after = Duration::from_secs(self.long_poll_retry_after.max(1));
        Ok(l)
    }
}

#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// PostgreSQL instead of the embedded SQLite: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (several instances may share one database). Prefer the environment variable, so a
    /// password never shows in the process list.
    #[arg(
        long = "database",
        env = "FYVAULT_DATABASE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

impl DatabaseArg {
    /// The PostgreSQL URL, if one is set (an empty value means SQLite).
    pub fn url(&self) -> anyhow::Result<Option<DatabaseUrl>> {
        match self.database.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => Ok(Some(DatabaseUrl::parse(url).context("--database")?)),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Create an admin token in the vault's database (data dir or --database), printed once.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of the SQLite database (`vault.db`), as for `fyvault server`. Not used with
    /// --database.
    #[arg(
        long,
        env = "FYVAULT_DATA_DIR",
        default_value = "/var/lib/fyvault-server"
    )]
    pub data_dir: PathBuf,
    /// Create another admin token even if one exists (recovery of a lost token).
    #[arg(long)]
    pub force: bool,
    /// Write the token to this file (0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub token_out: Option<PathBuf>,
    #[command(flatten)]
    pub db: DatabaseArg,
    /// Machine-readable output (with --token-out: `token_file`, the path, instead of `token`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ServerCommand::Init(a)) => init(a),
        None => serve(args.run),
    }
}

fn serve(a: RunArgs) -> anyhow::Result<ExitCode> {
    crate::cli::init_logging();
    crate::alloc::fix_mmap_threshold();
    let mut config = ServerConfig {
        data_dir: a.data_dir,
        listen: a.listen,
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        },
        trusted_proxies: a.trusted_proxy,
        database: a.db.url()?,
        limits: Limits::default(),
        public_url: a.public_url,
        open_pool_at_start: true,
    };
    config.check()?;
    let nofile = raise_nofile_logged();
    config.limits = a.limits.limits(nofile)?;
    runtime()?.block_on(async move {
        let handle = crate::vault::start(config).await?;
        eprintln!("fyvault: vault listening on {}", handle.url());
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Raises the soft open-file limit to the hard one (each agent holds a connection) and logs
/// the result; returns the limit in force.
fn raise_nofile_logged() -> u64 {
    match raise_nofile() {
        Ok(r) => {
            tracing::info!(
                before = r.before,
                soft = r.soft,
                hard = r.hard,
                "open-file limit (soft raised to the hard limit)"
            );
            if r.soft < 8192 {
                tracing::warn!(
                    soft = r.soft,
                    "a low open-file limit caps the agents this vault can hold; raise LimitNOFILE"
                );
            }
            r.soft
        }
        Err(e) => {
            let soft = soft_nofile();
            tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (store, place): (Arc<dyn Store>, String) = match a.db.url()? {
            Some(url) => {
                let store = PgStore::connect(url.expose())
                    .await
                    .with_context(|| format!("cannot open the database {}", url.describe()))?;
                (Arc::new(store), url.describe())
            }
            None => (
                Arc::new(open_store(&a.data_dir)?),
                a.data_dir.display().to_string(),
            ),
        };
        let live = store.count_live_admin_tokens(now_ms()).await?;
        if live > 0 && !a.force {
            bail!(
                "{place} already has {live} admin token(s); use `fyvault admin token admin` to make more, or --force to recover a lost one"
            );
        }
        let issued = crate::vault::bootstrap_admin_token(store.as_ref(), "server init", "system:init").await?;
        if let Some(path) = &a.token_out {
            let mut contents = zeroize::Zeroizing::new(issued.token.expose().to_vec());
            contents.push(b'\n');
            write_private_file(path, &contents)?;
        }
        if a.json {
            let mut v = serde_json::to_value(&issued)?;
            if let (Some(p), Some(o)) = (&a.token_out, v.as_object_mut()) {
                o.remove("token");
                o.insert("token_file".into(), p.display().to_string().into());
            }
            print_json(&v)?;
        } else {
            println!("admin token id: {}", issued.token_id);
            match &a.token_out {
                Some(p) => println!("admin token written to {} (mode 0600)", p.display()),
                None => {
                    println!("admin token (shown once, store it now):");
                    println!(
                        "{}",
                        std::str::from_utf8(issued.token.expose()).unwrap_or_default()
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(data_dir)
        .with_context(|| format!("cannot open the vault database in {}", data_dir.display()))
}
