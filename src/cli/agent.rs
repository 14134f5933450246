//! `fyvault agent --config FILE`: the host agent, in the foreground (systemd `Type=notify`).

use std::process::ExitCode;

use anyhow::Context as _;

use crate::agent::{config, run};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Path of the agent's TOML config.
    #[arg(long, global = true, default_value = "/etc/fyvault/agent.toml")]
    pub config: std::path::PathBuf,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Accept a deliberate vault restore: forget the rollback floor (of the named secrets, or
    /// of every secret) so that the agent takes the vault's older versions. Root only. Talks
    /// to the running agent through its socket, or rewrites the offline cache of a stopped one.
    AcceptRestore(super::accept_restore::AcceptRestoreArgs),
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(AgentCommand::AcceptRestore(a)) = args.command {
        return super::accept_restore::run(&args.config, a);
    }
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
