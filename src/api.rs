//! Wire types shared by the vault, the agent and the CLI: the HTTP contract, serde only.
//!
//! Request bodies reject unknown fields. Plaintext values only ever appear as [`Secret`]
//! (deserialize-only, never serialized); everything else on the wire is not secret
//! (sealed values are ciphertext, tokens appear only in `Authorization` headers and in the
//! one-time answers of token creation).

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest secret value (plaintext bytes).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Default grace period for the previous version after a rotation.
pub const DEFAULT_GRACE_SECONDS: u64 = 300;
/// Longest grace period a rotation may ask for (7 days).
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;
/// Longest long-poll wait the sync feed honours.
pub const MAX_WAIT_SECONDS: u64 = 300;

/// `^[A-Z_][A-Z0-9_]{0,127}$`
pub fn valid_secret_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`
pub fn valid_environment(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `{"error":{"code","message"}}` — every error answer of every API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Provider API (DESIGN §3.1)

/// `POST …/providers/:id/push` body. Exactly one of `value` / `sealed_value`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub secret_name: String,
    #[serde(default)]
    pub value: Option<Secret>,
    #[serde(default)]
    pub sealed_value: Option<String>,
    pub environment: String,
}

/// `PATCH …/providers/:id` body: a rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    pub secret_name: String,
    #[serde(default)]
    pub value: Option<Secret>,
    #[serde(default)]
    pub sealed_value: Option<String>,
    pub environment: String,
    #[serde(default)]
    pub grace_period_seconds: Option<u64>,
}

/// `DELETE …/providers/:id` body (or `?secret_name=`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub secret_name: String,
}

/// 201 answer of push, 200 answer of rotate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushResponse {
    pub secret_name: String,
    pub environment: String,
    pub version: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Set on rotations: until when the previous version stays readable (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version_expires_at: Option<String>,
}

/// 200 answer of revoke.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeResponse {
    pub secret_name: String,
    pub revoked_environments: Vec<String>,
    pub revoked_at: String,
}

/// `GET …/environments/:env/public-key`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicKeyResponse {
    pub org_id: String,
    pub environment: String,
    /// base64 of the 32-byte X25519 public key.
    pub public_key: String,
    pub suite: String,
    pub aad_format: String,
}

// ---------------------------------------------------------------------------------------------
// Sync feed (DESIGN §3.4)

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretState {
    Active,
    Revoked,
}

/// `GET …/environments/:env/sync?since=REV&wait=SECONDS`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncResponse {
    /// The environment's revision this answer brings the agent up to.
    pub revision: u64,
    /// True when `since=0` (or `since` is unknown/too old): `secrets` is the whole state and
    /// anything the agent holds that is not listed must be dropped.
    pub full: bool,
    pub secrets: Vec<SyncSecret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncSecret {
    pub name: String,
    pub version: u64,
    pub state: SecretState,
    /// Absent when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_value: Option<String>,
    /// RFC 3339 time of this version.
    pub updated_at: String,
    /// The previous version while its grace period runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SyncPrevious>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPrevious {
    pub version: u64,
    pub sealed_value: String,
    pub grace_remaining_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Audit (DESIGN §3.5, §4.5)

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    Accessed,
    Denied,
    /// The agent's spool was full and dropped `count` older records.
    Dropped,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AccessVia {
    Fuse,
    Socket,
}

/// One access event as an agent ships it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessEvent {
    pub seq: u64,
    /// RFC 3339 time of the first access the event counts.
    pub time: String,
    pub action: AccessAction,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub via: Option<AccessVia>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    pub count: u64,
}

/// `POST …/audit/events`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditBatch {
    pub agent_id: String,
    /// The host the agent runs on (shown in `fyvault audit`).
    #[serde(default)]
    pub host: Option<String>,
    pub events: Vec<AccessEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditBatchResponse {
    /// Events newly recorded.
    pub accepted: u64,
    /// Events already recorded earlier (same `(agent_id, seq)`), ignored.
    pub duplicates: u64,
}

/// One record of the audit trail, as `GET …/audit` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: u64,
    pub time: String,
    pub org_id: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub version: Option<u64>,
    /// issued | rotated | revoked | accessed | denied | dropped | token_created | token_revoked | …
    pub action: String,
    /// `provider:<id>`, `agent:<token id>`, `admin:<token id>`.
    pub actor: String,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub via: Option<AccessVia>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditQueryResponse {
    pub records: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(valid_secret_name("STRIPE_SK"));
        assert!(valid_secret_name("_X1"));
        assert!(valid_secret_name(&"A".repeat(128)));
        for bad in ["", "stripe", "1ABC", "A-B", "A.B", "A/B", "..", "A B"] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
        assert!(!valid_secret_name(&"A".repeat(129)));
        assert!(valid_environment("production"));
        assert!(valid_environment("eu-1"));
        for bad in ["", "-prod", "Prod", "a_b", "a.b"] {
            assert!(!valid_environment(bad), "{bad}");
        }
        assert!(!valid_environment(&"a".repeat(64)));
    }

    #[test]
    fn push_rejects_unknown_fields() {
        let r = serde_json::from_str::<PushRequest>(
            r#"{"secret_name":"A","value":"v","environment":"p","extra":1}"#,
        );
        assert!(r.is_err());
    }
}
