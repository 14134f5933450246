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
    rt.block_on(async {
        // Before the mount: a signal arriving right after it must reach the orderly shutdown,
        // not kill the process and leave a dead mount behind.
        let signals = StopSignals::install().context("cannot install signal handlers")?;
        run::run(config, run::RunOptions::default(), signals.recv()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT, registered at once (their default action would kill the process).
pub(crate) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; must run inside the runtime.
    pub(crate) fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub(crate) async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
