//! Store types of per-secret policy, per-user values and connect links (issue 14).
//!
//! User values live beside creator values, in their own tables (`user_secrets`,
//! `user_secret_versions`) keyed by `(org, environment, name, user_id)`, and follow the same
//! write rule ([`super::WritePlan`]): versions, grace and idempotency are kept per user.
//! Connect links are stored by the SHA-256 hash of their token only.

use crate::api::SecretPolicy;

use super::{AuditContext, NewAuditRecord, StoreError};

/// How long a link is remembered after it expired (its page says "expired", not "unknown",
/// for a day); older ones are deleted when a new link is made.
pub(crate) const LINK_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Set the policy of one secret name in one environment (declaring the name when nothing was
/// pushed to it yet).
#[derive(Debug, Clone)]
pub struct SetPolicy {
    pub org_id: String,
    pub environment: String,
    pub secret_name: String,
    pub policy: SecretPolicy,
    pub now_ms: i64,
    pub audit: AuditContext,
}

impl SetPolicy {
    /// The `policy_changed` audit record (`reason` carries the new policy).
    pub(crate) fn audit_record(&self) -> NewAuditRecord {
        NewAuditRecord {
            org_id: Some(self.org_id.clone()),
            environment: Some(self.environment.clone()),
            secret: Some(self.secret_name.clone()),
            reason: Some(self.policy.as_str().to_string()),
            ..self.audit.record(self.now_ms, "policy_changed")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The environment's new revision when the policy changed (`None`: it was already so).
    pub revision: Option<u64>,
}

/// One secret name of an environment as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSummary {
    pub name: String,
    pub policy: SecretPolicy,
    /// The creator value: (version, state, owner provider, updated ms).
    pub creator: Option<(u64, String, String, i64)>,
    /// Users holding an active value.
    pub users_with_value: u64,
    /// Distinct users whose value was reported read at or after the listing's `reads_since_ms`.
    pub users_read: u64,
}

/// A connect link as stored: the hash of its token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// Hex SHA-256 of the link token.
    pub hash: String,
    /// Named in audit records (`connect:<link_id>`), never the token.
    pub link_id: String,
    pub org_id: String,
    pub environment: String,
    pub secret_name: String,
    pub user_id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
}

impl LinkRecord {
    /// Whether the link can still set a value at `now_ms`: used beats expired.
    pub fn usable(&self, now_ms: i64) -> Result<(), StoreError> {
        if self.used_ms.is_some() {
            Err(StoreError::LinkUsed)
        } else if now_ms >= self.expires_ms {
            Err(StoreError::LinkExpired)
        } else {
            Ok(())
        }
    }

    /// The `link_created` audit record.
    pub(crate) fn audit_record(&self, audit: &AuditContext) -> NewAuditRecord {
        NewAuditRecord {
            org_id: Some(self.org_id.clone()),
            environment: Some(self.environment.clone()),
            secret: Some(self.secret_name.clone()),
            user_id: Some(self.user_id.clone()),
            reason: Some(format!("link:{}", self.link_id)),
            ..audit.record(self.created_ms, "link_created")
        }
    }
}

/// Whether a write for `user` (None: the creator value) fits the secret's `policy`.
pub(crate) fn check_policy(policy: SecretPolicy, user: Option<&str>) -> Result<(), StoreError> {
    match (policy, user) {
        (SecretPolicy::Creator, None) | (SecretPolicy::User, Some(_)) => Ok(()),
        (p, _) => Err(StoreError::PolicyMismatch(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_use_rule() {
        let mut l = LinkRecord {
            hash: "h".into(),
            link_id: "l".into(),
            org_id: "o".into(),
            environment: "e".into(),
            secret_name: "A".into(),
            user_id: "u".into(),
            created_ms: 0,
            expires_ms: 100,
            used_ms: None,
        };
        assert_eq!(l.usable(99), Ok(()));
        assert_eq!(l.usable(100), Err(StoreError::LinkExpired));
        l.used_ms = Some(5);
        assert_eq!(l.usable(200), Err(StoreError::LinkUsed));
        assert!(check_policy(SecretPolicy::User, Some("u")).is_ok());
        assert!(check_policy(SecretPolicy::User, None).is_err());
        assert!(check_policy(SecretPolicy::Creator, Some("u")).is_err());
    }
}
