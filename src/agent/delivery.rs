//! What agent.toml says about *how* secrets are delivered, beside the access policy: the
//! `[credentials]` map (systemd credential id → secret name), `[[template]]` files rendered in
//! the mount, and `[[file]]` owner/group/mode entries. Reloaded on `SIGHUP` with the policy
//! (a set that does not validate — e.g. a template that does not parse — is refused whole and
//! the running one stays). Who may read is never decided here: that is the read gate's
//! ([`crate::agent::gate`]).

pub mod template;

use std::collections::BTreeMap;

use crate::agent::access::Glob;
use crate::api::valid_secret_name;
pub use template::{RenderError, TemplateEntry, TemplateError, Templates};

/// Owner, group and mode a file shows in `stat` (each unset one keeps the default:
/// root, the policy's group, 0440). What `stat` shows is the policy's coarse shape for
/// programs that check it; who reads is decided by the read gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shown {
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u16>,
}

/// One `[[file]]` entry: secrets matching any glob show `shown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRule {
    pub secrets: Vec<Glob>,
    pub shown: Shown,
}

/// The delivery settings in force (shared as an `Arc` by [`crate::agent::state::AgentState`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// `[credentials]`: systemd credential id → secret name. An id not listed names the secret
    /// itself (`LoadCredential=STRIPE_SK:/run/fyvault.sock`).
    pub credentials: BTreeMap<String, String>,
    /// `[[template]]` files in the mount.
    pub templates: Templates,
    /// `[[file]]` entries, in order (the first that matches a secret applies).
    pub files: Vec<FileRule>,
}

impl Delivery {
    /// The secret a systemd credential id asks for, or `None` when the id is neither mapped nor
    /// a secret name.
    pub fn credential_secret<'a>(&'a self, id: &'a str) -> Option<&'a str> {
        match self.credentials.get(id) {
            Some(name) => Some(name),
            None => valid_secret_name(id).then_some(id),
        }
    }

    /// What `stat` shows for secret `name` (the first `[[file]]` entry that matches).
    pub fn shown_for_secret(&self, name: &str) -> Shown {
        self.files
            .iter()
            .find(|f| f.secrets.iter().any(|g| g.matches(name)))
            .map(|f| f.shown)
            .unwrap_or_default()
    }

    /// One line per difference from `old` (for the reload log); empty when equal.
    pub fn changes_from(&self, old: &Delivery) -> Vec<String> {
        let mut out = Vec::new();
        if self.templates != old.templates {
            out.push(format!(
                "templates: {}",
                self.templates.names().collect::<Vec<_>>().join(", ")
            ));
        }
        if self.files != old.files {
            out.push(format!("[[file]] entries: {}", self.files.len()));
        }
        for (id, name) in &self.credentials {
            match old.credentials.get(id) {
                Some(o) if o == name => {}
                _ => out.push(format!("+ credential {id} = {name}")),
            }
        }
        for id in old.credentials.keys() {
            if !self.credentials.contains_key(id) {
                out.push(format!("- credential {id}"));
            }
        }
        out
    }
}

/// systemd's rule for a credential id: a valid file name of at most 255 bytes (no `/`, not
/// `.` or `..`, no NUL), and printable here.
pub fn valid_credential_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.chars().all(|c| c != '/' && !c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_secrets_unless_mapped() {
        let mut d = Delivery::default();
        d.credentials
            .insert("stripe.key".into(), "STRIPE_SK".into());
        assert_eq!(d.credential_secret("stripe.key"), Some("STRIPE_SK"));
        assert_eq!(d.credential_secret("DB_URL"), Some("DB_URL"));
        assert_eq!(d.credential_secret("db.url"), None);
        assert!(valid_credential_id("stripe.key") && !valid_credential_id("a/b"));
        assert!(!valid_credential_id("..") && !valid_credential_id(""));
        let changes = d.changes_from(&Delivery::default());
        assert_eq!(changes, ["+ credential stripe.key = STRIPE_SK"]);
    }
}
