//! `fyvault get | ls | status`: clients of the local agent's socket.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub name: String,
    #[arg(long)]
    pub previous: bool,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub fn run_get(_args: GetArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

pub fn run_ls(_args: LsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

pub fn run_status(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
