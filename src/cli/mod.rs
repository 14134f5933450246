//! The command line: one file per command family. `main` parses and dispatches; each family's
//! `run` returns `anyhow::Result` and errors are printed as one line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod accept_restore;
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
    quiet_on_broken_stdout();
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
        Err(e) if is_broken_pipe(&e) => broken_pipe_exit(),
        Err(e) => {
            eprintln!("fyvault: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of a command whose stdout was closed by its reader (`fyvault status | head
/// -1`): what a shell reports for a process killed by SIGPIPE, and nothing on stderr.
const BROKEN_PIPE_STATUS: i32 = 128 + libc::SIGPIPE;

fn broken_pipe_exit() -> ! {
    std::process::exit(BROKEN_PIPE_STATUS)
}

/// Rust ignores SIGPIPE, so a write to a closed stdout fails with EPIPE, and `println!` panics
/// on that failure ("failed printing to stdout: Broken pipe"). Every command writes to stdout
/// through `println!`/`write!`: the panic hook turns exactly that panic into a quiet exit;
/// every other panic keeps the default report. (Restoring SIGPIPE's default action instead
/// would also kill the agent and the vault on a client's closed socket.)
fn quiet_on_broken_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            broken_pipe_exit();
        }
        default(info);
    }));
}

/// Is this error, anywhere in its chain, a write to a closed pipe?
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
