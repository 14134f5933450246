//! The SQLite schema.

pub(super) const SCHEMA_VERSION: i64 = 3;

/// The version [`SCHEMA`] creates: a fresh database gets it, then the migrations after it.
pub(super) const SCHEMA_BASE: i64 = 2;

/// From one version to the next, in order (`MIGRATIONS[0]` takes version 1 to 2).
pub(super) const MIGRATIONS: &[&str] = &[
    // 2: why an agent could not deliver a version (`undeliverable` events).
    "ALTER TABLE audit ADD COLUMN reason TEXT;",
    // 3: per-secret policy, per-user values, connect links (issue 14).
    V3,
];

/// Policy per secret and environment, per-user values, connect links, the user of an audit
/// record.
const V3: &str = r#"
CREATE TABLE IF NOT EXISTS secret_policies (
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    policy      TEXT NOT NULL,
    changed_rev INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, name)
);
CREATE INDEX IF NOT EXISTS secret_policies_by_rev ON secret_policies(org_id, environment, changed_rev);
CREATE TABLE IF NOT EXISTS user_secrets (
    org_id          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    name            TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    owner_provider  TEXT,
    current_version INTEGER NOT NULL,
    state           TEXT NOT NULL,
    changed_rev     INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, name, user_id)
);
CREATE INDEX IF NOT EXISTS user_secrets_by_name ON user_secrets(org_id, name);
CREATE INDEX IF NOT EXISTS user_secrets_by_rev ON user_secrets(org_id, environment, changed_rev);
CREATE TABLE IF NOT EXISTS user_secret_versions (
    org_id         TEXT NOT NULL,
    environment    TEXT NOT NULL,
    name           TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    version        INTEGER NOT NULL,
    sealed         TEXT NOT NULL,
    writer         TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    grace_until_ms INTEGER,
    PRIMARY KEY (org_id, environment, name, user_id, version)
);
CREATE TABLE IF NOT EXISTS connect_links (
    hash        TEXT PRIMARY KEY,
    link_id     TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS connect_links_by_expiry ON connect_links(expires_ms);
ALTER TABLE audit ADD COLUMN user_id TEXT;
CREATE INDEX IF NOT EXISTS audit_user_reads ON audit(org_id, environment, secret, action, time_ms) WHERE user_id IS NOT NULL;
"#;

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
