//! The command line: one file per command family. `main` parses and dispatches; each family's
//! `run` returns `anyhow::Result` and errors are printed as one line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod admin;
pub mod agent;
pub mod audit;
pub mod dev;
pub mod get;
pub mod provider;
pub mod run;
pub mod server;

#[derive(Debug, Parser)]
#[command(name = "fyvault", version, about = "Secrets without copyable strings")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a vault and an agent in one process on loopback, with demo data.
    Dev(dev::DevArgs),
    /// Run the vault server (or `server init` to create the first admin token).
    Server(server::ServerArgs),
    /// Administer orgs, environments, providers and tokens.
    Admin(admin::AdminArgs),
    /// Push, rotate or revoke a credential as a provider (seals client-side).
    Provider(provider::ProviderArgs),
    /// Query the audit trail.
    Audit(audit::AuditArgs),
    /// Run the host agent.
    Agent(agent::AgentArgs),
    /// Print a secret's value from the local agent (exact bytes).
    Get(get::GetArgs),
    /// List the secrets the local agent lets you read.
    Ls(get::LsArgs),
    /// Show the local agent's health.
    Status(get::StatusArgs),
    /// Run a command with the secrets you may read in its environment.
    Run(run::RunArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(a) => dev::run(a),
        Command::Server(a) => server::run(a),
        Command::Admin(a) => admin::run(a),
        Command::Provider(a) => provider::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Get(a) => get::run_get(a),
        Command::Ls(a) => get::run_ls(a),
        Command::Status(a) => get::run_status(a),
        Command::Run(a) => run::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fyvault: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging to stderr from `FYVAULT_LOG` / `RUST_LOG` (default `info`); colours only
/// when stderr is a terminal (never in journald or a captured log).
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FYVAULT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
