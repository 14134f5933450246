//! Row mapping, cached statements and small shared statements.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{CHANGES_CHANNEL, i, pe, u};
use crate::vault::store::{Environment, NewAuditRecord, StoreError, SyncRow, TokenRecord};

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a cached statement; returns at most one row.
pub(super) async fn opt<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pe)?;
    c.query_opt(&st, p).await.map_err(pe)
}

/// Runs a cached statement; returns every row.
pub(super) async fn all<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pe)?;
    c.query(&st, p).await.map_err(pe)
}

/// Runs a cached statement; returns how many rows it changed.
pub(super) async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pe)?;
    c.execute(&st, p).await.map_err(pe)
}

pub(super) use crate::vault::store::{TOKEN_COLS, kind_from};

pub(super) fn token_row(r: &Row) -> TokenRecord {
    let kind: String = r.get(1);
    TokenRecord {
        token_id: r.get(0),
        kind: kind_from(&kind),
        hash: r.get(2),
        org_id: r.get(3),
        environment: r.get(4),
        provider_id: r.get(5),
        label: r.get(6),
        created_ms: r.get(7),
        expires_ms: r.get(8),
        revoked_ms: r.get(9),
    }
}

pub(super) use crate::vault::store::ENV_COLS;

pub(super) fn env_row(r: &Row) -> Environment {
    Environment {
        org_id: r.get(0),
        name: r.get(1),
        public_key: r.get(2),
        default_grace_seconds: u(r.get(3)),
        revision: u(r.get(4)),
        created_ms: r.get(5),
    }
}

pub(super) async fn insert_audit<C: GenericClient>(
    c: &C,
    rec: &NewAuditRecord,
) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor, source_ip,
                            reason, user_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &rec.time_ms,
            &rec.org_id,
            &rec.environment,
            &rec.secret,
            &rec.version.map(i),
            &rec.action,
            &rec.actor,
            &rec.source_ip,
            &rec.reason,
            &rec.user_id,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn org_exists<C: GenericClient>(c: &C, org_id: &str) -> Result<bool, StoreError> {
    Ok(opt(c, "SELECT 1 FROM orgs WHERE org_id = $1", &[&org_id])
        .await?
        .is_some())
}

pub(super) async fn insert_token<C: GenericClient>(
    c: &C,
    t: &TokenRecord,
) -> Result<(), StoreError> {
    let st = c
        .prepare_cached(&format!(
            "INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
        ))
        .await
        .map_err(pe)?;
    c.execute(
        &st,
        &[
            &t.token_id,
            &t.kind.as_str(),
            &t.hash,
            &t.org_id,
            &t.environment,
            &t.provider_id,
            &t.label,
            &t.created_ms,
            &t.expires_ms,
            &t.revoked_ms,
        ],
    )
    .await
    .map_err(super::unique_as("token"))?;
    Ok(())
}

pub(super) use crate::vault::store::token_audit;

/// Owner of a secret name in an org (the provider that first pushed it, a creator value or a
/// user's), if any.
pub(super) async fn owner_of<C: GenericClient>(
    c: &C,
    org_id: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    Ok(opt(
        c,
        "SELECT owner_provider FROM secrets WHERE org_id = $1 AND name = $2
         UNION ALL
         SELECT owner_provider FROM user_secrets
         WHERE org_id = $1 AND name = $2 AND owner_provider IS NOT NULL
         LIMIT 1",
        &[&org_id, &name],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Bumps an environment's revision. The row lock it takes lasts until commit, so revisions of
/// one environment commit in increasing order.
pub(super) async fn bump_revision<C: GenericClient>(
    c: &C,
    org_id: &str,
    env: &str,
) -> Result<u64, StoreError> {
    let row = opt(
        c,
        "UPDATE environments SET revision = revision + 1 WHERE org_id = $1 AND name = $2
         RETURNING revision",
        &[&org_id, &env],
    )
    .await?
    .ok_or(StoreError::NotFound("environment"))?;
    Ok(u(row.get(0)))
}

/// Queues the change notification; PostgreSQL delivers it to every listener at commit.
pub(super) async fn notify_change<C: GenericClient>(
    c: &C,
    org_id: &str,
    env: &str,
    revision: u64,
) -> Result<(), StoreError> {
    let payload = format!("{org_id}|{env}|{revision}");
    exec(c, "SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &payload]).await?;
    Ok(())
}

/// Takes a transaction-scoped advisory lock named by `parts` (hashed to 64 bits; a collision
/// only serializes two unrelated writers).
pub(super) async fn lock<C: GenericClient>(c: &C, parts: &[&str]) -> Result<(), StoreError> {
    let key = parts.join("\u{1f}");
    exec(
        c,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// The first eight columns of a sync query (both the creator and the per-user one select them in
/// this order) as a [`SyncRow`].
pub(super) fn sync_row(r: &Row) -> SyncRow {
    SyncRow {
        name: r.get(0),
        version: r.get(1),
        state: r.get(2),
        updated_ms: r.get(3),
        sealed: r.get(4),
        prev_version: r.get(5),
        prev_sealed: r.get(6),
        prev_until_ms: r.get(7),
    }
}
