//! `fyvault audit`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {}

pub fn run(_args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
