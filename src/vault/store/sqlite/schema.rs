//! The SQLite schema.

pub(super) const SCHEMA_VERSION: i64 = 2;

/// From one version to the next, in order (`MIGRATIONS[0]` takes version 1 to 2). A fresh
/// database gets [`SCHEMA`], which is already the newest.
pub(super) const MIGRATIONS: &[&str] = &[
    // 2: why an agent could not deliver a version (`undeliverable` events).
    "ALTER TABLE audit ADD COLUMN reason TEXT;",
];

pub(super) const SCHEMA: &str = r#"
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
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency(created_ms);
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
    seq         INTEGER,
    reason      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_agent_seq ON audit(org_id, environment, agent_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_org_time ON audit(org_id, time_ms);
"#;
