//! The PostgreSQL schema as numbered migrations, applied at start.
//!
//! `schema_migrations` records every applied version. Migrating runs in one transaction that
//! first takes a transaction-scoped advisory lock, so when several instances start at once
//! one migrates and the others wait, then find nothing left to do. A database migrated by a
//! newer fyvault (a version this binary does not know) is refused rather than used.

use super::{err_text, pe};
use crate::vault::store::StoreError;

/// The two-key advisory lock guarding migrations ("fyvault", "schema"). The two-key space
/// does not overlap the one-key space the secret locks use.
const MIGRATION_LOCK: (i32, i32) = (0x6679_7661, 0x7363_6865);

/// Every migration, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial schema", V1),
    (
        2,
        "audit reason",
        "ALTER TABLE audit ADD COLUMN reason TEXT",
    ),
    (3, "version floors", super::floors::SCHEMA),
    (4, "policies, user values, connect links", V4),
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i32 = 4;

/// Policy per secret and environment, per-user values, connect links, the user of an audit
/// record (issue 14).
const V4: &str = r#"
CREATE TABLE IF NOT EXISTS secret_policies (
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    policy      TEXT NOT NULL,
    changed_rev BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (org_id, environment, name)
);
CREATE INDEX IF NOT EXISTS secret_policies_by_rev ON secret_policies(org_id, environment, changed_rev);
CREATE TABLE IF NOT EXISTS user_secrets (
    org_id          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    name            TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    owner_provider  TEXT,
    current_version BIGINT NOT NULL,
    state           TEXT NOT NULL,
    changed_rev     BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (org_id, environment, name, user_id)
);
CREATE INDEX IF NOT EXISTS user_secrets_by_name ON user_secrets(org_id, name);
CREATE INDEX IF NOT EXISTS user_secrets_by_rev ON user_secrets(org_id, environment, changed_rev);
CREATE TABLE IF NOT EXISTS user_secret_versions (
    org_id         TEXT NOT NULL,
    environment    TEXT NOT NULL,
    name           TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    version        BIGINT NOT NULL,
    sealed         TEXT NOT NULL,
    writer         TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    grace_until_ms BIGINT,
    PRIMARY KEY (org_id, environment, name, user_id, version)
);
CREATE TABLE IF NOT EXISTS connect_links (
    hash        TEXT PRIMARY KEY,
    link_id     TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    used_ms     BIGINT
);
CREATE INDEX IF NOT EXISTS connect_links_by_expiry ON connect_links(expires_ms);
ALTER TABLE audit ADD COLUMN user_id TEXT;
CREATE INDEX IF NOT EXISTS audit_user_reads ON audit(org_id, environment, secret, action, time_ms) WHERE user_id IS NOT NULL;
"#;

const V1: &str = r#"
CREATE TABLE orgs (
    org_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE TABLE environments (
    org_id          TEXT NOT NULL REFERENCES orgs(org_id),
    name            TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    default_grace_s BIGINT NOT NULL,
    revision        BIGINT NOT NULL DEFAULT 0,
    created_ms      BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);
CREATE TABLE providers (
    provider_id TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(org_id),
    name        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    org_id      TEXT,
    environment TEXT,
    provider_id TEXT,
    label       TEXT,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT,
    revoked_ms  BIGINT
);
CREATE TABLE secrets (
    org_id          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    name            TEXT NOT NULL,
    owner_provider  TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    state           TEXT NOT NULL,
    changed_rev     BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (org_id, environment, name),
    FOREIGN KEY (org_id, environment) REFERENCES environments(org_id, name)
);
CREATE INDEX secrets_by_name ON secrets(org_id, name);
CREATE INDEX secrets_by_rev ON secrets(org_id, environment, changed_rev);
CREATE TABLE secret_versions (
    org_id         TEXT NOT NULL,
    environment    TEXT NOT NULL,
    name           TEXT NOT NULL,
    version        BIGINT NOT NULL,
    sealed         TEXT NOT NULL,
    provider_id    TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    grace_until_ms BIGINT,
    PRIMARY KEY (org_id, environment, name, version)
);
CREATE TABLE idempotency (
    org_id      TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    key_hash    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (org_id, provider_id, key_hash)
);
CREATE INDEX idempotency_by_time ON idempotency(created_ms);
CREATE TABLE audit (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    time_ms     BIGINT NOT NULL,
    org_id      TEXT,
    environment TEXT,
    secret      TEXT,
    version     BIGINT,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source_ip   TEXT,
    host        TEXT,
    via         TEXT,
    pid         BIGINT,
    uid         BIGINT,
    gid         BIGINT,
    exe         TEXT,
    unit        TEXT,
    count       BIGINT,
    agent_id    TEXT,
    seq         BIGINT
);
CREATE UNIQUE INDEX audit_agent_seq ON audit(org_id, environment, agent_id, seq);
CREATE INDEX audit_by_org_time ON audit(org_id, time_ms);
"#;

/// Applies every pending migration; returns how many were applied.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<usize, StoreError> {
    let tx = client.transaction().await.map_err(pe)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
    )
    .await
    .map_err(pe)?;
    // `IF NOT EXISTS` on a schema in place makes the server send a NOTICE ("relation …
    // already exists, skipping"), which the driver logs at INFO on every start: routine, so
    // this transaction asks only for warnings and worse.
    tx.batch_execute(
        "SET LOCAL client_min_messages TO warning;
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pe)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pe)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database schema is version {current}, newer than this fyvault ({SCHEMA_VERSION}); \
             upgrade fyvault"
        )));
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {version} ({name}): {}", err_text(&e)))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(pe)?;
        applied += 1;
    }
    tx.commit().await.map_err(pe)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        for (n, (v, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, n + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
