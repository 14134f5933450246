//! `fyvault agent --config FILE`: the host agent, in the foreground (systemd `Type=notify`).

use std::process::ExitCode;

use anyhow::Context as _;

use crate::agent::{config, run};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Path of the agent's TOML config.
    #[arg(long, default_value = "/etc/fyvault/agent.toml")]
    pub config: std::path::PathBuf,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Validated before anything else happens; a mistake is one line naming the key.
    let config = config::load(&args.config)?;
    crate::cli::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run::run(
        config,
        run::RunOptions::default(),
        shutdown_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
