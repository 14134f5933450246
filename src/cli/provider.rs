//! `fyvault provider push|rotate|revoke`: what a provider's backend does, from a shell.
//!
//! The value is read from `--file` or stdin (never argv) straight into a [`Secret`], sealed
//! here to the environment's public key (fetched from the vault) and sent as `sealed_value`,
//! so the vault never sees it. `--plaintext` sends `value` instead (the vault seals on arrival).
//! The token comes from `--token-file` or `FYVAULT_PROVIDER_TOKEN`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::admin::{VaultConn, connect, print_json, read_value, runtime};
use crate::client::{VaultClient, WriteRequest, WriteValue};
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct ProviderArgs {
    #[command(flatten)]
    pub conn: VaultConn,
    /// The org id (`org_…`).
    #[arg(long, global = true, env = "FYVAULT_ORG")]
    pub org: Option<String>,
    /// The provider id (`prov_…`).
    #[arg(long, global = true, env = "FYVAULT_PROVIDER")]
    pub provider: Option<String>,
    #[command(subcommand)]
    pub command: ProviderCommand,
}

#[derive(Debug, Args)]
pub struct ValueArgs {
    /// Environment to write to.
    #[arg(long)]
    pub environment: String,
    /// Secret name (`^[A-Z_][A-Z0-9_]{0,127}$`).
    #[arg(long)]
    pub name: String,
    /// Read the value from this file (default: stdin). Exact bytes are kept.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Drop one trailing newline (`\n` or `\r\n`) from the value, as `echo` adds one.
    #[arg(long)]
    pub trim_newline: bool,
    /// Send the plaintext and let the vault seal it (default: seal here).
    #[arg(long)]
    pub plaintext: bool,
    /// Idempotency-Key header: a retry with the same key creates no new version.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Write or overwrite a secret (new version).
    Push(ValueArgs),
    /// Rotate an existing secret; the previous version stays readable for the grace period.
    Rotate {
        #[command(flatten)]
        value: ValueArgs,
        /// Grace period of the previous version, seconds (default: the environment's).
        #[arg(long)]
        grace: Option<u64>,
    },
    /// Revoke a secret in every environment at once (no grace).
    Revoke {
        /// Secret name.
        #[arg(long)]
        name: String,
    },
}

fn trim(value: Secret, trim_newline: bool) -> Secret {
    if !trim_newline {
        return value;
    }
    let b = value.expose();
    let cut = if b.ends_with(b"\r\n") {
        2
    } else if b.ends_with(b"\n") {
        1
    } else {
        0
    };
    Secret::copy_from(&b[..b.len() - cut])
}

async fn write_request(
    client: &VaultClient,
    org: &str,
    v: ValueArgs,
    grace: Option<u64>,
) -> anyhow::Result<WriteRequest> {
    let value = trim(read_value(v.file.as_deref())?, v.trim_newline);
    if value.is_empty() {
        anyhow::bail!("the value is empty");
    }
    let value = if v.plaintext {
        WriteValue::Plaintext(value)
    } else {
        WriteValue::Sealed(
            client
                .seal_for(org, &v.environment, &v.name, &value)
                .await?,
        )
    };
    Ok(WriteRequest {
        secret_name: v.name,
        environment: v.environment,
        value,
        grace_period_seconds: grace,
        idempotency_key: v.idempotency_key,
    })
}

pub fn run(args: ProviderArgs) -> anyhow::Result<ExitCode> {
    let org = args
        .org
        .ok_or_else(|| anyhow::anyhow!("give --org ORG_ID (or set FYVAULT_ORG)"))?;
    let provider = args
        .provider
        .ok_or_else(|| anyhow::anyhow!("give --provider PROVIDER_ID (or set FYVAULT_PROVIDER)"))?;
    let client = connect(&args.conn, "FYVAULT_PROVIDER_TOKEN")?;
    let json = args.conn.json;
    runtime()?.block_on(async move {
        match args.command {
            ProviderCommand::Push(v) => {
                let req = write_request(&client, &org, v, None).await?;
                let r = client.push(&org, &provider, &req).await?;
                if json {
                    return print_json(&r);
                }
                println!(
                    "{} version {} pushed to {} at {}",
                    r.secret_name, r.version, r.environment, r.created_at
                );
                if let Some(until) = r.previous_version_expires_at {
                    println!("previous version readable until {until}");
                }
            }
            ProviderCommand::Rotate { value, grace } => {
                let req = write_request(&client, &org, value, grace).await?;
                let r = client.rotate(&org, &provider, &req).await?;
                if json {
                    return print_json(&r);
                }
                println!(
                    "{} rotated to version {} in {} at {}",
                    r.secret_name, r.version, r.environment, r.created_at
                );
                match r.previous_version_expires_at {
                    Some(until) => println!("previous version readable until {until}"),
                    None => println!("previous version no longer readable (no grace)"),
                }
            }
            ProviderCommand::Revoke { name } => {
                let r = client.revoke(&org, &provider, &name).await?;
                if json {
                    return print_json(&r);
                }
                println!(
                    "{} revoked at {} in: {}",
                    r.secret_name,
                    r.revoked_at,
                    r.revoked_environments.join(", ")
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_newline_only_when_asked() {
        let v = Secret::copy_from(b"abc\n");
        assert_eq!(trim(v.clone(), false).expose(), b"abc\n");
        assert_eq!(trim(v, true).expose(), b"abc");
        assert_eq!(trim(Secret::copy_from(b"a\r\n"), true).expose(), b"a");
        assert_eq!(trim(Secret::copy_from(b"a"), true).expose(), b"a");
    }
}
