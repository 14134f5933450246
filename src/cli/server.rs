//! `fyvault server` (run the vault) and `fyvault server init` (first admin token).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::cli::admin::{print_json, runtime, write_private_file};
use crate::vault::clock::now_ms;
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
    #[command(flatten)]
    pub db: DatabaseArg,
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
    let config = ServerConfig {
        data_dir: a.data_dir,
        listen: a.listen,
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        },
        trusted_proxies: a.trusted_proxy,
        database: a.db.url()?,
    };
    runtime()?.block_on(async move {
        let handle = crate::vault::start(config).await?;
        eprintln!("fyvault: vault listening on {}", handle.url());
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
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
