//! `fyvault admin`: orgs, environments (key pair made here, only the public key uploaded),
//! providers, tokens. The admin token comes from `--token-file` or `FYVAULT_ADMIN_TOKEN`, never
//! from argv. Every command has `--json` for scripts.
//!
//! Also holds the small helpers the other vault-client commands share.

mod secret;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::api::{
    CreateEnvironmentRequest, CreateProviderRequest, CreateTokenRequest, IssuedToken,
    TokenListQuery, UpdateEnvironmentRequest,
};
use crate::client::{ClientOptions, VaultClient};
use crate::crypto::{PrivateKey, TokenKind};
use crate::secret::Secret;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Where and how to reach the vault (shared by admin, provider and audit commands).
#[derive(Debug, Clone, Args)]
pub struct VaultConn {
    /// Vault URL.
    #[arg(
        long,
        env = "FYVAULT_URL",
        default_value = "http://127.0.0.1:8200",
        global = true
    )]
    pub url: String,
    /// PEM CA bundle to trust instead of the system roots (private CA, self-signed vault).
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// File holding the token (the token is never taken from the command line).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A small runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Reads a token from `file`, else from the environment variable `env_var`.
pub(crate) fn load_token(file: Option<&Path>, env_var: &str) -> anyhow::Result<Secret> {
    let raw: Zeroizing<Vec<u8>> = match file {
        Some(path) => Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
        ),
        None => match std::env::var_os(env_var) {
            Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            None => bail!("no token: give --token-file FILE or set {env_var}"),
        },
    };
    let text = std::str::from_utf8(&raw).context("the token is not text")?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(Secret::copy_from(token.as_bytes()))
}

/// A client for `conn`, holding the token from `--token-file` / `env_var`.
pub(crate) fn connect(conn: &VaultConn, env_var: &str) -> anyhow::Result<VaultClient> {
    let ca_pem = match &conn.ca_cert {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read the CA file {}", p.display()))?,
        ),
        None => None,
    };
    let token = load_token(conn.token_file.as_deref(), env_var)?;
    Ok(VaultClient::with_options(&conn.url, ClientOptions { ca_pem })?.with_token(token))
}

/// Writes `contents` to a new file with mode 0600; refuses to overwrite.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a value from `file` or stdin straight into a [`Secret`].
pub(crate) fn read_value(file: Option<&Path>) -> anyhow::Result<Secret> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        Some(p) => {
            let mut f = std::fs::File::open(p)
                .with_context(|| format!("cannot open the value file {}", p.display()))?;
            read_all(&mut f, &mut buf)?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading the value from stdin (end with Ctrl-D)…");
            }
            read_all(&mut stdin.lock(), &mut buf)?;
        }
    }
    Ok(Secret::copy_from(&buf))
}

/// Reads everything into a zeroizing buffer without leaving copies behind on growth.
fn read_all(r: &mut dyn std::io::Read, out: &mut Zeroizing<Vec<u8>>) -> anyhow::Result<()> {
    let limit = crate::api::MAX_VALUE_BYTES + 1;
    let mut chunk = Zeroizing::new([0u8; 8192]);
    out.reserve_exact(limit);
    loop {
        let n = r.read(&mut chunk[..]).context("cannot read the value")?;
        if n == 0 {
            return Ok(());
        }
        if out.len() + n > limit {
            bail!("the value exceeds {} bytes", crate::api::MAX_VALUE_BYTES);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// JSON of an issued token; when it went to a file, the token is replaced by the file name.
fn issued_value(t: &IssuedToken, out: Option<&Path>) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(t)?;
    if let (Some(path), Some(o)) = (out, v.as_object_mut()) {
        o.remove("token");
        o.insert("token_file".into(), path.display().to_string().into());
    }
    Ok(v)
}

fn save_token(t: &IssuedToken, out: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = out {
        let mut contents = Zeroizing::new(t.token.expose().to_vec());
        contents.push(b'\n');
        write_private_file(path, &contents)?;
    }
    Ok(())
}

fn print_issued(t: &IssuedToken, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
    save_token(t, out)?;
    if json {
        return print_json(&issued_value(t, out)?);
    }
    println!("token id: {}", t.token_id);
    if let Some(e) = &t.expires_at {
        println!("expires:  {e}");
    }
    match out {
        Some(p) => println!("token written to {} (mode 0600)", p.display()),
        None => {
            println!("token (shown once, store it now):");
            let token = std::str::from_utf8(t.token.expose()).unwrap_or_default();
            println!("{token}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Commands

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: VaultConn,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Orgs.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Environments (key pair generated locally; only the public key is uploaded).
    #[command(subcommand, name = "env")]
    Env(EnvCommand),
    /// Providers and their tokens.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Agent and admin tokens; list and revoke any token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// A secret's policy (creator vault or user vault) and the secrets of an environment.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an org.
    Create {
        /// The org's name.
        #[arg(long)]
        name: String,
    },
    /// List orgs.
    List,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create an environment: generates its X25519 key pair here, uploads the public key and
    /// writes the private key to `--key-out` (mode 0600).
    Create {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The environment's name (`^[a-z0-9][a-z0-9-]{0,62}$`).
        #[arg(long)]
        name: String,
        /// Where to write the private key (must not exist).
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
        /// Default grace period of a replaced version, seconds.
        #[arg(long)]
        grace: Option<u64>,
    },
    /// List an org's environments.
    List {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
    },
    /// Change an environment's default grace period.
    SetGrace {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The environment's name.
        #[arg(long)]
        name: String,
        /// The new default grace period, seconds.
        #[arg(long)]
        grace: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Create a provider and its first `fvprov_` token.
    Create {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The provider's name.
        #[arg(long)]
        name: String,
        /// Token lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Write the token to this file (0600) instead of printing it; with --json the output then
        /// carries `token_file` (this path) instead of `token`.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// List an org's providers.
    List {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
    },
    /// Another token for an existing provider.
    Token {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The provider's id (`prov_…`).
        #[arg(long)]
        provider: String,
        /// A note to tell this token from others.
        #[arg(long)]
        label: Option<String>,
        /// Token lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Write the token to this file (0600) instead of printing it; with --json the output then
        /// carries `token_file` (this path) instead of `token`.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// An `fvagent_` token for one environment.
    Agent {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The environment's name (the token reads only this environment).
        #[arg(long)]
        environment: String,
        /// A note such as the host name.
        #[arg(long)]
        label: Option<String>,
        /// Token lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Write the token to this file (0600) instead of printing it; with --json the output then
        /// carries `token_file` (this path) instead of `token`.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// Another `fvadmin_` token.
    Admin {
        /// A note to tell this token from others.
        #[arg(long)]
        label: Option<String>,
        /// Token lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Write the token to this file (0600) instead of printing it; with --json the output then
        /// carries `token_file` (this path) instead of `token`.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// List tokens (ids and scopes only).
    List {
        /// Only this org's tokens (`org_…`).
        #[arg(long)]
        org: Option<String>,
        /// provider | agent | admin
        #[arg(long)]
        kind: Option<String>,
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id (`tok_…`).
    Revoke {
        /// The token's id (`tok_…`), as `token list` shows it.
        token_id: String,
    },
}

pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.conn, "FYVAULT_ADMIN_TOKEN")?;
    let json = args.conn.json;
    runtime()?.block_on(async move {
        match args.command {
            AdminCommand::Org(c) => org(&client, c, json).await,
            AdminCommand::Env(c) => env(&client, c, json).await,
            AdminCommand::Provider(c) => provider(&client, c, json).await,
            AdminCommand::Token(c) => token(&client, c, json).await,
            AdminCommand::Secret(c) => secret::secret(&client, c, json).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn org(client: &VaultClient, cmd: OrgCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Create { name } => {
            let org = client.create_org(&name).await?;
            if json {
                return print_json(&org);
            }
            println!("org {} created: {}", org.name, org.org_id);
        }
        OrgCommand::List => {
            let list = client.list_orgs().await?;
            if json {
                return print_json(&list);
            }
            for o in list.orgs {
                println!("{}  {}  {}", o.org_id, o.created_at, o.name);
            }
        }
    }
    Ok(())
}

async fn env(client: &VaultClient, cmd: EnvCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        EnvCommand::Create {
            org,
            name,
            key_out,
            grace,
        } => {
            if !crate::api::valid_environment(&name) {
                bail!("environment names must match ^[a-z0-9][a-z0-9-]{{0,62}}$");
            }
            let (sk, pk) = PrivateKey::generate();
            write_private_file(&key_out, sk.to_file_contents().expose())?;
            let req = CreateEnvironmentRequest {
                name,
                public_key: pk.to_base64(),
                default_grace_seconds: grace,
            };
            let env = match client.create_environment(&org, &req).await {
                Ok(e) => e,
                Err(e) => {
                    // The key belongs to nothing: remove it.
                    let _ = std::fs::remove_file(&key_out);
                    return Err(e.into());
                }
            };
            if json {
                let mut v = serde_json::to_value(&env)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("key_file".into(), key_out.display().to_string().into());
                }
                return print_json(&v);
            }
            println!(
                "environment {} created in {} (default grace {} s)",
                env.environment, env.org_id, env.default_grace_seconds
            );
            println!(
                "private key written to {} (mode 0600): give it to this environment's agents only",
                key_out.display()
            );
        }
        EnvCommand::List { org } => {
            let list = client.list_environments(&org).await?;
            if json {
                return print_json(&list);
            }
            for e in list.environments {
                println!(
                    "{}  grace {} s  revision {}  key {}",
                    e.environment, e.default_grace_seconds, e.revision, e.public_key
                );
            }
        }
        EnvCommand::SetGrace { org, name, grace } => {
            let e = client
                .update_environment(
                    &org,
                    &name,
                    &UpdateEnvironmentRequest {
                        default_grace_seconds: grace,
                    },
                )
                .await?;
            if json {
                return print_json(&e);
            }
            println!(
                "environment {} default grace is now {} s",
                e.environment, e.default_grace_seconds
            );
        }
    }
    Ok(())
}

async fn provider(client: &VaultClient, cmd: ProviderCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ProviderCommand::Create {
            org,
            name,
            expires_in,
            token_out,
        } => {
            let p = client
                .create_provider(
                    &org,
                    &CreateProviderRequest {
                        name,
                        expires_in_seconds: expires_in,
                    },
                )
                .await?;
            if json {
                save_token(&p.token, token_out.as_deref())?;
                let mut v = serde_json::to_value(&p)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "token".into(),
                        issued_value(&p.token, token_out.as_deref())?,
                    );
                }
                return print_json(&v);
            }
            println!("provider {} created: {}", p.name, p.provider_id);
            print_issued(&p.token, token_out.as_deref(), false)?;
        }
        ProviderCommand::List { org } => {
            let list = client.list_providers(&org).await?;
            if json {
                return print_json(&list);
            }
            for p in list.providers {
                println!("{}  {}  {}", p.provider_id, p.created_at, p.name);
            }
        }
        ProviderCommand::Token {
            org,
            provider,
            label,
            expires_in,
            token_out,
        } => {
            let t = client
                .create_provider_token(
                    &org,
                    &provider,
                    &CreateTokenRequest {
                        label,
                        expires_in_seconds: expires_in,
                    },
                )
                .await?;
            print_issued(&t, token_out.as_deref(), json)?;
        }
    }
    Ok(())
}

async fn token(client: &VaultClient, cmd: TokenCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Agent {
            org,
            environment,
            label,
            expires_in,
            token_out,
        } => {
            let t = client
                .create_agent_token(
                    &org,
                    &environment,
                    &CreateTokenRequest {
                        label,
                        expires_in_seconds: expires_in,
                    },
                )
                .await?;
            print_issued(&t, token_out.as_deref(), json)?;
        }
        TokenCommand::Admin {
            label,
            expires_in,
            token_out,
        } => {
            let t = client
                .create_admin_token(&CreateTokenRequest {
                    label,
                    expires_in_seconds: expires_in,
                })
                .await?;
            print_issued(&t, token_out.as_deref(), json)?;
        }
        TokenCommand::List { org, kind, all } => {
            let kind = match kind.as_deref() {
                None => None,
                Some("provider") => Some(TokenKind::Provider),
                Some("agent") => Some(TokenKind::Agent),
                Some("admin") => Some(TokenKind::Admin),
                Some(other) => bail!("unknown token kind {other:?} (provider, agent, admin)"),
            };
            let list = client
                .list_tokens(&TokenListQuery {
                    org_id: org,
                    kind,
                    include_revoked: Some(all),
                })
                .await?;
            if json {
                return print_json(&list);
            }
            for t in list.tokens {
                let scope = [t.org_id, t.environment, t.provider_id]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("/");
                let state = match (&t.revoked_at, &t.expires_at) {
                    (Some(r), _) => format!("revoked {r}"),
                    (None, Some(e)) => format!("expires {e}"),
                    (None, None) => "active".into(),
                };
                println!(
                    "{}  {:<8}  {:<40}  {}  {}",
                    t.token_id,
                    t.kind.as_str(),
                    if scope.is_empty() { "-".into() } else { scope },
                    state,
                    t.label.unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { token_id } => {
            let r = client.revoke_token(&token_id).await?;
            if json {
                return print_json(&r);
            }
            println!("token {} revoked at {}", r.token_id, r.revoked_at);
        }
    }
    Ok(())
}
