//! The JSON shapes of the socket API (served by the agent, read by `fyvault get|ls|status` and
//! SDKs). No value ever passes through these types: a value's JSON answer is written straight
//! into a zeroizing buffer (see `routes`).

use serde::{Deserialize, Serialize};

use crate::agent::hygiene::MlockStatus;

pub use crate::agent::audit::AuditStats;

/// `GET /v1/secrets`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub version: u64,
    /// RFC 3339 time of the current version (push or rotation).
    pub updated_at: String,
    /// The previous version, while its grace period runs (`?version=previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
}

/// `GET /v1/health`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ready`, `syncing` (before the first sync) or `degraded` (serving the last known values).
    pub status: String,
    /// Degraded since (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Why degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub org_id: String,
    pub environment: String,
    /// The vault revision the agent is synced to.
    pub revision: u64,
    /// Number of secrets held.
    pub secrets: usize,
    /// Per-user values of user-vault secrets held (sealed until read; not in `secrets`).
    #[serde(default)]
    pub user_values: usize,
    /// When the last sync answer was applied (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
    pub started_at: String,
    pub mlock: MlockStatus,
    /// Access events waiting to be shipped to the vault, when known (same as
    /// `audit.backlog_events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_backlog: Option<u64>,
    /// The access-event pipeline's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStats>,
    /// The FUSE mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<MountHealth>,
    /// Versions this agent cannot open (it keeps serving what it held); each is reported to
    /// the vault as an `undeliverable` event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeliverable: Vec<Undeliverable>,
}

/// `/v1/health` → `"undeliverable"`: one version the agent cannot open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Undeliverable {
    pub secret: String,
    pub version: u64,
    /// One of [`crate::api::UNDELIVERABLE_REASONS`].
    pub reason: String,
}

/// `GET /v1/health` for a caller the access policy does not admit: liveness only, nothing
/// that names the org, environment, revision or secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Liveness {
    /// `ready`, `syncing`, `starting` or `degraded`, without the reason.
    pub status: String,
    /// Always true: the details are for callers the access rules admit (and root).
    pub restricted: bool,
}

/// What `GET /v1/health` answers: the full report, or liveness only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HealthAnswer {
    Live(Liveness),
    Full(Box<Health>),
}

/// `/v1/health` → `"mount"`: where the secrets filesystem is and how it stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountHealth {
    /// The configured mount point (absent when `fuse = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `mounted`, `off` (`fuse = false`), `unavailable` (could not mount; socket only) or
    /// `detached` (shutting down).
    pub state: String,
    /// Why it is `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How secret files' bytes reach readers while mounted: `passthrough` or `direct_io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_path: Option<String>,
}

/// The data of every `/v1/events` event (`added`, `updated`, `rotated`, `revoked`, `expired`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventData {
    pub name: String,
    pub version: u64,
    /// For `updated` and `rotated`: the version it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
}
