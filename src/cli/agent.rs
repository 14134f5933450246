//! `fyvault agent --config FILE`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Path of the agent's TOML config.
    #[arg(long, default_value = "/etc/fyvault/agent.toml")]
    pub config: std::path::PathBuf,
}

pub fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
