//! `impl Store for PgStore`: each method one transaction (or one statement) on a pooled
//! connection, with the same checks and answers as the SQLite store.

use super::audit::{ingest_tx, query_audit_q};
use super::rows::{
    ENV_COLS, TOKEN_COLS, all, env_row, exec, insert_audit, insert_token, opt, org_exists,
    token_audit, token_row,
};
use super::secrets::{changes_q, revoke_tx, write_version_tx};
use super::users;
use super::{PgStore, TOKENS_CHANNEL, i, pe, u, unique_as};
use crate::api::{AuditBatchResponse, AuditRecord};
use crate::vault::store::{
    AgentBatch, AuditContext, AuditFilter, ChangeSet, Environment, LinkRecord, NewAuditRecord, Org,
    PolicyOutcome, Provider, RevokeOutcome, RevokeSecret, SecretSummary, SetPolicy, Store,
    StoreError, StoreFuture, TokenFilter, TokenRecord, WriteOutcome, WriteVersion,
};

fn org_row(r: &tokio_postgres::Row) -> Org {
    Org {
        org_id: r.get(0),
        name: r.get(1),
        created_ms: r.get(2),
    }
}

fn provider_row(r: &tokio_postgres::Row) -> Provider {
    Provider {
        org_id: r.get(0),
        provider_id: r.get(1),
        name: r.get(2),
        created_ms: r.get(3),
    }
}

impl Store for PgStore {
    fn create_org(&self, org: Org, audit: AuditContext) -> StoreFuture<'_, Org> {
        in_tx!(self, tx => {
            let st = tx
                .prepare_cached("INSERT INTO orgs (org_id, name, created_ms) VALUES ($1, $2, $3)")
                .await
                .map_err(pe)?;
            tx.execute(&st, &[&org.org_id, &org.name, &org.created_ms])
                .await
                .map_err(unique_as("org"))?;
            insert_audit(
                &tx,
                &NewAuditRecord {
                    org_id: Some(org.org_id.clone()),
                    ..audit.record(org.created_ms, "org_created")
                },
            )
            .await?;
            org
        })
    }

    fn get_org(&self, org_id: &str) -> StoreFuture<'_, Option<Org>> {
        let org_id = org_id.to_string();
        on_conn!(self, c => opt(
            &c,
            "SELECT org_id, name, created_ms FROM orgs WHERE org_id = $1",
            &[&org_id],
        )
        .await?
        .map(|r| org_row(&r)))
    }

    fn list_orgs(&self) -> StoreFuture<'_, Vec<Org>> {
        on_conn!(self, c => all(
            &c,
            "SELECT org_id, name, created_ms FROM orgs ORDER BY created_ms, org_id COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(org_row)
        .collect())
    }

    fn create_environment(
        &self,
        env: Environment,
        audit: AuditContext,
    ) -> StoreFuture<'_, Environment> {
        in_tx!(self, tx => {
            if !org_exists(&tx, &env.org_id).await? {
                return Err(StoreError::NotFound("org"));
            }
            let st = tx
                .prepare_cached(&format!(
                    "INSERT INTO environments ({ENV_COLS}) VALUES ($1,$2,$3,$4,0,$5)"
                ))
                .await
                .map_err(pe)?;
            tx.execute(
                &st,
                &[
                    &env.org_id,
                    &env.name,
                    &env.public_key,
                    &i(env.default_grace_seconds),
                    &env.created_ms,
                ],
            )
            .await
            .map_err(unique_as("environment"))?;
            insert_audit(
                &tx,
                &NewAuditRecord {
                    org_id: Some(env.org_id.clone()),
                    environment: Some(env.name.clone()),
                    ..audit.record(env.created_ms, "environment_created")
                },
            )
            .await?;
            Environment { revision: 0, ..env }
        })
    }

    fn set_environment_grace(
        &self,
        org_id: &str,
        env: &str,
        grace_seconds: u64,
    ) -> StoreFuture<'_, Environment> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        in_tx!(self, tx => {
            let row = opt(
                &tx,
                &format!(
                    "UPDATE environments SET default_grace_s = $3 WHERE org_id = $1 AND name = $2
                     RETURNING {ENV_COLS}"
                ),
                &[&org_id, &env, &i(grace_seconds)],
            )
            .await?
            .ok_or(StoreError::NotFound("environment"))?;
            env_row(&row)
        })
    }

    fn get_environment(&self, org_id: &str, env: &str) -> StoreFuture<'_, Option<Environment>> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        on_conn!(self, c => opt(
            &c,
            &format!("SELECT {ENV_COLS} FROM environments WHERE org_id = $1 AND name = $2"),
            &[&org_id, &env],
        )
        .await?
        .map(|r| env_row(&r)))
    }

    fn list_environments(&self, org_id: &str) -> StoreFuture<'_, Vec<Environment>> {
        let org_id = org_id.to_string();
        on_conn!(self, c => all(
            &c,
            &format!(
                "SELECT {ENV_COLS} FROM environments WHERE org_id = $1 ORDER BY name COLLATE \"C\""
            ),
            &[&org_id],
        )
        .await?
        .iter()
        .map(env_row)
        .collect())
    }

    fn create_provider(
        &self,
        provider: Provider,
        token: TokenRecord,
        audit: AuditContext,
    ) -> StoreFuture<'_, Provider> {
        in_tx!(self, tx => {
            if !org_exists(&tx, &provider.org_id).await? {
                return Err(StoreError::NotFound("org"));
            }
            let st = tx
                .prepare_cached(
                    "INSERT INTO providers (provider_id, org_id, name, created_ms)
                     VALUES ($1,$2,$3,$4)",
                )
                .await
                .map_err(pe)?;
            tx.execute(
                &st,
                &[
                    &provider.provider_id,
                    &provider.org_id,
                    &provider.name,
                    &provider.created_ms,
                ],
            )
            .await
            .map_err(unique_as("provider"))?;
            insert_audit(
                &tx,
                &NewAuditRecord {
                    org_id: Some(provider.org_id.clone()),
                    ..audit.record(provider.created_ms, "provider_created")
                },
            )
            .await?;
            insert_token(&tx, &token).await?;
            insert_audit(
                &tx,
                &token_audit(&token, &audit, token.created_ms, "token_created"),
            )
            .await?;
            provider
        })
    }

    fn get_provider(&self, org_id: &str, provider_id: &str) -> StoreFuture<'_, Option<Provider>> {
        let (org_id, provider_id) = (org_id.to_string(), provider_id.to_string());
        on_conn!(self, c => opt(
            &c,
            "SELECT org_id, provider_id, name, created_ms FROM providers
             WHERE org_id = $1 AND provider_id = $2",
            &[&org_id, &provider_id],
        )
        .await?
        .map(|r| provider_row(&r)))
    }

    fn list_providers(&self, org_id: &str) -> StoreFuture<'_, Vec<Provider>> {
        let org_id = org_id.to_string();
        on_conn!(self, c => all(
            &c,
            "SELECT org_id, provider_id, name, created_ms FROM providers
             WHERE org_id = $1 ORDER BY created_ms, provider_id COLLATE \"C\"",
            &[&org_id],
        )
        .await?
        .iter()
        .map(provider_row)
        .collect())
    }

    fn create_token(&self, token: TokenRecord, audit: AuditContext) -> StoreFuture<'_, ()> {
        in_tx!(self, tx => {
            if let Some(org) = &token.org_id
                && !org_exists(&tx, org).await?
            {
                return Err(StoreError::NotFound("org"));
            }
            insert_token(&tx, &token).await?;
            insert_audit(
                &tx,
                &token_audit(&token, &audit, token.created_ms, "token_created"),
            )
            .await?
        })
    }

    fn find_token(&self, hash: &str) -> StoreFuture<'_, Option<TokenRecord>> {
        let hash = hash.to_string();
        on_conn!(self, c => opt(
            &c,
            &format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1"),
            &[&hash],
        )
        .await?
        .map(|r| token_row(&r)))
    }

    fn list_tokens(&self, filter: TokenFilter) -> StoreFuture<'_, Vec<TokenRecord>> {
        on_conn!(self, c => all(
            &c,
            &format!(
                "SELECT {TOKEN_COLS} FROM tokens
                 WHERE ($1::text IS NULL OR org_id = $1) AND ($2::text IS NULL OR kind = $2)
                   AND ($3::bool OR revoked_ms IS NULL)
                 ORDER BY created_ms, token_id COLLATE \"C\""
            ),
            &[
                &filter.org_id,
                &filter.kind.map(|k| k.as_str()),
                &filter.include_revoked,
            ],
        )
        .await?
        .iter()
        .map(token_row)
        .collect())
    }

    fn revoke_token(
        &self,
        token_id: &str,
        now_ms: i64,
        audit: AuditContext,
    ) -> StoreFuture<'_, TokenRecord> {
        let token_id = token_id.to_string();
        in_tx!(self, tx => {
            let t = opt(
                &tx,
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE token_id = $1 FOR UPDATE"),
                &[&token_id],
            )
            .await?
            .map(|r| token_row(&r))
            .ok_or(StoreError::NotFound("token"))?;
            if t.revoked_ms.is_some() {
                return Ok(t);
            }
            exec(
                &tx,
                "UPDATE tokens SET revoked_ms = $2 WHERE token_id = $1",
                &[&token_id, &now_ms],
            )
            .await?;
            insert_audit(&tx, &token_audit(&t, &audit, now_ms, "token_revoked")).await?;
            // Delivered at commit: every instance drops the token from its cache.
            exec(&tx, "SELECT pg_notify($1, $2)", &[&TOKENS_CHANNEL, &token_id]).await?;
            TokenRecord {
                revoked_ms: Some(now_ms),
                ..t
            }
        })
    }

    fn count_live_admin_tokens(&self, now_ms: i64) -> StoreFuture<'_, u64> {
        on_conn!(self, c => {
            let row = opt(
                &c,
                "SELECT COUNT(*) FROM tokens WHERE kind = 'admin' AND revoked_ms IS NULL
                 AND (expires_ms IS NULL OR expires_ms > $1)",
                &[&now_ms],
            )
            .await?
            .ok_or_else(|| StoreError::Backend("COUNT returned no row".into()))?;
            u(row.get(0))
        })
    }

    fn write_version(&self, write: WriteVersion) -> StoreFuture<'_, WriteOutcome> {
        in_tx!(self, tx => write_version_tx(&tx, &write).await?)
    }

    fn revoke_secret(&self, revoke: RevokeSecret) -> StoreFuture<'_, RevokeOutcome> {
        in_tx!(self, tx => revoke_tx(&tx, &revoke).await?)
    }

    fn sync_changes(
        &self,
        org_id: &str,
        env: &str,
        since: u64,
        now_ms: i64,
    ) -> StoreFuture<'_, ChangeSet> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        in_snapshot!(self, tx => changes_q(&tx, &org_id, &env, since, now_ms).await?)
    }

    fn set_policy(&self, set: SetPolicy) -> StoreFuture<'_, PolicyOutcome> {
        in_tx!(self, tx => users::set_policy_tx(&tx, &set).await?)
    }

    fn list_secrets(
        &self,
        org_id: &str,
        env: &str,
        reads_since_ms: i64,
    ) -> StoreFuture<'_, Vec<SecretSummary>> {
        let (org_id, env) = (org_id.to_string(), env.to_string());
        in_snapshot!(self, tx => users::list_secrets_q(&tx, &org_id, &env, reads_since_ms).await?)
    }

    fn create_link(&self, link: LinkRecord, audit: AuditContext) -> StoreFuture<'_, ()> {
        in_tx!(self, tx => users::create_link_tx(&tx, &link, &audit).await?)
    }

    fn find_link(&self, hash: &str) -> StoreFuture<'_, Option<LinkRecord>> {
        let hash = hash.to_string();
        on_conn!(self, c => users::find_link_q(&c, &hash, false).await?)
    }

    fn use_link(&self, hash: &str, write: WriteVersion) -> StoreFuture<'_, WriteOutcome> {
        let hash = hash.to_string();
        in_tx!(self, tx => users::use_link_tx(&tx, &hash, &write).await?)
    }

    fn append_audit(&self, record: NewAuditRecord) -> StoreFuture<'_, ()> {
        on_conn!(self, c => insert_audit(&c, &record).await?)
    }

    fn ingest_agent_batch(&self, batch: AgentBatch) -> StoreFuture<'_, AuditBatchResponse> {
        in_tx!(self, tx => {
            let answer = ingest_tx(&tx, &batch).await?;
            super::floors::raise(&tx, &batch).await?;
            answer
        })
    }

    fn query_audit(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>> {
        in_snapshot!(self, tx => query_audit_q(&tx, &filter).await?)
    }
}
