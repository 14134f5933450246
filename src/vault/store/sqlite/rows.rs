//! Row mapping and small shared statements.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{be, exec, i, row, u};
use crate::crypto::TokenKind;
use crate::vault::store::{Environment, NewAuditRecord, StoreError, SyncRow, TokenRecord};

pub(super) fn kind_str(k: TokenKind) -> &'static str {
    k.as_str()
}

pub(super) use crate::vault::store::{TOKEN_COLS, kind_from};

pub(super) fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
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

pub(super) use crate::vault::store::ENV_COLS;

pub(super) fn env_row(r: &Row<'_>) -> rusqlite::Result<Environment> {
    Ok(Environment {
        org_id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        default_grace_seconds: u(r.get(3)?),
        revision: u(r.get(4)?),
        created_ms: r.get(5)?,
    })
}

pub(super) fn insert_audit(tx: &Connection, rec: &NewAuditRecord) -> Result<(), StoreError> {
    exec(tx,
        "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor, source_ip,
                            reason, user_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            rec.time_ms,
            rec.org_id,
            rec.environment,
            rec.secret,
            rec.version.map(i),
            rec.action,
            rec.actor,
            rec.source_ip,
            rec.reason,
            rec.user_id,
        ],
    )
    .map_err(be)?;
    Ok(())
}

pub(super) fn org_exists(tx: &Connection, org_id: &str) -> Result<bool, StoreError> {
    row(tx, "SELECT 1 FROM orgs WHERE org_id = ?1", [org_id], |_| {
        Ok(())
    })
    .optional()
    .map(|o| o.is_some())
    .map_err(be)
}

pub(super) fn insert_token(tx: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    exec(
        tx,
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

pub(super) use crate::vault::store::token_audit;

/// Owner of a secret name in an org (the provider that first pushed it, a creator value or a
/// user's), if any.
pub(super) fn owner_of(
    tx: &Connection,
    org_id: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    row(
        tx,
        "SELECT owner_provider FROM secrets WHERE org_id = ?1 AND name = ?2
         UNION ALL
         SELECT owner_provider FROM user_secrets
         WHERE org_id = ?1 AND name = ?2 AND owner_provider IS NOT NULL
         LIMIT 1",
        params![org_id, name],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)
}

pub(super) fn bump_revision(tx: &Connection, org_id: &str, env: &str) -> Result<u64, StoreError> {
    row(
        tx,
        "UPDATE environments SET revision = revision + 1 WHERE org_id = ?1 AND name = ?2
         RETURNING revision",
        params![org_id, env],
        |r| r.get::<_, i64>(0),
    )
    .map(u)
    .map_err(be)
}

/// The first eight columns of a sync query (both the creator and the per-user one select them in
/// this order) as a [`SyncRow`].
pub(super) fn sync_row(r: &Row) -> rusqlite::Result<SyncRow> {
    Ok(SyncRow {
        name: r.get(0)?,
        version: r.get(1)?,
        state: r.get(2)?,
        updated_ms: r.get(3)?,
        sealed: r.get(4)?,
        prev_version: r.get(5)?,
        prev_sealed: r.get(6)?,
        prev_until_ms: r.get(7)?,
    })
}
