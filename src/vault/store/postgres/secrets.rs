//! Secret transactions: write a version, revoke a name, read the sync feed.
//!
//! The same steps as the SQLite store, plus the locks that SQLite's single writer gives for
//! free: an advisory lock per idempotency key (taken first), then one per `(org, secret name)`
//! (ownership is per name across the org's environments), then the environment row (revision).

use deadpool_postgres::Transaction;

use super::rows::{bump_revision, exec, insert_audit, lock, notify_change, opt, owner_of};
use super::users::{policy_changes, policy_of, revoke_users, user_changes, write_user};
use super::{i, u};
use crate::api::PushResponse;
use crate::vault::clock::fmt_ms;
use crate::vault::store::check_policy;
use crate::vault::store::{
    ChangeSet, IDEMPOTENCY_RETENTION_MS, NewAuditRecord, RevokeOutcome, RevokeSecret, StoreError,
    WriteOutcome, WritePlan, WriteVersion, delta_base, may_write,
};

/// How many expired idempotency keys one write clears on the way (never waiting on a row
/// another writer holds).
const IDEMPOTENCY_PURGE_BATCH: i64 = 100;

pub(super) async fn write_version_tx(
    tx: &Transaction<'_>,
    w: &WriteVersion,
) -> Result<WriteOutcome, StoreError> {
    if let Some(idem) = &w.idempotency {
        lock(tx, &["idem", &w.org_id, &w.provider_id, &idem.key_hash]).await?;
        let cutoff = w.now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS);
        exec(
            tx,
            "DELETE FROM idempotency
             WHERE org_id = $1 AND provider_id = $2 AND key_hash = $3 AND created_ms < $4",
            &[&w.org_id, &w.provider_id, &idem.key_hash, &cutoff],
        )
        .await?;
        exec(
            tx,
            "DELETE FROM idempotency WHERE ctid IN (
                 SELECT ctid FROM idempotency WHERE created_ms < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&cutoff, &IDEMPOTENCY_PURGE_BATCH],
        )
        .await?;
        let prior = opt(
            tx,
            "SELECT fingerprint, response FROM idempotency
             WHERE org_id = $1 AND provider_id = $2 AND key_hash = $3",
            &[&w.org_id, &w.provider_id, &idem.key_hash],
        )
        .await?;
        if let Some(row) = prior {
            return idem.replay(row.get(0), row.get(1));
        }
    }
    lock(tx, &["secret", &w.org_id, &w.secret_name]).await?;
    let default_grace = default_grace_of(tx, &w.org_id, &w.environment).await?;
    check_policy(
        policy_of(tx, &w.org_id, &w.environment, &w.secret_name).await?,
        w.user_id.as_deref(),
    )?;
    if let Some(owner) = owner_of(tx, &w.org_id, &w.secret_name).await?
        && !may_write(&owner, &w.provider_id)
    {
        return Err(StoreError::NotOwner);
    }
    let (response, revision) = match &w.user_id {
        None => write_creator(tx, w, default_grace).await?,
        Some(user) => write_user(tx, w, user, default_grace, Some(&w.provider_id)).await?,
    };
    Ok(WriteOutcome {
        response,
        replayed: false,
        revision: Some(revision),
    })
}

/// The environment's default grace period (seconds); `NotFound` without the environment.
pub(super) async fn default_grace_of(
    tx: &Transaction<'_>,
    org: &str,
    env: &str,
) -> Result<i64, StoreError> {
    Ok(opt(
        tx,
        "SELECT default_grace_s FROM environments WHERE org_id = $1 AND name = $2",
        &[&org, &env],
    )
    .await?
    .ok_or(StoreError::NotFound("environment"))?
    .get(0))
}

/// The stored answer of an idempotent write, written in its transaction.
pub(super) async fn remember_answer(
    tx: &Transaction<'_>,
    w: &WriteVersion,
    response: &PushResponse,
) -> Result<(), StoreError> {
    let Some(idem) = &w.idempotency else {
        return Ok(());
    };
    let json = serde_json::to_string(response)
        .map_err(|e| StoreError::Backend(format!("encode answer: {e}")))?;
    exec(
        tx,
        "INSERT INTO idempotency
             (org_id, provider_id, key_hash, fingerprint, response, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &w.org_id,
            &w.provider_id,
            &idem.key_hash,
            &idem.fingerprint,
            &json,
            &w.now_ms,
        ],
    )
    .await?;
    Ok(())
}

/// A new creator version of `w`: (answer, new revision).
async fn write_creator(
    tx: &Transaction<'_>,
    w: &WriteVersion,
    default_grace: i64,
) -> Result<(PushResponse, u64), StoreError> {
    let current: Option<(i64, String)> = opt(
        tx,
        "SELECT current_version, state FROM secrets
         WHERE org_id = $1 AND environment = $2 AND name = $3",
        &[&w.org_id, &w.environment, &w.secret_name],
    )
    .await?
    .map(|r| (r.get(0), r.get(1)));
    let plan = WritePlan::for_write(w, current.as_ref(), default_grace)?;
    let plan = super::floors::apply(tx, w, plan).await?;
    let version = plan.version;
    let mut previous_expires = None;
    if let Some(prev) = plan.replaces {
        // Only the version just replaced keeps a grace period; older ones end now.
        exec(
            tx,
            "UPDATE secret_versions SET grace_until_ms = $4
             WHERE org_id = $1 AND environment = $2 AND name = $3
               AND grace_until_ms IS NOT NULL AND grace_until_ms > $4",
            &[&w.org_id, &w.environment, &w.secret_name, &w.now_ms],
        )
        .await?;
        if let Some(until) = plan.grace_until_ms(w.now_ms) {
            exec(
                tx,
                "UPDATE secret_versions SET grace_until_ms = $5
                 WHERE org_id = $1 AND environment = $2 AND name = $3 AND version = $4",
                &[&w.org_id, &w.environment, &w.secret_name, &prev, &until],
            )
            .await?;
            previous_expires = Some(fmt_ms(until));
        }
    }
    exec(
        tx,
        "INSERT INTO secret_versions
             (org_id, environment, name, version, sealed, provider_id, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &w.org_id,
            &w.environment,
            &w.secret_name,
            &version,
            &w.sealed_value,
            &w.provider_id,
            &w.now_ms,
        ],
    )
    .await?;
    insert_audit(tx, &plan.audit_record(w)).await?;
    let response = plan.response(w, previous_expires);
    remember_answer(tx, w, &response).await?;
    // Last: from the revision bump to the commit, the environment row is locked and every
    // other writer of the environment waits, so keep that span short.
    let revision = bump_revision(tx, &w.org_id, &w.environment).await?;
    exec(
        tx,
        "INSERT INTO secrets (org_id, environment, name, owner_provider, current_version, state,
                              changed_rev, updated_ms)
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)
         ON CONFLICT (org_id, environment, name) DO UPDATE SET
           current_version = EXCLUDED.current_version, state = 'active',
           changed_rev = EXCLUDED.changed_rev, updated_ms = EXCLUDED.updated_ms",
        &[
            &w.org_id,
            &w.environment,
            &w.secret_name,
            &w.provider_id,
            &version,
            &i(revision),
            &w.now_ms,
        ],
    )
    .await?;
    notify_change(tx, &w.org_id, &w.environment, revision).await?;
    Ok((response, revision))
}

pub(super) async fn revoke_tx(
    tx: &Transaction<'_>,
    r: &RevokeSecret,
) -> Result<RevokeOutcome, StoreError> {
    lock(tx, &["secret", &r.org_id, &r.secret_name]).await?;
    if let Some(owner) = owner_of(tx, &r.org_id, &r.secret_name).await?
        && !may_write(&owner, &r.provider_id)
    {
        return Err(StoreError::NotOwner);
    }
    if let Some(user) = &r.user_id {
        return revoke_users(tx, r, Some(user)).await?.found();
    }
    let rows: Vec<(String, i64, String)> = super::rows::all(
        tx,
        "SELECT environment, current_version, state FROM secrets
         WHERE org_id = $1 AND name = $2 ORDER BY environment",
        &[&r.org_id, &r.secret_name],
    )
    .await?
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect();
    let mut changed = Vec::new();
    // Environments in name order, so two revocations lock environment rows in one order.
    for (env, version, state) in &rows {
        if state != "active" {
            continue;
        }
        let revision = bump_revision(tx, &r.org_id, env).await?;
        exec(
            tx,
            "UPDATE secrets SET state = 'revoked', changed_rev = $4, updated_ms = $5
             WHERE org_id = $1 AND environment = $2 AND name = $3",
            &[&r.org_id, env, &r.secret_name, &i(revision), &r.now_ms],
        )
        .await?;
        exec(
            tx,
            "UPDATE secret_versions SET grace_until_ms = NULL
             WHERE org_id = $1 AND environment = $2 AND name = $3",
            &[&r.org_id, env, &r.secret_name],
        )
        .await?;
        insert_audit(
            tx,
            &NewAuditRecord {
                org_id: Some(r.org_id.clone()),
                environment: Some(env.clone()),
                secret: Some(r.secret_name.clone()),
                version: Some(u(*version)),
                ..r.audit.record(r.now_ms, "revoked")
            },
        )
        .await?;
        notify_change(tx, &r.org_id, env, revision).await?;
        changed.push((env.clone(), revision));
    }
    RevokeOutcome {
        environments: rows.into_iter().map(|(e, _, _)| e).collect(),
        changed,
    }
    .merge(revoke_users(tx, r, None).await?)
    .found()
}

/// Runs on one repeatable-read snapshot, so the revision and the rows agree.
pub(super) async fn changes_q(
    tx: &Transaction<'_>,
    org_id: &str,
    env: &str,
    since: u64,
    now_ms: i64,
) -> Result<ChangeSet, StoreError> {
    let revision = opt(
        tx,
        "SELECT revision FROM environments WHERE org_id = $1 AND name = $2",
        &[&org_id, &env],
    )
    .await?
    .map(|r| u(r.get(0)))
    .ok_or(StoreError::NotFound("environment"))?;
    let from = delta_base(since, revision);
    let rows = super::rows::all(
        tx,
        "SELECT s.name, s.current_version,
                CASE WHEN pol.policy = 'user' THEN 'revoked' ELSE s.state END,
                s.updated_ms, v.sealed, p.version, p.sealed, p.grace_until_ms,
                GREATEST(s.changed_rev, COALESCE(pol.changed_rev, 0))
         FROM secrets s
         JOIN secret_versions v
           ON v.org_id = s.org_id AND v.environment = s.environment AND v.name = s.name
          AND v.version = s.current_version
         LEFT JOIN secret_versions p
           ON p.org_id = s.org_id AND p.environment = s.environment AND p.name = s.name
          AND p.version = s.current_version - 1 AND p.grace_until_ms > $4
         LEFT JOIN secret_policies pol
           ON pol.org_id = s.org_id AND pol.environment = s.environment AND pol.name = s.name
         WHERE s.org_id = $1 AND s.environment = $2
           AND (s.changed_rev > $3 OR pol.changed_rev > $3)
         ORDER BY s.name COLLATE \"C\"",
        &[&org_id, &env, &i(from), &now_ms],
    )
    .await?;
    let secrets = rows
        .iter()
        .map(|r| {
            let secret = super::rows::sync_row(r).into_secret(now_ms);
            (u(r.get(8)), secret)
        })
        .collect();
    Ok(ChangeSet {
        revision,
        from,
        rows: secrets,
        policies: policy_changes(tx, org_id, env, from).await?,
        users: user_changes(tx, org_id, env, from, now_ms).await?,
    })
}
