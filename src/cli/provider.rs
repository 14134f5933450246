//! `fyvault provider`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ProviderArgs {}

pub fn run(_args: ProviderArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
