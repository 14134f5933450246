//! `fyvault dev`: a vault on loopback and an agent for its `production` environment, in one
//! process, with an org, a provider, tokens and demo secrets; prints the curl commands for the
//! provider API and where to read the values. Facts go to `DATA_DIR/dev.json`.
//!
//! The agent is the real one (`agent::run`), with a config file written to
//! `DATA_DIR/agent.toml` at every start; `--no-agent` runs the vault alone so that
//! `fyvault agent --config DATA_DIR/agent.toml` can run as its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use crate::agent::{config as agent_config, run};
use crate::cli::admin::runtime;
use crate::cli::agent::StopSignals;
use crate::vault::ServerConfig;
use crate::vault::dev::{self, DevFacts, FACTS_FILE, write_private_atomic};

/// Files `fyvault dev` keeps in the data dir besides `dev.json` and the vault's own.
const AGENT_CONFIG_FILE: &str = "agent.toml";
const AGENT_TOKEN_FILE: &str = "agent.token";
const ADMIN_TOKEN_FILE: &str = "admin.token";
const PROVIDER_TOKEN_FILE: &str = "provider.token";
const AGENT_STATE_DIR: &str = "agent-state";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data directory (default: a fresh temporary directory, printed at start).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Loopback address of the vault.
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,
    /// Default grace period of the environment, seconds (default 300; kept on re-runs).
    #[arg(long)]
    pub grace: Option<u64>,
    /// Where the agent mounts the secrets (default /run/fyvault as root,
    /// $XDG_RUNTIME_DIR/fyvault otherwise).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// The agent's socket (default /run/fyvault.sock as root, $XDG_RUNTIME_DIR/fyvault.sock
    /// otherwise).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Run the vault alone; `agent_config` in dev.json is ready for
    /// `fyvault agent --config …` (with --mount and --socket in it).
    #[arg(long)]
    pub no_agent: bool,
    /// Serve the socket only: the agent mounts no filesystem (`fuse = false`).
    #[arg(long)]
    pub no_mount: bool,
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let dir = base.join(crate::crypto::random_id("fyvault-dev"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("cannot create a data directory"),
        }
    }
    bail!("cannot create a fresh data directory in {}", base.display())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `--mount` / `--socket`, or their defaults: `/run/…` as root, `$XDG_RUNTIME_DIR/…` otherwise.
fn agent_paths(
    mount: Option<PathBuf>,
    socket: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let base = || -> anyhow::Result<PathBuf> {
        if is_root() {
            return Ok(PathBuf::from("/run"));
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(d) => Ok(PathBuf::from(d)),
            None => bail!(
                "XDG_RUNTIME_DIR is not set, so there is no default place for the agent's mount \
                 and socket; pass --mount DIR and --socket PATH (or run as root for /run/fyvault)"
            ),
        }
    };
    let mount = match mount {
        Some(m) => m,
        None => base()?.join("fyvault"),
    };
    let socket = match socket {
        Some(s) => s,
        None => base()?.join("fyvault.sock"),
    };
    let abs = |p: PathBuf| std::path::absolute(&p).with_context(|| format!("{}", p.display()));
    let (mount, socket) = (abs(mount)?, abs(socket)?);
    if mount == socket {
        bail!("--mount and --socket must differ");
    }
    Ok((mount, socket))
}

#[derive(Serialize)]
struct AgentToml<'a> {
    vault_url: &'a str,
    org_id: &'a str,
    environment: &'a str,
    token_file: &'a Path,
    key_file: &'a Path,
    socket: &'a Path,
    mount: &'a Path,
    fuse: bool,
    state_dir: &'a Path,
    group: &'a str,
    access: AccessToml,
}

#[derive(Serialize)]
struct AccessToml {
    rule: Vec<RuleToml>,
}

#[derive(Serialize)]
struct RuleToml {
    secrets: Vec<String>,
    users: Vec<u32>,
}

/// Users granted every dev secret besides root: the user running `fyvault dev`, and the user
/// behind `sudo` when there is one.
fn dev_readers() -> Vec<u32> {
    let mut uids = Vec::new();
    let me = nix::unistd::getuid().as_raw();
    if me != 0 {
        uids.push(me);
    }
    if let Some(uid) = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse::<u32>().ok())
        && uid != 0
        && !uids.contains(&uid)
    {
        uids.push(uid);
    }
    uids
}

/// Writes the agent's token file and config into the data dir (both 0600); returns the
/// config's path.
fn write_agent_files(
    data_dir: &Path,
    facts: &DevFacts,
    mount: &Path,
    socket: &Path,
    fuse: bool,
) -> anyhow::Result<PathBuf> {
    let token = facts
        .agent_token
        .as_deref()
        .context("dev.json has no agent token")?;
    let token_file = data_dir.join(AGENT_TOKEN_FILE);
    write_private_atomic(&token_file, format!("{token}\n").as_bytes())?;
    let readers = dev_readers();
    let toml = AgentToml {
        vault_url: &facts.url,
        org_id: &facts.org_id,
        environment: &facts.environment,
        token_file: &token_file,
        key_file: &facts.environment_key_file,
        socket,
        mount,
        fuse,
        state_dir: &data_dir.join(AGENT_STATE_DIR),
        group: "",
        access: AccessToml {
            rule: if readers.is_empty() {
                Vec::new()
            } else {
                vec![RuleToml {
                    secrets: vec!["*".into()],
                    users: readers,
                }]
            },
        },
    };
    let body = toml::to_string(&toml).context("cannot write the agent config")?;
    let text = format!(
        "# The dev agent's config, written by `fyvault dev` at every start (edits are lost).\n\
         # Run it on its own with: fyvault agent --config {}\n{body}",
        data_dir.join(AGENT_CONFIG_FILE).display()
    );
    let path = data_dir.join(AGENT_CONFIG_FILE);
    write_private_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Single-quotes `p` for a shell when it needs it.
fn shell(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What the dev agent ended up serving.
enum AgentState {
    Off,
    Running {
        mounted: Option<PathBuf>,
        mount_problem: Option<String>,
    },
}

fn print_walkthrough(
    facts: &DevFacts,
    data_dir: &Path,
    grace: u64,
    agent: &AgentState,
    config_path: &Path,
    mount: &Path,
    socket: &Path,
) {
    println!("fyvault dev: vault at {}", facts.url);
    println!("data dir:     {}", data_dir.display());
    println!("facts:        {}", data_dir.join(FACTS_FILE).display());
    println!("org:          {}", facts.org_id);
    println!(
        "environment:  {} (grace {grace} s, private key {})",
        facts.environment,
        facts.environment_key_file.display()
    );
    println!("provider:     {}", facts.provider_id);
    match agent {
        AgentState::Off => {
            println!("agent:        not started (--no-agent); run it with:");
            println!("  fyvault agent --config {}", shell(config_path));
        }
        AgentState::Running {
            mounted,
            mount_problem,
        } => {
            println!("agent:        socket {}", socket.display());
            match (mounted, mount_problem) {
                (Some(m), _) => println!("mount:        {}", m.display()),
                (None, Some(why)) => println!(
                    "mount:        none: {why}\n              (values are readable through the \
                     socket only)"
                ),
                (None, None) => println!("mount:        none (--no-mount; the socket only)"),
            }
            println!("agent config: {}", config_path.display());
        }
    }
    println!();
    println!("Try the provider API:");
    println!();
    print!("{}", dev::curl_commands(facts));
    println!();
    println!("Read the value as an app would:");
    let no_mount = matches!(agent, AgentState::Running { mounted: None, .. });
    if !no_mount {
        println!("  cat {}", shell(&mount.join("STRIPE_SK")));
    }
    println!("  fyvault get STRIPE_SK --socket {}", shell(socket));
    println!();
    println!("See who read it:");
    println!(
        "  fyvault audit --url {} --token-file {} --org {} --secret STRIPE_SK",
        facts.url,
        shell(&data_dir.join(ADMIN_TOKEN_FILE)),
        facts.org_id
    );
    println!();
    println!("Open the studio (the web dashboard):");
    println!("  {}", dev::studio_url(facts));
    println!("Sign in at once with this link (it carries this dev vault's admin token, in the");
    println!("fragment, which the browser never sends to any server):");
    println!("  {}", dev::studio_sign_in_link(facts));
    println!();
    println!("Ready. Ctrl-C to stop.");
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    crate::cli::init_logging();
    let (mount, socket) = agent_paths(args.mount, args.socket)?;
    let data_dir = match args.data_dir {
        Some(d) => std::path::absolute(&d).context("--data-dir")?,
        None => fresh_dir()?,
    };
    runtime()?.block_on(async move {
        // First of all: Ctrl-C or SIGTERM at any later point unmounts and exits cleanly.
        let signals = StopSignals::install().context("cannot install signal handlers")?;
        let stop = signals.recv();
        tokio::pin!(stop);
        let (store, mut facts) = dev::bootstrap(&data_dir, args.grace).await?;
        let config = ServerConfig::new(&data_dir, args.listen);
        let handle = crate::vault::start_with_store(config, store.clone()).await?;
        facts.url = handle.url();
        write_private_atomic(
            &data_dir.join(ADMIN_TOKEN_FILE),
            format!("{}\n", facts.admin_token).as_bytes(),
        )?;
        // `fyvault provider push --token-file` takes the token only from a file.
        write_private_atomic(
            &data_dir.join(PROVIDER_TOKEN_FILE),
            format!("{}\n", facts.provider_token).as_bytes(),
        )?;
        let config_path = write_agent_files(&data_dir, &facts, &mount, &socket, !args.no_mount)?;
        facts.agent_config = Some(config_path.clone());
        facts.mount = Some(mount.clone());
        facts.socket = Some(socket.clone());
        facts.save(&data_dir)?;
        let env = store
            .get_environment(&facts.org_id, &facts.environment)
            .await?
            .context("the dev environment vanished")?;

        let agent = if args.no_agent {
            None
        } else {
            if let Some(dir) = socket.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let config = agent_config::load(&config_path)?;
            let options = run::RunOptions {
                // Locking all memory is for root here: without CAP_IPC_LOCK, MCL_FUTURE
                // would make the in-process vault's allocations fail at the memlock limit.
                hygiene: is_root(),
                mount_optional: true,
                ..run::RunOptions::default()
            };
            tokio::select! {
                a = run::start(config, options) => Some(a.context("the dev agent")?),
                _ = &mut stop => {
                    eprintln!("fyvault dev: stopping");
                    handle.shutdown().await;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        };
        let state = match &agent {
            None => AgentState::Off,
            Some(a) => AgentState::Running {
                mounted: a.mount_path().map(Path::to_owned),
                mount_problem: a.info().mount().and_then(|m| m.reason),
            },
        };
        if let AgentState::Running { mounted, .. } = &state {
            facts.extra.insert(
                "mount_active".into(),
                serde_json::Value::Bool(mounted.is_some()),
            );
        }
        // `pid` marks the facts of a dev process that is up and ready.
        facts
            .extra
            .insert("pid".into(), serde_json::Value::from(std::process::id()));
        facts.save(&data_dir)?;
        print_walkthrough(
            &facts,
            &data_dir,
            env.default_grace_seconds,
            &state,
            &config_path,
            &mount,
            &socket,
        );
        stop.await;
        eprintln!("fyvault dev: stopping");
        // The agent first: it flushes its audit spool to the vault.
        let result = match agent {
            Some(a) => a.shutdown().await.context("the dev agent"),
            None => Ok(()),
        };
        handle.shutdown().await;
        facts.extra.remove("pid");
        facts.extra.remove("mount_active");
        facts.save(&data_dir)?;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quotes_only_when_needed() {
        assert_eq!(shell(Path::new("/run/fyvault.sock")), "/run/fyvault.sock");
        assert_eq!(shell(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn explicit_paths_need_no_runtime_dir() {
        let (m, s) = agent_paths(
            Some(PathBuf::from("/tmp/x/mnt")),
            Some(PathBuf::from("/tmp/x/s.sock")),
        )
        .unwrap();
        assert_eq!(m, Path::new("/tmp/x/mnt"));
        assert_eq!(s, Path::new("/tmp/x/s.sock"));
        assert!(agent_paths(Some(PathBuf::from("/a")), Some(PathBuf::from("/a"))).is_err());
    }
}
