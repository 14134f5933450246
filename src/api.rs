//! Wire types shared by the vault, the agent and the CLI: the HTTP contract, serde only.
//!
//! Request bodies reject unknown fields. Plaintext values only ever appear as [`Secret`]
//! (deserialize-only, never serialized); everything else on the wire is not secret
//! (sealed values are ciphertext, tokens appear only in `Authorization` headers and in the
//! one-time answers of token creation).

use serde::{Deserialize, Serialize};

use crate::crypto::TokenKind;
use crate::secret::Secret;

mod users;
pub use users::*;

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
    /// A user-vault secret: the value of this app user (`^[A-Za-z0-9._@-]{1,128}$`).
    #[serde(default)]
    pub user_id: Option<String>,
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
    /// A user-vault secret: rotate this app user's value.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// `DELETE …/providers/:id` body (or `?secret_name=`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub secret_name: String,
    /// Revoke only this app user's value (without it: the secret, for everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
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
    /// Set when the value written is this app user's (user-vault secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// 200 answer of revoke.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeResponse {
    pub secret_name: String,
    pub revoked_environments: Vec<String>,
    pub revoked_at: String,
    /// Set when only this user's value was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// `GET …/environments/:env/public-key`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicKeyResponse {
    pub org_id: String,
    pub environment: String,
    /// base64 of the 32-byte X25519 public key.
    pub public_key: String,
    pub suite: String,
    /// HPKE `info` (`fyvault sealed secret v1`): a seal with any other info never opens.
    #[serde(default)]
    pub info: String,
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
    /// Policies changed (all of them when `full`); a name not listed keeps its policy, and a
    /// full answer's absent names are `creator`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<SyncPolicy>,
    /// Per-user values of user-vault secrets that changed (all of them when `full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_values: Vec<SyncUserSecret>,
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
    /// The agent cannot open this version of the secret (`secret`, `version`, `reason`; never
    /// any byte of the value) and keeps serving what it held.
    Undeliverable,
    /// A read asked for a name that does not exist (`secret`, the process; no version): a
    /// caller the policy allows that name, so the listing would have told it as much.
    Missing,
    /// An operator accepted a deliberate vault restore on this agent (`fyvault agent
    /// accept-restore`): `secret` is the one named (none: every secret), `uid` and `pid` the
    /// operator's process. The agent then takes the vault's versions as they are.
    #[serde(rename = "restore_accepted")]
    RestoreAccepted,
}

/// Why an agent cannot deliver a version (`reason` of an `undeliverable` event).
pub const UNDELIVERABLE_REASONS: &[&str] = &[
    // HPKE open failed: sealed to another key, with another info or AAD, or altered.
    "cannot_open",
    // Not base64 of `enc || ciphertext`.
    "malformed",
    // An active version without a sealed value.
    "missing_value",
    // An older version than one the agent already served (a vault restored from a backup, a
    // replayed answer): refused by rollback protection; `version` is the one the agent holds
    // and serves (the vault knows what it offered: its own current version). The vault raises
    // that secret's version floor to it (docs/vault.md, "Restores and version numbers").
    "older_than_served",
];

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AccessVia {
    Fuse,
    Socket,
    /// A systemd credential (`LoadCredential=ID:/run/fyvault.sock`): the unit is the identity.
    Systemd,
}

impl AccessVia {
    /// The stored and shipped form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessVia::Fuse => "fuse",
            AccessVia::Socket => "socket",
            AccessVia::Systemd => "systemd",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<AccessVia> {
        [AccessVia::Fuse, AccessVia::Socket, AccessVia::Systemd]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl AccessAction {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessAction::Accessed => "accessed",
            AccessAction::Denied => "denied",
            AccessAction::Dropped => "dropped",
            AccessAction::Undeliverable => "undeliverable",
            AccessAction::Missing => "missing",
            AccessAction::RestoreAccepted => "restore_accepted",
        }
    }
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
    /// `undeliverable` only: one of [`UNDELIVERABLE_REASONS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A read of a user-vault secret: whose value was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl AccessEvent {
    /// The `dropped` event reporting `count` accesses lost now (no secret or process fields).
    pub fn dropped(seq: u64, count: u64) -> Self {
        AccessEvent {
            seq,
            time: crate::rfc3339::format(std::time::SystemTime::now()),
            action: AccessAction::Dropped,
            secret: None,
            version: None,
            via: None,
            pid: None,
            uid: None,
            gid: None,
            exe: None,
            unit: None,
            count,
            reason: None,
            user_id: None,
        }
    }
}

/// The vault's rule for agent ids: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
    /// `undeliverable` records: why (see [`UNDELIVERABLE_REASONS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Records about one app user's value (user-vault secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditQueryResponse {
    pub records: Vec<AuditRecord>,
}

// ---------------------------------------------------------------------------------------------
// Who am I (any token)

/// `GET /api/v1/whoami`: what the presented token is (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    pub token_id: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub provider_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Admin API (admin token): orgs, environments, providers, tokens

/// `POST /api/v1/admin/orgs`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrgInfo {
    pub org_id: String,
    pub name: String,
    pub created_at: String,
}

/// `GET /api/v1/admin/orgs`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrgList {
    pub orgs: Vec<OrgInfo>,
}

/// `POST /api/v1/admin/orgs/:org_id/environments`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironmentRequest {
    /// The environment's name (`^[a-z0-9][a-z0-9-]{0,62}$`).
    pub name: String,
    /// base64 of the environment's 32-byte X25519 public key.
    pub public_key: String,
    /// Grace period of a replaced version; default [`DEFAULT_GRACE_SECONDS`].
    #[serde(default)]
    pub default_grace_seconds: Option<u64>,
}

/// `PATCH /api/v1/admin/orgs/:org_id/environments/:env`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironmentRequest {
    pub default_grace_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvironmentInfo {
    pub org_id: String,
    pub environment: String,
    pub public_key: String,
    pub default_grace_seconds: u64,
    /// The environment's current sync revision.
    pub revision: u64,
    pub created_at: String,
}

/// `GET /api/v1/admin/orgs/:org_id/environments`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentInfo>,
}

/// `POST /api/v1/admin/orgs/:org_id/providers`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateProviderRequest {
    pub name: String,
    /// Lifetime of the provider's first token; none = no expiry.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// 201 answer of provider creation: the provider and its first token (shown once).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProviderCreated {
    pub org_id: String,
    pub provider_id: String,
    pub name: String,
    pub created_at: String,
    pub token: IssuedToken,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderInfo {
    pub org_id: String,
    pub provider_id: String,
    pub name: String,
    pub created_at: String,
}

/// `GET /api/v1/admin/orgs/:org_id/providers`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderList {
    pub providers: Vec<ProviderInfo>,
}

/// Body of every token-creating admin call:
/// `POST /api/v1/admin/orgs/:org_id/environments/:env/agent-tokens`,
/// `POST /api/v1/admin/orgs/:org_id/providers/:provider_id/tokens`, `POST /api/v1/admin/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A note for humans (e.g. the host name), shown in token lists.
    #[serde(default)]
    pub label: Option<String>,
    /// Lifetime; none = no expiry.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A freshly created token: the only answer that ever carries a token, shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token_id: String,
    pub kind: TokenKind,
    /// The bearer token itself (`fvprov_…`, `fvagent_…`, `fvadmin_…`).
    #[serde(serialize_with = "serialize_token")]
    pub token: Secret,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub provider_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

fn serialize_token<S: serde::Serializer>(token: &Secret, s: S) -> Result<S::Ok, S::Error> {
    // Tokens are ASCII by construction.
    s.serialize_str(std::str::from_utf8(token.expose()).unwrap_or_default())
}

/// A token as lists show it: its id and scope, never the token or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub token_id: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub provider_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// `GET /api/v1/admin/tokens?org_id=&kind=&include_revoked=`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Query of `GET /api/v1/admin/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TokenKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_revoked: Option<bool>,
}

/// 200 answer of `DELETE /api/v1/admin/tokens/:token_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRevoked {
    pub token_id: String,
    pub revoked_at: String,
}

/// Query of `GET /api/v1/orgs/:org_id/audit`. Times are RFC 3339; `limit` defaults to 1000
/// (max 10000); records come oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
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
        assert!(valid_agent_id("agent-1:host.example_x"));
        for bad in ["", "a b", "a/b", "é"] {
            assert!(!valid_agent_id(bad), "{bad}");
        }
        assert!(!valid_agent_id(&"a".repeat(129)));
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
