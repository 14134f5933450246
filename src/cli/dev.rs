//! `fyvault dev`: a vault on loopback with an org, an environment, a provider and tokens,
//! ready for the printed curl commands. Facts go to `DATA_DIR/dev.json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::cli::admin::runtime;
use crate::cli::server::shutdown_signal;
use crate::vault::ServerConfig;
use crate::vault::dev::{self, FACTS_FILE};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data directory (default: a fresh temporary directory, printed at start).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Loopback address of the vault.
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,
    /// Default grace period of the environment, seconds (default 300; kept on re-runs).
    #[arg(long)]
    pub grace: Option<u64>,
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let dir = base.join(crate::crypto::random_id("fyvault-dev"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("cannot create a data directory"),
        }
    }
    anyhow::bail!("cannot create a fresh data directory in {}", base.display())
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    crate::cli::init_logging();
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => fresh_dir()?,
    };
    runtime()?.block_on(async move {
        let (store, mut facts) = dev::bootstrap(&data_dir, args.grace).await?;
        let config = ServerConfig::new(&data_dir, args.listen);
        let handle = crate::vault::start_with_store(config, store.clone()).await?;
        facts.url = handle.url();
        facts.save(&data_dir)?;
        let env = store
            .get_environment(&facts.org_id, &facts.environment)
            .await?
            .context("the dev environment vanished")?;
        println!("fyvault dev: vault at {}", facts.url);
        println!("data dir:     {}", data_dir.display());
        println!("facts:        {}", data_dir.join(FACTS_FILE).display());
        println!("org:          {}", facts.org_id);
        println!(
            "environment:  {} (grace {} s, private key {})",
            facts.environment,
            env.default_grace_seconds,
            facts.environment_key_file.display()
        );
        println!("provider:     {}", facts.provider_id);
        println!();
        println!("Try the provider API:");
        println!();
        print!("{}", dev::curl_commands(&facts));
        println!();
        println!("Ready. Ctrl-C to stop.");
        shutdown_signal().await;
        eprintln!("fyvault dev: stopping");
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
