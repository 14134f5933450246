//! `fyvault agent accept-restore [--secret NAME]…`: the operator's explicit acceptance of a
//! deliberate vault restore (see `crate::agent::restore` and docs/agent.md, "Rollback
//! protection"). A running agent is told through its socket (root only); when no agent
//! answers on the socket, the stopped agent's offline cache is rewritten instead.

use std::io::ErrorKind;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::get::{AgentUnreachable, request_method, runtime};
use crate::agent::restore::{self, Accepted, Selection};
use crate::agent::{config, run};

#[derive(Debug, clap::Args)]
pub struct AcceptRestoreArgs {
    /// Only this secret (repeatable); without it, every secret's floor is forgotten.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
}

pub fn run(config_path: &Path, args: AcceptRestoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "accepting a vault restore is for root only"
    );
    let config = config::load(config_path)?;
    let selection: Selection = if args.secrets.is_empty() {
        None
    } else {
        for n in &args.secrets {
            anyhow::ensure!(
                crate::api::valid_secret_name(n),
                "{n:?} is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)"
            );
        }
        let mut s = args.secrets.clone();
        s.sort();
        s.dedup();
        Some(s)
    };
    let path = match &selection {
        None => "/v1/accept-restore".to_owned(),
        Some(names) => format!("/v1/accept-restore?secret={}", names.join(",")),
    };
    let accepted =
        match runtime()?.block_on(request_method(&config.socket, hyper::Method::POST, &path)) {
            Ok(answer) if answer.status.is_success() => {
                serde_json::from_slice::<Accepted>(&answer.body)
                    .context("the agent's answer to accept-restore is not understood")?
            }
            Ok(answer) => return Err(answer.error()),
            // No agent listening: a stopped agent, whose cache is rewritten.
            Err(e)
                if e.downcast_ref::<AgentUnreachable>().is_some_and(|u| {
                    matches!(
                        u.source.kind(),
                        ErrorKind::NotFound | ErrorKind::ConnectionRefused
                    )
                }) =>
            {
                crate::cli::init_logging();
                let key = run::load_key(&config.key_file)?;
                restore::accept_offline(
                    &config.state_dir,
                    &key,
                    &config.org_id,
                    &config.environment,
                    selection,
                )?
            }
            Err(e) => return Err(e),
        };
    let what = if accepted.scope == "all" {
        "every secret".to_owned()
    } else {
        accepted.secrets.join(", ")
    };
    println!(
        "restore accepted for {what} ({}): the rollback floor is forgotten; the agent takes the \
         vault's versions as they are{}",
        accepted.applied_to,
        if accepted.refusals_cleared.is_empty() {
            String::new()
        } else {
            format!(
                " (no longer refusing: {})",
                accepted.refusals_cleared.join(", ")
            )
        }
    );
    Ok(ExitCode::SUCCESS)
}
