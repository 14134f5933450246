//! The embedded store: one SQLite file (`vault.db`, WAL, `synchronous=FULL`) in the data dir.
//!
//! - Writes go to one read-write connection through the group-commit writer ([`writer`]): the
//!   writes waiting together run one after another (each in its own savepoint) in one
//!   `BEGIN IMMEDIATE` transaction and share one durable `COMMIT`. Writes stay serialized, so
//!   versions and revisions are consecutive, and each is on disk before it is answered.
//! - Reads use a small pool of read-only connections from `spawn_blocking` (WAL readers
//!   neither wait for the writer nor block it; each read sees every write answered before it).
//!
//! Only sealed values, token hashes and metadata are ever written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AgentBatch, AuditContext, AuditFilter, ChangeSet, Environment, LinkRecord, NewAuditRecord, Org,
    PolicyOutcome, Provider, RevokeOutcome, RevokeSecret, SecretSummary, SetPolicy, Store,
    StoreError, StoreFuture, TokenFilter, TokenRecord, WriteOutcome, WriteVersion,
};
use crate::api::{AuditBatchResponse, AuditRecord};

mod audit;
mod floors;
mod readers;
mod rows;
mod schema;
mod secrets;
mod users;
mod writer;

use audit::{ingest_tx, query_audit_q};
use rows::{
    ENV_COLS, TOKEN_COLS, env_row, insert_audit, insert_token, kind_str, org_exists, token_audit,
    token_row,
};
use schema::{MIGRATIONS, SCHEMA, SCHEMA_BASE, SCHEMA_VERSION};
use secrets::{changes_q, revoke_tx, write_version_tx};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "vault.db";

pub(super) fn be(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Executes `sql` through the connection's statement cache (parsed once per connection).
pub(super) fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// One row of `sql`, through the connection's statement cache.
pub(super) fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// Statements kept prepared per connection (the store has about 40 distinct ones).
const STATEMENT_CACHE: usize = 64;

/// Settings every connection of the store gets: a statement cache, and the query planner
/// stability guarantee. Without it, this SQLite (built with STAT4) re-prepares a statement
/// whenever a value bound to a range constraint changes (`changed_rev > ?`, `grace_until_ms >
/// ?`), i.e. on every sync: parsing and planning again each time.
pub(super) fn tune(conn: &Connection) -> Result<(), StoreError> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(be)?;
    Ok(())
}

pub(super) use crate::vault::store::{i, u};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: writer::Writer,
    readers: Arc<readers::Readers>,
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
        tune(&conn)?;
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
        // One transaction: what is missing is created (a fresh database gets [`SCHEMA`], at
        // version [`SCHEMA_BASE`], and the migrations after it), an older one is migrated step
        // by step, and the version is set with it.
        let pending = match version {
            0 => &MIGRATIONS[usize::try_from(SCHEMA_BASE - 1).unwrap_or(0)..],
            v => &MIGRATIONS[usize::try_from(v - 1).unwrap_or(0)..],
        };
        let batch = format!(
            "BEGIN IMMEDIATE; {SCHEMA} {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
            pending.concat()
        );
        conn.execute_batch(&batch).map_err(be)?;
        conn.execute_batch(floors::SCHEMA).map_err(be)?;
        let readers = readers::Readers::open(path)?;
        Ok(SqliteStore {
            writer: writer::Writer::start(Arc::new(Mutex::new(conn)))?,
            readers: Arc::new(readers),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the read `f` on a read-only connection in the blocking pool.
    fn run<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || readers.with(f))
                .await
                .map_err(|_| StoreError::Backend("a storage task failed".into()))?
        })
    }

    /// Runs the write `f` atomically (in the next group commit); resolves once it is durable.
    fn tx<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = self.writer.clone();
        Box::pin(async move { writer.write(f).await })
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

impl Store for SqliteStore {
    fn create_org(&self, org: Org, audit: AuditContext) -> StoreFuture<'_, Org> {
        self.tx(move |tx| {
            if org_exists(tx, &org.org_id)? {
                return Err(StoreError::AlreadyExists("org"));
            }
            exec(
                tx,
                "INSERT INTO orgs (org_id, name, created_ms) VALUES (?1, ?2, ?3)",
                params![org.org_id, org.name, org.created_ms],
            )
            .map_err(be)?;
            insert_audit(
                tx,
                &NewAuditRecord {
                    org_id: Some(org.org_id.clone()),
                    ..audit.record(org.created_ms, "org_created")
                },
            )?;
            Ok(org)
        })
    }

    fn get_org(&self, org_id: &str) -> StoreFuture<'_, Option<Org>> {
        let org_id = org_id.to_string();
        self.run(move |c| {
            row(
                c,
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
                .prepare_cached(
                    "SELECT org_id, name, created_ms FROM orgs ORDER BY created_ms, org_id",
                )
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
            let exists = row(
                tx,
                "SELECT 1 FROM environments WHERE org_id = ?1 AND name = ?2",
                params![env.org_id, env.name],
                |_| Ok(()),
            )
            .optional()
            .map_err(be)?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists("environment"));
            }
            exec(
                tx,
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
                    ..audit.record(env.created_ms, "environment_created")
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
            row(
                tx,
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
            row(
                c,
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
                .prepare_cached(&format!(
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
            let exists = row(tx,
                    "SELECT 1 FROM providers WHERE provider_id = ?1",
                    [&provider.provider_id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(be)?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists("provider"));
            }
            exec(tx,
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
                    ..audit.record(provider.created_ms, "provider_created")
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
            row(
                c,
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
                .prepare_cached(
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
            row(
                c,
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
                .prepare_cached(&format!(
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
            let t = row(
                tx,
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
            exec(
                tx,
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
            row(
                c,
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

    fn sync_changes(
        &self,
        org_id: &str,
        env: &str,
        since: u64,
        now_ms: i64,
    ) -> StoreFuture<'_, ChangeSet> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        self.run(move |c| changes_q(c, &org_id, &env, since, now_ms))
    }

    fn set_policy(&self, set: SetPolicy) -> StoreFuture<'_, PolicyOutcome> {
        self.tx(move |tx| users::set_policy_tx(tx, &set))
    }

    fn list_secrets(
        &self,
        org_id: &str,
        env: &str,
        reads_since_ms: i64,
    ) -> StoreFuture<'_, Vec<SecretSummary>> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        self.run(move |c| users::list_secrets_q(c, &org_id, &env, reads_since_ms))
    }

    fn create_link(&self, link: LinkRecord, audit: AuditContext) -> StoreFuture<'_, ()> {
        self.tx(move |tx| users::create_link_tx(tx, &link, &audit))
    }

    fn find_link(&self, hash: &str) -> StoreFuture<'_, Option<LinkRecord>> {
        let hash = hash.to_string();
        self.run(move |c| users::find_link_q(c, &hash))
    }

    fn use_link(&self, hash: &str, write: WriteVersion) -> StoreFuture<'_, WriteOutcome> {
        let hash = hash.to_string();
        self.tx(move |tx| users::use_link_tx(tx, &hash, &write))
    }

    fn append_audit(&self, record: NewAuditRecord) -> StoreFuture<'_, ()> {
        self.tx(move |tx| insert_audit(tx, &record))
    }

    fn ingest_agent_batch(&self, batch: AgentBatch) -> StoreFuture<'_, AuditBatchResponse> {
        self.tx(move |tx| {
            let answer = ingest_tx(tx, &batch)?;
            floors::raise(tx, &batch)?;
            Ok(answer)
        })
    }

    fn query_audit(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>> {
        self.run(move |c| query_audit_q(c, &filter))
    }
}
