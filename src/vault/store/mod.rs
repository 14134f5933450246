//! The store interface: every durable operation of the vault, each one a whole transaction.
//!
//! The server only talks to an `Arc<dyn Store>`. Operations are expressed as business
//! transactions ("write a new version atomically", "revoke a name everywhere", "ingest an audit
//! batch idempotently"), never as SQL, so the PostgreSQL implementation ([`postgres::PgStore`])
//! sits next to the embedded SQLite one ([`sqlite::SqliteStore`]). Every write that deserves an audit record takes
//! its [`AuditContext`] and appends the record inside the same transaction.
//!
//! Times are Unix milliseconds (`i64`) at this boundary; the wire formats them as RFC 3339.

use std::future::Future;
use std::pin::Pin;

use crate::api::{
    AccessEvent, AuditBatchResponse, AuditRecord, PushResponse, SecretState, SyncPrevious,
    SyncResponse, SyncSecret, SyncUserSecret,
};
use crate::crypto::TokenKind;
use crate::vault::clock::fmt_ms;

mod changes;
pub(crate) mod floors;
pub mod postgres;
pub mod sqlite;
mod users;

pub use changes::{ChangeSet, delta_base};
pub(crate) use users::{LINK_RETENTION_MS, check_policy};
pub use users::{LinkRecord, PolicyOutcome, SecretSummary, SetPolicy};

/// How long an `Idempotency-Key` is remembered (24 h): a retry later than that is a new request.
pub const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// The future every store operation returns (object-safe async).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation did not happen. Every variant but `Backend` is the caller's doing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The named thing (`org`, `environment`, `provider`, `secret`, `token`) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The thing to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The secret name belongs to another provider of the org.
    #[error("the secret is owned by another provider")]
    NotOwner,
    /// A rotation of a revoked secret (a new push re-issues it).
    #[error("the secret is revoked")]
    Revoked,
    /// The idempotency key was used before for a different request.
    #[error("the idempotency key was used for a different request")]
    IdempotencyMismatch,
    /// The storage itself failed (I/O, corruption, a query error…).
    #[error("storage failure: {0}")]
    Backend(String),
    /// The database cannot be reached right now (connection refused or lost, timed out). The
    /// route answers 503 and clients retry; a write whose connection broke during its commit
    /// may have landed, so writers retry with the same `Idempotency-Key`.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write that does not fit the secret's policy: a creator value for a user-vault secret
    /// (the policy given) or a user's value for a creator-vault one.
    #[error("the secret's policy is {}", .0.as_str())]
    PolicyMismatch(crate::api::SecretPolicy),
    /// A connect link already used.
    #[error("the link was used")]
    LinkUsed,
    /// A connect link past its expiry.
    #[error("the link expired")]
    LinkExpired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub org_id: String,
    pub name: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub org_id: String,
    pub name: String,
    /// base64 X25519 public key.
    pub public_key: String,
    pub default_grace_seconds: u64,
    /// Sync revision: bumped by every change of a secret of this environment.
    pub revision: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub org_id: String,
    pub provider_id: String,
    pub name: String,
    pub created_ms: i64,
}

/// A token as stored: its SHA-256 hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub kind: TokenKind,
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub org_id: Option<String>,
    pub environment: Option<String>,
    pub provider_id: Option<String>,
    pub label: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// Who did something and from where: copied into the audit record of the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    /// `provider:<id>`, `agent:<token id>`, `admin:<token id>`, `system`.
    pub actor: String,
    pub source_ip: Option<String>,
}

impl AuditContext {
    /// A record of `action` by this actor at `time_ms` (the caller fills in what it is about).
    pub(crate) fn record(&self, time_ms: i64, action: &str) -> NewAuditRecord {
        NewAuditRecord {
            time_ms,
            action: action.to_string(),
            actor: self.actor.clone(),
            source_ip: self.source_ip.clone(),
            ..Default::default()
        }
    }
}

/// The columns of a token row and of an environment row, in the order both stores read them.
pub(crate) const TOKEN_COLS: &str = "token_id, kind, hash, org_id, environment, provider_id, label, \
                          created_ms, expires_ms, revoked_ms";
pub(crate) const ENV_COLS: &str = "org_id, name, public_key, default_grace_s, revision, created_ms";

/// A token kind as stored (the inverse of [`TokenKind::as_str`]; anything else reads as admin).
pub(crate) fn kind_from(s: &str) -> TokenKind {
    match s {
        "provider" => TokenKind::Provider,
        "agent" => TokenKind::Agent,
        _ => TokenKind::Admin,
    }
}

/// The audit record of `action` on token `t` (scoped to its org and environment).
pub(crate) fn token_audit(
    t: &TokenRecord,
    ctx: &AuditContext,
    time_ms: i64,
    action: &str,
) -> NewAuditRecord {
    NewAuditRecord {
        org_id: t.org_id.clone(),
        environment: t.environment.clone(),
        ..ctx.record(time_ms, action)
    }
}

/// A database integer as a count or version (negative: 0).
pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A count or version as a database integer (saturating).
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The owner recorded for a secret an admin wrote (the studio): `admin:<token id>`.
pub const ADMIN_OWNER_PREFIX: &str = "admin:";

/// The ownership rule of writes and revokes, for every store: a provider writes only the names
/// it owns (the first writer owns a name across the org's environments); an admin (an owner
/// string starting with [`ADMIN_OWNER_PREFIX`]; provider ids never do) writes any name.
pub(crate) fn may_write(owner: &str, writer: &str) -> bool {
    owner == writer || writer.starts_with(ADMIN_OWNER_PREFIX)
}

/// One server-side audit record (issued/rotated/revoked/token_*/denied…).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAuditRecord {
    pub time_ms: i64,
    /// `None` for events outside any org (admin tokens).
    pub org_id: Option<String>,
    pub environment: Option<String>,
    pub secret: Option<String>,
    pub version: Option<u64>,
    pub action: String,
    pub actor: String,
    pub source_ip: Option<String>,
    /// Why (`undeliverable`), or what (`policy_changed`: the new policy; `link_created`: the
    /// link id).
    pub reason: Option<String>,
    /// The app user whose value this is about (user-vault secrets).
    pub user_id: Option<String>,
}

/// Push (POST, creates or overwrites) or rotation (PATCH, the secret must exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Push,
    Rotate,
}

/// What a write does to a secret, decided from its current row (`current_version`, `state`)
/// by this one rule for every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WritePlan {
    /// The version written.
    pub version: i64,
    /// The active version it replaces; only that one keeps a grace period.
    pub replaces: Option<i64>,
    /// The replaced version's grace period, in seconds.
    pub grace_s: i64,
}

impl WritePlan {
    /// A rotation needs an active secret; a push creates, overwrites or re-issues one.
    pub(crate) fn decide(
        current: Option<(i64, &str)>,
        kind: WriteKind,
        grace_seconds: Option<u64>,
        default_grace_s: i64,
    ) -> Result<WritePlan, StoreError> {
        let replaces = match (current, kind) {
            (None, WriteKind::Rotate) => return Err(StoreError::NotFound("secret")),
            (Some((_, state)), WriteKind::Rotate) if state != "active" => {
                return Err(StoreError::Revoked);
            }
            (Some((v, "active")), _) => Some(v),
            _ => None,
        };
        Ok(WritePlan {
            version: current.map(|(v, _)| v + 1).unwrap_or(1),
            replaces,
            grace_s: grace_seconds
                .map(|g| i64::try_from(g).unwrap_or(i64::MAX))
                .unwrap_or(default_grace_s),
        })
    }

    /// [`decide`](Self::decide) for write `w` given the secret's current (version, state).
    pub(crate) fn for_write(
        w: &WriteVersion,
        current: Option<&(i64, String)>,
        default_grace_s: i64,
    ) -> Result<WritePlan, StoreError> {
        Self::decide(
            current.map(|(v, state)| (*v, state.as_str())),
            w.kind,
            w.grace_seconds,
            default_grace_s,
        )
    }

    /// When the replaced version stops being readable, written at `now_ms`; `None` without
    /// a grace period.
    pub(crate) fn grace_until_ms(&self, now_ms: i64) -> Option<i64> {
        (self.grace_s > 0).then(|| now_ms.saturating_add(self.grace_s.saturating_mul(1000)))
    }

    /// The audit record of write `w`: `rotated` when it replaces an active version, else
    /// `issued`.
    pub(crate) fn audit_record(&self, w: &WriteVersion) -> NewAuditRecord {
        let action = if self.replaces.is_some() {
            "rotated"
        } else {
            "issued"
        };
        NewAuditRecord {
            org_id: Some(w.org_id.clone()),
            environment: Some(w.environment.clone()),
            secret: Some(w.secret_name.clone()),
            version: Some(u(self.version)),
            user_id: w.user_id.clone(),
            ..w.audit.record(w.now_ms, action)
        }
    }

    /// The answer to write `w` (`previous_expires`: when the replaced version's grace ends).
    pub(crate) fn response(
        &self,
        w: &WriteVersion,
        previous_expires: Option<String>,
    ) -> PushResponse {
        PushResponse {
            secret_name: w.secret_name.clone(),
            environment: w.environment.clone(),
            version: u(self.version),
            created_at: fmt_ms(w.now_ms),
            previous_version_expires_at: previous_expires,
            user_id: w.user_id.clone(),
        }
    }
}

/// The full-resync rule of the sync feed, for every store: an agent that holds nothing
/// (`since` 0) or claims a revision the environment never reached (a restored or replaced
/// vault) gets the full state; any other gets the changes after `since`. Returns (full, the
/// revision to read changes after).
pub(crate) fn sync_from(since: u64, revision: u64) -> (bool, u64) {
    let full = since == 0 || since > revision;
    (full, if full { 0 } else { since })
}

/// One row of the sync query, as both stores select it.
#[derive(Debug)]
pub(crate) struct SyncRow {
    pub name: String,
    pub version: i64,
    pub state: String,
    pub updated_ms: i64,
    pub sealed: Option<String>,
    /// The previous version, when its grace runs at the time of the query.
    pub prev_version: Option<i64>,
    pub prev_sealed: Option<String>,
    pub prev_until_ms: Option<i64>,
}

impl SyncRow {
    /// What the agent is told about this secret at `now_ms`.
    pub(crate) fn into_secret(self, now_ms: i64) -> SyncSecret {
        let active = self.state == "active";
        let previous = match (active, self.prev_version, self.prev_sealed) {
            (true, Some(pv), Some(sealed_value)) => Some(SyncPrevious {
                version: u(pv),
                sealed_value,
                grace_remaining_ms: u(self.prev_until_ms.unwrap_or(now_ms) - now_ms),
            }),
            _ => None,
        };
        SyncSecret {
            name: self.name,
            version: u(self.version),
            state: if active {
                SecretState::Active
            } else {
                SecretState::Revoked
            },
            sealed_value: if active { self.sealed } else { None },
            updated_at: fmt_ms(self.updated_ms),
            previous,
        }
    }

    /// [`into_secret`](Self::into_secret) for one user's value.
    pub(crate) fn into_user_secret(self, user_id: String, now_ms: i64) -> SyncUserSecret {
        SyncUserSecret {
            user_id,
            secret: self.into_secret(now_ms),
        }
    }
}

/// An `Idempotency-Key` as the store keeps it: both parts are hashes (see `vault::idempotency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key_hash: String,
    pub fingerprint: String,
}

impl Idempotency {
    /// A write repeated with a key the store remembers (with that write's `fingerprint` and
    /// answer): the same answer again, or a mismatch when the request differs.
    pub(crate) fn replay(
        &self,
        fingerprint: &str,
        response: &str,
    ) -> Result<WriteOutcome, StoreError> {
        if !crate::crypto::ct_eq(fingerprint.as_bytes(), self.fingerprint.as_bytes()) {
            return Err(StoreError::IdempotencyMismatch);
        }
        let response: PushResponse = serde_json::from_str(response)
            .map_err(|e| StoreError::Backend(format!("stored idempotent answer: {e}")))?;
        Ok(WriteOutcome {
            response,
            replayed: true,
            revision: None,
        })
    }
}

/// One new version of one secret in one environment.
#[derive(Debug, Clone)]
pub struct WriteVersion {
    pub org_id: String,
    pub environment: String,
    pub secret_name: String,
    pub provider_id: String,
    pub kind: WriteKind,
    /// base64 HPKE sealed value (never plaintext).
    pub sealed_value: String,
    /// Grace of the replaced version; `None` = the environment's default.
    pub grace_seconds: Option<u64>,
    pub idempotency: Option<Idempotency>,
    /// A user-vault secret: the value of this app user (`None`: the creator value).
    pub user_id: Option<String>,
    pub now_ms: i64,
    pub audit: AuditContext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub response: PushResponse,
    /// True when the answer is the stored one of an earlier request with the same key.
    pub replayed: bool,
    /// The environment's new revision (to wake sync waiters); `None` when replayed.
    pub revision: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RevokeSecret {
    pub org_id: String,
    pub secret_name: String,
    pub provider_id: String,
    /// Only this app user's value (`None`: the secret, creator and every user's value).
    pub user_id: Option<String>,
    pub now_ms: i64,
    pub audit: AuditContext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Every environment where the name is now revoked, sorted.
    pub environments: Vec<String>,
    /// `(environment, new revision)` of the environments this call changed.
    pub changed: Vec<(String, u64)>,
}

impl RevokeOutcome {
    /// Both outcomes in one: environments once each, an environment's newest revision.
    pub(crate) fn merge(mut self, other: RevokeOutcome) -> RevokeOutcome {
        self.environments.extend(other.environments);
        self.environments.sort();
        self.environments.dedup();
        self.changed.extend(other.changed);
        self.changed.sort();
        self.changed.reverse();
        self.changed.dedup_by(|a, b| a.0 == b.0);
        self.changed.reverse();
        self
    }

    /// `NotFound` when nothing of that name (or user) was ever there.
    pub(crate) fn found(self) -> Result<RevokeOutcome, StoreError> {
        if self.environments.is_empty() {
            Err(StoreError::NotFound("secret"))
        } else {
            Ok(self)
        }
    }
}

/// A batch of agent access events, as the route has validated it.
#[derive(Debug, Clone)]
pub struct AgentBatch {
    pub org_id: String,
    pub environment: String,
    pub agent_id: String,
    pub host: Option<String>,
    /// `agent:<token id>`.
    pub actor: String,
    pub source_ip: Option<String>,
    /// Events with their times already parsed to Unix ms.
    pub events: Vec<(i64, AccessEvent)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// `None` = every org (and org-less records).
    pub org_id: Option<String>,
    pub secret: Option<String>,
    pub environment: Option<String>,
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFilter {
    pub org_id: Option<String>,
    pub kind: Option<TokenKind>,
    pub include_revoked: bool,
}

/// The vault's storage. Implementations must make each method one atomic transaction, and
/// serialize concurrent writes to one secret so versions are consecutive and none is lost.
pub trait Store: Send + Sync + 'static {
    // --- orgs, environments, providers
    fn create_org(&self, org: Org, audit: AuditContext) -> StoreFuture<'_, Org>;
    fn get_org(&self, org_id: &str) -> StoreFuture<'_, Option<Org>>;
    fn list_orgs(&self) -> StoreFuture<'_, Vec<Org>>;
    fn create_environment(
        &self,
        env: Environment,
        audit: AuditContext,
    ) -> StoreFuture<'_, Environment>;
    fn set_environment_grace(
        &self,
        org_id: &str,
        env: &str,
        grace_seconds: u64,
    ) -> StoreFuture<'_, Environment>;
    fn get_environment(&self, org_id: &str, env: &str) -> StoreFuture<'_, Option<Environment>>;
    fn list_environments(&self, org_id: &str) -> StoreFuture<'_, Vec<Environment>>;
    /// Creates a provider and its first token together.
    fn create_provider(
        &self,
        provider: Provider,
        token: TokenRecord,
        audit: AuditContext,
    ) -> StoreFuture<'_, Provider>;
    fn get_provider(&self, org_id: &str, provider_id: &str) -> StoreFuture<'_, Option<Provider>>;
    fn list_providers(&self, org_id: &str) -> StoreFuture<'_, Vec<Provider>>;

    // --- tokens
    /// Stores a token (hash only) and its `token_created` audit record.
    fn create_token(&self, token: TokenRecord, audit: AuditContext) -> StoreFuture<'_, ()>;
    /// Looks a presented token up by its hash.
    fn find_token(&self, hash: &str) -> StoreFuture<'_, Option<TokenRecord>>;
    fn list_tokens(&self, filter: TokenFilter) -> StoreFuture<'_, Vec<TokenRecord>>;
    /// Revokes a token (idempotent: an already revoked one keeps its first revocation time)
    /// and records `token_revoked`.
    fn revoke_token(
        &self,
        token_id: &str,
        now_ms: i64,
        audit: AuditContext,
    ) -> StoreFuture<'_, TokenRecord>;
    /// Admin tokens neither revoked nor expired at `now_ms` (for `server init`).
    fn count_live_admin_tokens(&self, now_ms: i64) -> StoreFuture<'_, u64>;

    // --- secrets
    /// Writes a new version atomically: idempotency replay or mismatch (keys remembered for
    /// [`IDEMPOTENCY_RETENTION_MS`]), ownership, the replaced version's grace, the
    /// environment's revision, the audit record.
    fn write_version(&self, write: WriteVersion) -> StoreFuture<'_, WriteOutcome>;
    /// Revokes a secret name in every environment of the org, with no grace.
    fn revoke_secret(&self, revoke: RevokeSecret) -> StoreFuture<'_, RevokeOutcome>;
    /// Secrets of an environment changed after revision [`delta_base`]`(since, revision)`,
    /// with previous versions whose grace runs at `now_ms`, in one snapshot.
    fn sync_changes(
        &self,
        org_id: &str,
        env: &str,
        since: u64,
        now_ms: i64,
    ) -> StoreFuture<'_, ChangeSet>;

    /// The sync answer for one poll: changes after `since` (the full state when `since` is 0
    /// or ahead of the environment).
    fn sync(
        &self,
        org_id: &str,
        env: &str,
        since: u64,
        now_ms: i64,
    ) -> StoreFuture<'_, SyncResponse> {
        let read = self.sync_changes(org_id, env, since, now_ms);
        Box::pin(async move {
            read.await?.answer(since).ok_or_else(|| {
                StoreError::Backend("a sync read did not reach back to its own since".into())
            })
        })
    }

    // --- policy, user values, connect links (issue 14)
    /// Sets a secret's policy in one environment (declaring the name if need be), with its
    /// `policy_changed` audit record and a new revision when it changed.
    fn set_policy(&self, set: SetPolicy) -> StoreFuture<'_, PolicyOutcome>;
    /// Every secret name of an environment (pushed, declared by a policy, or with user
    /// values), by name, counting users whose value was read at or after `reads_since_ms`.
    fn list_secrets(
        &self,
        org_id: &str,
        env: &str,
        reads_since_ms: i64,
    ) -> StoreFuture<'_, Vec<SecretSummary>>;
    /// Stores a connect link (its hash) and its `link_created` audit record.
    fn create_link(&self, link: LinkRecord, audit: AuditContext) -> StoreFuture<'_, ()>;
    /// Looks a connect link up by the hash of its token.
    fn find_link(&self, hash: &str) -> StoreFuture<'_, Option<LinkRecord>>;
    /// Uses a connect link: in one transaction, checks it is unused and unexpired at
    /// `write.now_ms`, marks it used and writes `write` (a user's value, no owner check).
    fn use_link(&self, hash: &str, write: WriteVersion) -> StoreFuture<'_, WriteOutcome>;

    // --- audit
    fn append_audit(&self, record: NewAuditRecord) -> StoreFuture<'_, ()>;
    /// Records agent events, skipping those already recorded for
    /// `(org, environment, agent_id, seq)`.
    fn ingest_agent_batch(&self, batch: AgentBatch) -> StoreFuture<'_, AuditBatchResponse>;
    /// Records matching `filter`, oldest first, at most `filter.limit`.
    fn query_audit(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>>;
}

#[cfg(test)]
mod write_plan_tests {
    use super::*;

    #[test]
    fn the_full_resync_rule() {
        assert_eq!(sync_from(0, 0), (true, 0));
        assert_eq!(sync_from(0, 7), (true, 0));
        assert_eq!(sync_from(7, 7), (false, 7));
        assert_eq!(sync_from(3, 7), (false, 3));
        assert_eq!(
            sync_from(9, 7),
            (true, 0),
            "ahead of the vault: a restored vault"
        );
    }

    #[test]
    fn sync_rows_become_what_the_agent_is_told() {
        let row = |state: &str, prev: Option<i64>| SyncRow {
            name: "A".into(),
            version: 2,
            state: state.into(),
            updated_ms: 1_000,
            sealed: Some("s2".into()),
            prev_version: prev,
            prev_sealed: prev.map(|_| "s1".into()),
            prev_until_ms: prev.map(|_| 5_000),
        };
        let s = row("active", Some(1)).into_secret(2_000);
        assert_eq!(s.state, SecretState::Active);
        assert_eq!(s.sealed_value.as_deref(), Some("s2"));
        assert_eq!(s.updated_at, "1970-01-01T00:00:01Z");
        let p = s.previous.unwrap();
        assert_eq!((p.version, p.grace_remaining_ms), (1, 3_000));
        let r = row("revoked", Some(1)).into_secret(2_000);
        assert_eq!(r.state, SecretState::Revoked);
        assert!(r.sealed_value.is_none() && r.previous.is_none());
    }

    #[test]
    fn admins_write_any_name_providers_their_own() {
        assert!(may_write("prov_a", "prov_a"));
        assert!(!may_write("prov_a", "prov_b"));
        assert!(may_write("prov_a", "admin:tok_x"));
        assert!(!may_write("admin:tok_x", "prov_a"));
        assert!(may_write("admin:tok_x", "admin:tok_y"));
    }

    #[test]
    fn the_write_rule() {
        let plan = |cur, kind, grace| WritePlan::decide(cur, kind, grace, 300);
        let first = plan(None, WriteKind::Push, None).unwrap();
        assert_eq!(
            (first.version, first.replaces, first.grace_s),
            (1, None, 300)
        );
        let over = plan(Some((3, "active")), WriteKind::Push, Some(0)).unwrap();
        assert_eq!((over.version, over.replaces, over.grace_s), (4, Some(3), 0));
        assert_eq!(over.grace_until_ms(1_000), None);
        let rot = plan(Some((3, "active")), WriteKind::Rotate, Some(60)).unwrap();
        assert_eq!((rot.version, rot.replaces), (4, Some(3)));
        assert_eq!(rot.grace_until_ms(1_000), Some(61_000));
        let reissue = plan(Some((3, "revoked")), WriteKind::Push, None).unwrap();
        assert_eq!((reissue.version, reissue.replaces), (4, None));
        assert!(matches!(
            plan(None, WriteKind::Rotate, None),
            Err(StoreError::NotFound("secret"))
        ));
        assert!(matches!(
            plan(Some((3, "revoked")), WriteKind::Rotate, None),
            Err(StoreError::Revoked)
        ));
    }
}
