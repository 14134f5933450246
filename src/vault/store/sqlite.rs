//! The embedded store: one SQLite file (`vault.db`, WAL) in the data dir.
//!
//! One connection behind a mutex, used from `spawn_blocking`: every operation is one
//! `BEGIN IMMEDIATE` transaction, so concurrent writers are serialized and versions are
//! consecutive. Only sealed values, token hashes and metadata are ever written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    AgentBatch, AuditContext, AuditFilter, Environment, NewAuditRecord, Org, Provider,
    RevokeOutcome, RevokeSecret, Store, StoreError, StoreFuture, TokenFilter, TokenRecord,
    WriteKind, WriteOutcome, WriteVersion,
};
use crate::api::{
    AccessAction, AccessVia, AuditBatchResponse, AuditRecord, PushResponse, SecretState,
    SyncPrevious, SyncResponse, SyncSecret,
};
use crate::crypto::TokenKind;
use crate::vault::clock::fmt_ms;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "vault.db";

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orgs (
    org_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS environments (
    org_id          TEXT NOT NULL REFERENCES orgs(org_id),
    name            TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    default_grace_s INTEGER NOT NULL,
    revision        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, name)
);
CREATE TABLE IF NOT EXISTS providers (
    provider_id TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(org_id),
    name        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    org_id      TEXT,
    environment TEXT,
    provider_id TEXT,
    label       TEXT,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    revoked_ms  INTEGER
);
CREATE TABLE IF NOT EXISTS secrets (
    org_id          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    name            TEXT NOT NULL,
    owner_provider  TEXT NOT NULL,
    current_version INTEGER NOT NULL,
    state           TEXT NOT NULL,
    changed_rev     INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, name),
    FOREIGN KEY (org_id, environment) REFERENCES environments(org_id, name)
);
CREATE INDEX IF NOT EXISTS secrets_by_name ON secrets(org_id, name);
CREATE INDEX IF NOT EXISTS secrets_by_rev ON secrets(org_id, environment, changed_rev);
CREATE TABLE IF NOT EXISTS secret_versions (
    org_id         TEXT NOT NULL,
    environment    TEXT NOT NULL,
    name           TEXT NOT NULL,
    version        INTEGER NOT NULL,
    sealed         TEXT NOT NULL,
    provider_id    TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    grace_until_ms INTEGER,
    PRIMARY KEY (org_id, environment, name, version)
);
CREATE TABLE IF NOT EXISTS idempotency (
    org_id      TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    key_hash    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (org_id, provider_id, key_hash)
);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms     INTEGER NOT NULL,
    org_id      TEXT,
    environment TEXT,
    secret      TEXT,
    version     INTEGER,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source_ip   TEXT,
    host        TEXT,
    via         TEXT,
    pid         INTEGER,
    uid         INTEGER,
    gid         INTEGER,
    exe         TEXT,
    unit        TEXT,
    count       INTEGER,
    agent_id    TEXT,
    seq         INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_agent_seq ON audit(org_id, environment, agent_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_org_time ON audit(org_id, time_ms);
"#;

fn be(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `DATA_DIR/vault.db`; the dir is made 0700, the file 0600.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        Self::open_file(&data_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) one database file.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        create_private_file(path)?;
        let conn = Connection::open(path).map_err(be)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(be)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(be)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot switch the database to WAL mode (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(be)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(be)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "the database schema is version {version}, newer than this fyvault ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(be)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(be)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in the blocking pool.
    fn run<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut guard)
            })
            .await
            .map_err(|_| StoreError::Backend("a storage task failed".into()))?
        })
    }

    /// Runs `f` in one immediate (write-locking) transaction.
    fn tx<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(be)?;
            let out = f(&tx)?;
            tx.commit().map_err(be)?;
            Ok(out)
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", dir.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            StoreError::Backend(format!("cannot make {} private: {e}", dir.display()))
        })?;
    }
    Ok(())
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))
}

fn kind_str(k: TokenKind) -> &'static str {
    k.as_str()
}

fn kind_from(s: &str) -> TokenKind {
    match s {
        "provider" => TokenKind::Provider,
        "agent" => TokenKind::Agent,
        _ => TokenKind::Admin,
    }
}

const TOKEN_COLS: &str = "token_id, kind, hash, org_id, environment, provider_id, label, \
                          created_ms, expires_ms, revoked_ms";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let kind: String = r.get(1)?;
    Ok(TokenRecord {
        token_id: r.get(0)?,
        kind: kind_from(&kind),
        hash: r.get(2)?,
        org_id: r.get(3)?,
        environment: r.get(4)?,
        provider_id: r.get(5)?,
        label: r.get(6)?,
        created_ms: r.get(7)?,
        expires_ms: r.get(8)?,
        revoked_ms: r.get(9)?,
    })
}

const ENV_COLS: &str = "org_id, name, public_key, default_grace_s, revision, created_ms";

fn env_row(r: &Row<'_>) -> rusqlite::Result<Environment> {
    Ok(Environment {
        org_id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        default_grace_seconds: u(r.get(3)?),
        revision: u(r.get(4)?),
        created_ms: r.get(5)?,
    })
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, rec: &NewAuditRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor, source_ip)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            rec.time_ms,
            rec.org_id,
            rec.environment,
            rec.secret,
            rec.version.map(i),
            rec.action,
            rec.actor,
            rec.source_ip,
        ],
    )
    .map_err(be)?;
    Ok(())
}

fn audit_of(ctx: &AuditContext, time_ms: i64, action: &str) -> NewAuditRecord {
    NewAuditRecord {
        time_ms,
        action: action.to_string(),
        actor: ctx.actor.clone(),
        source_ip: ctx.source_ip.clone(),
        ..Default::default()
    }
}

fn org_exists(tx: &Connection, org_id: &str) -> Result<bool, StoreError> {
    tx.query_row("SELECT 1 FROM orgs WHERE org_id = ?1", [org_id], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(be)
}

fn insert_token(tx: &rusqlite::Transaction<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
        params![
            t.token_id,
            kind_str(t.kind),
            t.hash,
            t.org_id,
            t.environment,
            t.provider_id,
            t.label,
            t.created_ms,
            t.expires_ms,
            t.revoked_ms,
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::AlreadyExists("token")
        }
        e => be(e),
    })?;
    Ok(())
}

fn token_audit(t: &TokenRecord, ctx: &AuditContext, time_ms: i64, action: &str) -> NewAuditRecord {
    NewAuditRecord {
        org_id: t.org_id.clone(),
        environment: t.environment.clone(),
        ..audit_of(ctx, time_ms, action)
    }
}

/// Owner of a secret name in an org (the provider that first pushed it), if any.
fn owner_of(tx: &Connection, org_id: &str, name: &str) -> Result<Option<String>, StoreError> {
    tx.query_row(
        "SELECT owner_provider FROM secrets WHERE org_id = ?1 AND name = ?2 LIMIT 1",
        params![org_id, name],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)
}

fn bump_revision(tx: &Connection, org_id: &str, env: &str) -> Result<u64, StoreError> {
    tx.query_row(
        "UPDATE environments SET revision = revision + 1 WHERE org_id = ?1 AND name = ?2
         RETURNING revision",
        params![org_id, env],
        |r| r.get::<_, i64>(0),
    )
    .map(u)
    .map_err(be)
}

fn write_version_tx(
    tx: &rusqlite::Transaction<'_>,
    w: &WriteVersion,
) -> Result<WriteOutcome, StoreError> {
    if let Some(idem) = &w.idempotency {
        let prior: Option<(String, String)> = tx
            .query_row(
                "SELECT fingerprint, response FROM idempotency
                 WHERE org_id = ?1 AND provider_id = ?2 AND key_hash = ?3",
                params![w.org_id, w.provider_id, idem.key_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(be)?;
        if let Some((fingerprint, response)) = prior {
            if !crate::crypto::ct_eq(fingerprint.as_bytes(), idem.fingerprint.as_bytes()) {
                return Err(StoreError::IdempotencyMismatch);
            }
            let response: PushResponse = serde_json::from_str(&response)
                .map_err(|e| StoreError::Backend(format!("stored idempotent answer: {e}")))?;
            return Ok(WriteOutcome {
                response,
                replayed: true,
                revision: None,
            });
        }
    }
    let default_grace: i64 = tx
        .query_row(
            "SELECT default_grace_s FROM environments WHERE org_id = ?1 AND name = ?2",
            params![w.org_id, w.environment],
            |r| r.get(0),
        )
        .optional()
        .map_err(be)?
        .ok_or(StoreError::NotFound("environment"))?;
    if let Some(owner) = owner_of(tx, &w.org_id, &w.secret_name)?
        && owner != w.provider_id
    {
        return Err(StoreError::NotOwner);
    }
    let current: Option<(i64, String)> = tx
        .query_row(
            "SELECT current_version, state FROM secrets
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
            params![w.org_id, w.environment, w.secret_name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(be)?;
    let active_prev = match (&current, w.kind) {
        (None, WriteKind::Rotate) => return Err(StoreError::NotFound("secret")),
        (Some((_, state)), WriteKind::Rotate) if state != "active" => {
            return Err(StoreError::Revoked);
        }
        (Some((v, state)), _) if state == "active" => Some(*v),
        _ => None,
    };
    let version = current.as_ref().map(|(v, _)| v + 1).unwrap_or(1);
    let grace_s = w.grace_seconds.map(i).unwrap_or(default_grace);
    let mut previous_expires = None;
    if let Some(prev) = active_prev {
        // Only the version just replaced keeps a grace period; older ones end now.
        tx.execute(
            "UPDATE secret_versions SET grace_until_ms = ?4
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3
               AND grace_until_ms IS NOT NULL AND grace_until_ms > ?4",
            params![w.org_id, w.environment, w.secret_name, w.now_ms],
        )
        .map_err(be)?;
        if grace_s > 0 {
            let until = w.now_ms.saturating_add(grace_s.saturating_mul(1000));
            tx.execute(
                "UPDATE secret_versions SET grace_until_ms = ?5
                 WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND version = ?4",
                params![w.org_id, w.environment, w.secret_name, prev, until],
            )
            .map_err(be)?;
            previous_expires = Some(fmt_ms(until));
        }
    }
    let revision = bump_revision(tx, &w.org_id, &w.environment)?;
    tx.execute(
        "INSERT INTO secret_versions (org_id, environment, name, version, sealed, provider_id, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![w.org_id, w.environment, w.secret_name, version, w.sealed_value, w.provider_id, w.now_ms],
    )
    .map_err(be)?;
    tx.execute(
        "INSERT INTO secrets (org_id, environment, name, owner_provider, current_version, state, changed_rev, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7)
         ON CONFLICT (org_id, environment, name) DO UPDATE SET
           current_version = excluded.current_version, state = 'active',
           changed_rev = excluded.changed_rev, updated_ms = excluded.updated_ms",
        params![w.org_id, w.environment, w.secret_name, w.provider_id, version, i(revision), w.now_ms],
    )
    .map_err(be)?;
    let action = if active_prev.is_some() {
        "rotated"
    } else {
        "issued"
    };
    insert_audit(
        tx,
        &NewAuditRecord {
            org_id: Some(w.org_id.clone()),
            environment: Some(w.environment.clone()),
            secret: Some(w.secret_name.clone()),
            version: Some(u(version)),
            ..audit_of(&w.audit, w.now_ms, action)
        },
    )?;
    let response = PushResponse {
        secret_name: w.secret_name.clone(),
        environment: w.environment.clone(),
        version: u(version),
        created_at: fmt_ms(w.now_ms),
        previous_version_expires_at: previous_expires,
    };
    if let Some(idem) = &w.idempotency {
        let json = serde_json::to_string(&response)
            .map_err(|e| StoreError::Backend(format!("encode answer: {e}")))?;
        tx.execute(
            "INSERT INTO idempotency (org_id, provider_id, key_hash, fingerprint, response, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![w.org_id, w.provider_id, idem.key_hash, idem.fingerprint, json, w.now_ms],
        )
        .map_err(be)?;
    }
    Ok(WriteOutcome {
        response,
        replayed: false,
        revision: Some(revision),
    })
}

fn revoke_tx(
    tx: &rusqlite::Transaction<'_>,
    r: &RevokeSecret,
) -> Result<RevokeOutcome, StoreError> {
    if let Some(owner) = owner_of(tx, &r.org_id, &r.secret_name)?
        && owner != r.provider_id
    {
        return Err(StoreError::NotOwner);
    }
    let rows: Vec<(String, i64, String)> = {
        let mut st = tx
            .prepare(
                "SELECT environment, current_version, state FROM secrets
                 WHERE org_id = ?1 AND name = ?2 ORDER BY environment",
            )
            .map_err(be)?;
        st.query_map(params![r.org_id, r.secret_name], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(be)?
        .collect::<Result<_, _>>()
        .map_err(be)?
    };
    if rows.is_empty() {
        return Err(StoreError::NotFound("secret"));
    }
    let mut changed = Vec::new();
    for (env, version, state) in &rows {
        if state != "active" {
            continue;
        }
        let revision = bump_revision(tx, &r.org_id, env)?;
        tx.execute(
            "UPDATE secrets SET state = 'revoked', changed_rev = ?4, updated_ms = ?5
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
            params![r.org_id, env, r.secret_name, i(revision), r.now_ms],
        )
        .map_err(be)?;
        tx.execute(
            "UPDATE secret_versions SET grace_until_ms = NULL
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
            params![r.org_id, env, r.secret_name],
        )
        .map_err(be)?;
        insert_audit(
            tx,
            &NewAuditRecord {
                org_id: Some(r.org_id.clone()),
                environment: Some(env.clone()),
                secret: Some(r.secret_name.clone()),
                version: Some(u(*version)),
                ..audit_of(&r.audit, r.now_ms, "revoked")
            },
        )?;
        changed.push((env.clone(), revision));
    }
    Ok(RevokeOutcome {
        environments: rows.into_iter().map(|(e, _, _)| e).collect(),
        changed,
    })
}

fn sync_q(
    conn: &Connection,
    org_id: &str,
    env: &str,
    since: u64,
    now_ms: i64,
) -> Result<SyncResponse, StoreError> {
    let revision = conn
        .query_row(
            "SELECT revision FROM environments WHERE org_id = ?1 AND name = ?2",
            params![org_id, env],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(be)?
        .map(u)
        .ok_or(StoreError::NotFound("environment"))?;
    let full = since == 0 || since > revision;
    let from = if full { 0 } else { since };
    let mut st = conn
        .prepare(
            "SELECT s.name, s.current_version, s.state, s.updated_ms, v.sealed,
                    p.version, p.sealed, p.grace_until_ms
             FROM secrets s
             JOIN secret_versions v
               ON v.org_id = s.org_id AND v.environment = s.environment AND v.name = s.name
              AND v.version = s.current_version
             LEFT JOIN secret_versions p
               ON p.org_id = s.org_id AND p.environment = s.environment AND p.name = s.name
              AND p.version = s.current_version - 1 AND p.grace_until_ms > ?4
             WHERE s.org_id = ?1 AND s.environment = ?2 AND s.changed_rev > ?3
             ORDER BY s.name",
        )
        .map_err(be)?;
    let secrets = st
        .query_map(params![org_id, env, i(from), now_ms], |r| {
            let state: String = r.get(2)?;
            let active = state == "active";
            let prev_version: Option<i64> = r.get(5)?;
            let previous = match (active, prev_version) {
                (true, Some(pv)) => {
                    let until: i64 = r.get(7)?;
                    Some(SyncPrevious {
                        version: u(pv),
                        sealed_value: r.get(6)?,
                        grace_remaining_ms: u(until - now_ms),
                    })
                }
                _ => None,
            };
            Ok(SyncSecret {
                name: r.get(0)?,
                version: u(r.get(1)?),
                state: if active {
                    SecretState::Active
                } else {
                    SecretState::Revoked
                },
                sealed_value: if active { Some(r.get(4)?) } else { None },
                updated_at: fmt_ms(r.get(3)?),
                previous,
            })
        })
        .map_err(be)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(be)?;
    Ok(SyncResponse {
        revision,
        full,
        secrets,
    })
}

fn via_str(v: AccessVia) -> &'static str {
    match v {
        AccessVia::Fuse => "fuse",
        AccessVia::Socket => "socket",
    }
}

fn action_str(a: AccessAction) -> &'static str {
    match a {
        AccessAction::Accessed => "accessed",
        AccessAction::Denied => "denied",
        AccessAction::Dropped => "dropped",
    }
}

fn ingest_tx(
    tx: &rusqlite::Transaction<'_>,
    b: &AgentBatch,
) -> Result<AuditBatchResponse, StoreError> {
    let mut st = tx
        .prepare(
            "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor,
                source_ip, host, via, pid, uid, gid, exe, unit, count, agent_id, seq)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)
             ON CONFLICT (org_id, environment, agent_id, seq) DO NOTHING",
        )
        .map_err(be)?;
    let mut accepted = 0u64;
    for (time_ms, e) in &b.events {
        let n = st
            .execute(params![
                time_ms,
                b.org_id,
                b.environment,
                e.secret,
                e.version.map(i),
                action_str(e.action),
                b.actor,
                b.source_ip,
                b.host,
                e.via.map(via_str),
                e.pid,
                e.uid,
                e.gid,
                e.exe,
                e.unit,
                i(e.count),
                b.agent_id,
                i(e.seq),
            ])
            .map_err(be)?;
        accepted += n as u64;
    }
    Ok(AuditBatchResponse {
        accepted,
        duplicates: b.events.len() as u64 - accepted,
    })
}

fn query_audit_q(conn: &Connection, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT id, time_ms, org_id, environment, secret, version, action, actor, source_ip,
                    host, via, pid, uid, gid, exe, unit, count
             FROM audit
             WHERE (?1 IS NULL OR org_id = ?1)
               AND (?2 IS NULL OR secret = ?2)
               AND (?3 IS NULL OR environment = ?3)
               AND (?4 IS NULL OR action = ?4)
               AND (?5 IS NULL OR time_ms >= ?5)
               AND (?6 IS NULL OR time_ms <= ?6)
             ORDER BY time_ms, id
             LIMIT ?7",
        )
        .map_err(be)?;
    let rows = st
        .query_map(
            params![
                f.org_id,
                f.secret,
                f.environment,
                f.action,
                f.since_ms,
                f.until_ms,
                i64::from(f.limit)
            ],
            |r| {
                let via: Option<String> = r.get(10)?;
                Ok(AuditRecord {
                    id: u(r.get(0)?),
                    time: fmt_ms(r.get(1)?),
                    org_id: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    environment: r.get(3)?,
                    secret: r.get(4)?,
                    version: r.get::<_, Option<i64>>(5)?.map(u),
                    action: r.get(6)?,
                    actor: r.get(7)?,
                    source_ip: r.get(8)?,
                    host: r.get(9)?,
                    via: via.as_deref().and_then(|v| match v {
                        "fuse" => Some(AccessVia::Fuse),
                        "socket" => Some(AccessVia::Socket),
                        _ => None,
                    }),
                    pid: r.get(11)?,
                    uid: r.get(12)?,
                    gid: r.get(13)?,
                    exe: r.get(14)?,
                    unit: r.get(15)?,
                    count: r.get::<_, Option<i64>>(16)?.map(u),
                })
            },
        )
        .map_err(be)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(be)?;
    Ok(rows)
}

impl Store for SqliteStore {
    fn create_org(&self, org: Org, audit: AuditContext) -> StoreFuture<'_, Org> {
        self.tx(move |tx| {
            if org_exists(tx, &org.org_id)? {
                return Err(StoreError::AlreadyExists("org"));
            }
            tx.execute(
                "INSERT INTO orgs (org_id, name, created_ms) VALUES (?1, ?2, ?3)",
                params![org.org_id, org.name, org.created_ms],
            )
            .map_err(be)?;
            insert_audit(
                tx,
                &NewAuditRecord {
                    org_id: Some(org.org_id.clone()),
                    ..audit_of(&audit, org.created_ms, "org_created")
                },
            )?;
            Ok(org)
        })
    }

    fn get_org(&self, org_id: &str) -> StoreFuture<'_, Option<Org>> {
        let org_id = org_id.to_string();
        self.run(move |c| {
            c.query_row(
                "SELECT org_id, name, created_ms FROM orgs WHERE org_id = ?1",
                [org_id],
                |r| {
                    Ok(Org {
                        org_id: r.get(0)?,
                        name: r.get(1)?,
                        created_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(be)
        })
    }

    fn list_orgs(&self) -> StoreFuture<'_, Vec<Org>> {
        self.run(|c| {
            let mut st = c
                .prepare("SELECT org_id, name, created_ms FROM orgs ORDER BY created_ms, org_id")
                .map_err(be)?;
            st.query_map([], |r| {
                Ok(Org {
                    org_id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .map_err(be)?
            .collect::<Result<_, _>>()
            .map_err(be)
        })
    }

    fn create_environment(
        &self,
        env: Environment,
        audit: AuditContext,
    ) -> StoreFuture<'_, Environment> {
        self.tx(move |tx| {
            if !org_exists(tx, &env.org_id)? {
                return Err(StoreError::NotFound("org"));
            }
            let exists = tx
                .query_row(
                    "SELECT 1 FROM environments WHERE org_id = ?1 AND name = ?2",
                    params![env.org_id, env.name],
                    |_| Ok(()),
                )
                .optional()
                .map_err(be)?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists("environment"));
            }
            tx.execute(
                &format!("INSERT INTO environments ({ENV_COLS}) VALUES (?1,?2,?3,?4,0,?5)"),
                params![
                    env.org_id,
                    env.name,
                    env.public_key,
                    i(env.default_grace_seconds),
                    env.created_ms
                ],
            )
            .map_err(be)?;
            insert_audit(
                tx,
                &NewAuditRecord {
                    org_id: Some(env.org_id.clone()),
                    environment: Some(env.name.clone()),
                    ..audit_of(&audit, env.created_ms, "environment_created")
                },
            )?;
            Ok(Environment { revision: 0, ..env })
        })
    }

    fn set_environment_grace(
        &self,
        org_id: &str,
        env: &str,
        grace_seconds: u64,
    ) -> StoreFuture<'_, Environment> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        self.tx(move |tx| {
            tx.query_row(
                &format!(
                    "UPDATE environments SET default_grace_s = ?3 WHERE org_id = ?1 AND name = ?2
                     RETURNING {ENV_COLS}"
                ),
                params![org_id, env, i(grace_seconds)],
                env_row,
            )
            .optional()
            .map_err(be)?
            .ok_or(StoreError::NotFound("environment"))
        })
    }

    fn get_environment(&self, org_id: &str, env: &str) -> StoreFuture<'_, Option<Environment>> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {ENV_COLS} FROM environments WHERE org_id = ?1 AND name = ?2"),
                params![org_id, env],
                env_row,
            )
            .optional()
            .map_err(be)
        })
    }

    fn list_environments(&self, org_id: &str) -> StoreFuture<'_, Vec<Environment>> {
        let org_id = org_id.to_string();
        self.run(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {ENV_COLS} FROM environments WHERE org_id = ?1 ORDER BY name"
                ))
                .map_err(be)?;
            st.query_map([org_id], env_row)
                .map_err(be)?
                .collect::<Result<_, _>>()
                .map_err(be)
        })
    }

    fn create_provider(
        &self,
        provider: Provider,
        token: TokenRecord,
        audit: AuditContext,
    ) -> StoreFuture<'_, Provider> {
        self.tx(move |tx| {
            if !org_exists(tx, &provider.org_id)? {
                return Err(StoreError::NotFound("org"));
            }
            let exists = tx
                .query_row(
                    "SELECT 1 FROM providers WHERE provider_id = ?1",
                    [&provider.provider_id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(be)?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists("provider"));
            }
            tx.execute(
                "INSERT INTO providers (provider_id, org_id, name, created_ms) VALUES (?1,?2,?3,?4)",
                params![
                    provider.provider_id,
                    provider.org_id,
                    provider.name,
                    provider.created_ms
                ],
            )
            .map_err(be)?;
            insert_audit(
                tx,
                &NewAuditRecord {
                    org_id: Some(provider.org_id.clone()),
                    ..audit_of(&audit, provider.created_ms, "provider_created")
                },
            )?;
            insert_token(tx, &token)?;
            insert_audit(
                tx,
                &token_audit(&token, &audit, token.created_ms, "token_created"),
            )?;
            Ok(provider)
        })
    }

    fn get_provider(&self, org_id: &str, provider_id: &str) -> StoreFuture<'_, Option<Provider>> {
        let (org_id, provider_id) = (org_id.to_string(), provider_id.to_string());
        self.run(move |c| {
            c.query_row(
                "SELECT org_id, provider_id, name, created_ms FROM providers
                 WHERE org_id = ?1 AND provider_id = ?2",
                params![org_id, provider_id],
                |r| {
                    Ok(Provider {
                        org_id: r.get(0)?,
                        provider_id: r.get(1)?,
                        name: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(be)
        })
    }

    fn list_providers(&self, org_id: &str) -> StoreFuture<'_, Vec<Provider>> {
        let org_id = org_id.to_string();
        self.run(move |c| {
            let mut st = c
                .prepare(
                    "SELECT org_id, provider_id, name, created_ms FROM providers
                     WHERE org_id = ?1 ORDER BY created_ms, provider_id",
                )
                .map_err(be)?;
            st.query_map([org_id], |r| {
                Ok(Provider {
                    org_id: r.get(0)?,
                    provider_id: r.get(1)?,
                    name: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })
            .map_err(be)?
            .collect::<Result<_, _>>()
            .map_err(be)
        })
    }

    fn create_token(&self, token: TokenRecord, audit: AuditContext) -> StoreFuture<'_, ()> {
        self.tx(move |tx| {
            if let Some(org) = &token.org_id
                && !org_exists(tx, org)?
            {
                return Err(StoreError::NotFound("org"));
            }
            insert_token(tx, &token)?;
            insert_audit(
                tx,
                &token_audit(&token, &audit, token.created_ms, "token_created"),
            )
        })
    }

    fn find_token(&self, hash: &str) -> StoreFuture<'_, Option<TokenRecord>> {
        let hash = hash.to_string();
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = ?1"),
                [hash],
                token_row,
            )
            .optional()
            .map_err(be)
        })
    }

    fn list_tokens(&self, filter: TokenFilter) -> StoreFuture<'_, Vec<TokenRecord>> {
        self.run(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {TOKEN_COLS} FROM tokens
                     WHERE (?1 IS NULL OR org_id = ?1) AND (?2 IS NULL OR kind = ?2)
                       AND (?3 OR revoked_ms IS NULL)
                     ORDER BY created_ms, token_id"
                ))
                .map_err(be)?;
            st.query_map(
                params![
                    filter.org_id,
                    filter.kind.map(kind_str),
                    filter.include_revoked
                ],
                token_row,
            )
            .map_err(be)?
            .collect::<Result<_, _>>()
            .map_err(be)
        })
    }

    fn revoke_token(
        &self,
        token_id: &str,
        now_ms: i64,
        audit: AuditContext,
    ) -> StoreFuture<'_, TokenRecord> {
        let token_id = token_id.to_string();
        self.tx(move |tx| {
            let t = tx
                .query_row(
                    &format!("SELECT {TOKEN_COLS} FROM tokens WHERE token_id = ?1"),
                    [&token_id],
                    token_row,
                )
                .optional()
                .map_err(be)?
                .ok_or(StoreError::NotFound("token"))?;
            if t.revoked_ms.is_some() {
                return Ok(t);
            }
            tx.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE token_id = ?1",
                params![token_id, now_ms],
            )
            .map_err(be)?;
            insert_audit(tx, &token_audit(&t, &audit, now_ms, "token_revoked"))?;
            Ok(TokenRecord {
                revoked_ms: Some(now_ms),
                ..t
            })
        })
    }

    fn count_live_admin_tokens(&self, now_ms: i64) -> StoreFuture<'_, u64> {
        self.run(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM tokens WHERE kind = 'admin' AND revoked_ms IS NULL
                 AND (expires_ms IS NULL OR expires_ms > ?1)",
                [now_ms],
                |r| r.get::<_, i64>(0),
            )
            .map(u)
            .map_err(be)
        })
    }

    fn write_version(&self, write: WriteVersion) -> StoreFuture<'_, WriteOutcome> {
        self.tx(move |tx| write_version_tx(tx, &write))
    }

    fn revoke_secret(&self, revoke: RevokeSecret) -> StoreFuture<'_, RevokeOutcome> {
        self.tx(move |tx| revoke_tx(tx, &revoke))
    }

    fn sync(
        &self,
        org_id: &str,
        env: &str,
        since: u64,
        now_ms: i64,
    ) -> StoreFuture<'_, SyncResponse> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        self.run(move |c| sync_q(c, &org_id, &env, since, now_ms))
    }

    fn append_audit(&self, record: NewAuditRecord) -> StoreFuture<'_, ()> {
        self.tx(move |tx| insert_audit(tx, &record))
    }

    fn ingest_agent_batch(&self, batch: AgentBatch) -> StoreFuture<'_, AuditBatchResponse> {
        self.tx(move |tx| ingest_tx(tx, &batch))
    }

    fn query_audit(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>> {
        self.run(move |c| query_audit_q(c, &filter))
    }
}
