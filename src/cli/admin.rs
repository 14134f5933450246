//! `fyvault admin`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {}

pub fn run(_args: AdminArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
