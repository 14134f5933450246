//! `fyvault admin secret …`: a secret's policy per environment and the secrets of an
//! environment (issue 14).

use clap::Subcommand;

use crate::api::SecretPolicy;
use crate::cli::admin::print_json;
use crate::client::VaultClient;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set who provides a secret's value in an environment: `creator` (one value the org
    /// provides, shared by every user; the default) or `user` (each app user brings their own).
    /// Works for a name nothing was pushed to yet (it declares the secret).
    Policy {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The environment.
        #[arg(long)]
        environment: String,
        /// The secret's name.
        #[arg(long)]
        name: String,
        /// `creator` or `user`.
        #[arg(long, value_parser = parse_policy)]
        policy: SecretPolicy,
    },
    /// The secrets of an environment: policy, version, state, and for user-vault secrets how
    /// many users hold a value and how many were read in the last 7 days (never a value).
    List {
        /// The org's id (`org_…`).
        #[arg(long)]
        org: String,
        /// The environment.
        #[arg(long)]
        environment: String,
    },
}

fn parse_policy(s: &str) -> Result<SecretPolicy, String> {
    match s {
        "creator" => Ok(SecretPolicy::Creator),
        "user" => Ok(SecretPolicy::User),
        _ => Err("the policy is `creator` or `user`".into()),
    }
}

pub async fn secret(client: &VaultClient, cmd: SecretCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Policy {
            org,
            environment,
            name,
            policy,
        } => {
            let r = client.set_policy(&org, &environment, &name, policy).await?;
            if json {
                return print_json(&r);
            }
            println!(
                "{} in {}: policy {}",
                r.secret_name,
                r.environment,
                r.policy.as_str()
            );
        }
        SecretCommand::List { org, environment } => {
            let list = client.list_secrets(&org, &environment).await?;
            if json {
                return print_json(&list);
            }
            for s in list.secrets {
                let version = s.version.map_or("-".into(), |v| format!("v{v}"));
                let users = s.users.map_or(String::new(), |u| {
                    format!("  {} users · {} read in 7d", u.with_value, u.read_7d)
                });
                println!("{}  {}  {version}{users}", s.secret_name, s.policy.as_str());
            }
        }
    }
    Ok(())
}
