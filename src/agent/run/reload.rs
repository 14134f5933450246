//! `SIGHUP`: re-read the config file and apply what can change while running — the access
//! policy (rules and group) and the delivery settings (`[credentials]`, `[[template]]`,
//! `[[file]]`; a template that does not parse makes the whole reload fail). Everything else (vault URL, org, environment, files, paths,
//! timings) needs a restart: a changed value is reported and the running one kept. A config
//! that no longer validates is reported and changes nothing. The mount and the socket stay.

use std::path::Path;

use crate::agent::access::{Policy, Rule};
use crate::agent::config::{self, AgentConfig, ConfigError};
use crate::agent::state::AgentState;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// One line per change of the access policy that was applied (`+ rule …`, `- rule …`,
    /// `group …`); empty when the policy did not change.
    pub policy_changes: Vec<String>,
    /// One line per change of the delivery settings applied (`[credentials]`, templates,
    /// file modes); empty when they did not change.
    pub delivery_changes: Vec<String>,
    /// Config keys whose new values need a restart (not applied).
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads `current.path`, applies the new policy to `state` and to `current`, and reports.
pub fn reload(current: &mut AgentConfig, state: &AgentState) -> Result<ReloadReport, ConfigError> {
    let new = config::load(&current.path)?;
    for w in &new.warnings {
        tracing::warn!("{w}");
    }
    let report = ReloadReport {
        policy_changes: policy_changes(&current.policy, &new.policy),
        delivery_changes: new.delivery.changes_from(&current.delivery),
        needs_restart: needs_restart(current, &new),
    };
    if !report.policy_changes.is_empty() {
        state.set_policy(new.policy.clone());
        current.policy = new.policy;
    }
    if !report.delivery_changes.is_empty() {
        state.set_delivery(new.delivery.clone());
        current.delivery = new.delivery;
    }
    Ok(report)
}

/// Reloads and logs the outcome (the SIGHUP handler).
pub fn reload_and_log(current: &mut AgentConfig, state: &AgentState) -> Option<ReloadReport> {
    let path = current.path.clone();
    match reload(current, state) {
        Ok(r) => {
            log_report(&path, &r);
            Some(r)
        }
        Err(e) => {
            tracing::error!("config reload failed; the running config stays in force: {e}");
            None
        }
    }
}

fn log_report(path: &Path, r: &ReloadReport) {
    if r.policy_changes.is_empty() {
        tracing::info!(
            "config reloaded from {}: access rules unchanged",
            path.display()
        );
    } else {
        tracing::info!(
            "config reloaded from {}: access rules changed: {}",
            path.display(),
            r.policy_changes.join("; ")
        );
    }
    if !r.delivery_changes.is_empty() {
        tracing::info!(
            "config reloaded from {}: delivery changed: {}",
            path.display(),
            r.delivery_changes.join("; ")
        );
    }
    if !r.needs_restart.is_empty() {
        tracing::warn!(
            "config: {} changed; restart the agent to apply (the running values stay in force)",
            r.needs_restart.join(", ")
        );
    }
}

fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("vault_url", old.vault_url != new.vault_url);
    check("org_id", old.org_id != new.org_id);
    check("environment", old.environment != new.environment);
    check("token_file", old.token_file != new.token_file);
    check("key_file", old.key_file != new.key_file);
    check("ca_file", old.ca_file != new.ca_file);
    check("socket", old.socket != new.socket);
    check("mount/fuse", old.mount != new.mount);
    check("fuse_read_path", old.fuse_read_path != new.fuse_read_path);
    check("fuse_threads", old.fuse_threads != new.fuse_threads);
    check("state_dir", old.state_dir != new.state_dir);
    check("grace_seconds", old.grace_cap != new.grace_cap);
    check("sync_wait_seconds", old.sync_wait != new.sync_wait);
    check(
        "audit.spool_max_mb",
        old.audit_spool_max_bytes != new.audit_spool_max_bytes,
    );
    keys
}

fn describe_rule(r: &Rule) -> String {
    let mut parts = vec![format!(
        "secrets={:?}",
        r.secrets.iter().map(|g| g.as_str()).collect::<Vec<_>>()
    )];
    if !r.users.is_empty() {
        parts.push(format!("users={:?}", r.users));
    }
    if !r.groups.is_empty() {
        parts.push(format!("groups={:?}", r.groups));
    }
    if !r.executables.is_empty() {
        parts.push(format!("executables={:?}", r.executables));
    }
    if !r.units.is_empty() {
        parts.push(format!("units={:?}", r.units));
    }
    format!("rule {}", parts.join(" "))
}

fn policy_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    if old.group != new.group {
        let show = |g: Option<u32>| g.map_or_else(|| "none".to_owned(), |g| format!("gid {g}"));
        out.push(format!("group {} -> {}", show(old.group), show(new.group)));
    }
    for r in old.rules.iter().filter(|r| !new.rules.contains(r)) {
        out.push(format!("- {}", describe_rule(r)));
    }
    for r in new.rules.iter().filter(|r| !old.rules.contains(r)) {
        out.push(format!("+ {}", describe_rule(r)));
    }
    if out.is_empty() && old.rules != new.rules {
        out.push("rules reordered".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::access::Glob;

    fn rule(secret: &str, uid: u32) -> Rule {
        Rule {
            secrets: vec![Glob::new(secret)],
            users: vec![uid],
            ..Rule::default()
        }
    }

    #[test]
    fn policy_changes_are_described() {
        let a = Policy::new(Some(10), vec![rule("A*", 1000)]);
        assert!(policy_changes(&a, &a.clone()).is_empty());
        let b = Policy::new(None, vec![rule("B", 65534)]);
        let c = policy_changes(&a, &b);
        assert_eq!(
            c,
            vec![
                "group gid 10 -> none".to_owned(),
                "- rule secrets=[\"A*\"] users=[1000]".to_owned(),
                "+ rule secrets=[\"B\"] users=[65534]".to_owned(),
            ]
        );
        let d = Policy::new(None, vec![rule("B", 1), rule("C", 2)]);
        let e = Policy::new(None, vec![rule("C", 2), rule("B", 1)]);
        assert_eq!(policy_changes(&d, &e), vec!["rules reordered".to_owned()]);
    }
}
