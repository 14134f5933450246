//! Secret transactions: write a version, revoke a name, read the sync feed.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{bump_revision, insert_audit, owner_of};
use super::users::{policy_changes, policy_of, revoke_users, user_changes, write_user};
use super::{be, exec, i, row, u};
use crate::api::PushResponse;
use crate::vault::clock::fmt_ms;
use crate::vault::store::check_policy;
use crate::vault::store::{
    ChangeSet, IDEMPOTENCY_RETENTION_MS, NewAuditRecord, RevokeOutcome, RevokeSecret, StoreError,
    WriteOutcome, WritePlan, WriteVersion, delta_base, may_write,
};

pub(super) fn write_version_tx(
    tx: &Connection,
    w: &WriteVersion,
) -> Result<WriteOutcome, StoreError> {
    if let Some(idem) = &w.idempotency {
        exec(
            tx,
            "DELETE FROM idempotency WHERE created_ms < ?1",
            [w.now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS)],
        )
        .map_err(be)?;
        let prior: Option<(String, String)> = row(
            tx,
            "SELECT fingerprint, response FROM idempotency
                 WHERE org_id = ?1 AND provider_id = ?2 AND key_hash = ?3",
            params![w.org_id, w.provider_id, idem.key_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(be)?;
        if let Some((fingerprint, response)) = prior {
            return idem.replay(&fingerprint, &response);
        }
    }
    let default_grace = default_grace_of(tx, &w.org_id, &w.environment)?;
    check_policy(
        policy_of(tx, &w.org_id, &w.environment, &w.secret_name)?,
        w.user_id.as_deref(),
    )?;
    if let Some(owner) = owner_of(tx, &w.org_id, &w.secret_name)?
        && !may_write(&owner, &w.provider_id)
    {
        return Err(StoreError::NotOwner);
    }
    let (response, revision) = match &w.user_id {
        None => write_creator(tx, w, default_grace)?,
        Some(user) => write_user(tx, w, user, default_grace, Some(&w.provider_id))?,
    };
    if let Some(idem) = &w.idempotency {
        let json = serde_json::to_string(&response)
            .map_err(|e| StoreError::Backend(format!("encode answer: {e}")))?;
        exec(tx,
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

/// The environment's default grace period (seconds); `NotFound` without the environment.
pub(super) fn default_grace_of(tx: &Connection, org: &str, env: &str) -> Result<i64, StoreError> {
    row(
        tx,
        "SELECT default_grace_s FROM environments WHERE org_id = ?1 AND name = ?2",
        params![org, env],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)?
    .ok_or(StoreError::NotFound("environment"))
}

/// A new creator version of `w`: (answer, new revision).
fn write_creator(
    tx: &Connection,
    w: &WriteVersion,
    default_grace: i64,
) -> Result<(PushResponse, u64), StoreError> {
    let current: Option<(i64, String)> = row(
        tx,
        "SELECT current_version, state FROM secrets
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
        params![w.org_id, w.environment, w.secret_name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(be)?;
    let plan = WritePlan::for_write(w, current.as_ref(), default_grace)?;
    let plan = super::floors::apply(tx, w, plan)?;
    let version = plan.version;
    let mut previous_expires = None;
    if let Some(prev) = plan.replaces {
        // Only the version just replaced keeps a grace period; older ones end now.
        exec(
            tx,
            "UPDATE secret_versions SET grace_until_ms = ?4
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3
               AND grace_until_ms IS NOT NULL AND grace_until_ms > ?4",
            params![w.org_id, w.environment, w.secret_name, w.now_ms],
        )
        .map_err(be)?;
        if let Some(until) = plan.grace_until_ms(w.now_ms) {
            exec(
                tx,
                "UPDATE secret_versions SET grace_until_ms = ?5
                 WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND version = ?4",
                params![w.org_id, w.environment, w.secret_name, prev, until],
            )
            .map_err(be)?;
            previous_expires = Some(fmt_ms(until));
        }
    }
    let revision = bump_revision(tx, &w.org_id, &w.environment)?;
    exec(tx,
        "INSERT INTO secret_versions (org_id, environment, name, version, sealed, provider_id, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![w.org_id, w.environment, w.secret_name, version, w.sealed_value, w.provider_id, w.now_ms],
    )
    .map_err(be)?;
    exec(tx,
        "INSERT INTO secrets (org_id, environment, name, owner_provider, current_version, state, changed_rev, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7)
         ON CONFLICT (org_id, environment, name) DO UPDATE SET
           current_version = excluded.current_version, state = 'active',
           changed_rev = excluded.changed_rev, updated_ms = excluded.updated_ms",
        params![w.org_id, w.environment, w.secret_name, w.provider_id, version, i(revision), w.now_ms],
    )
    .map_err(be)?;
    insert_audit(tx, &plan.audit_record(w))?;
    Ok((plan.response(w, previous_expires), revision))
}

pub(super) fn revoke_tx(tx: &Connection, r: &RevokeSecret) -> Result<RevokeOutcome, StoreError> {
    if let Some(owner) = owner_of(tx, &r.org_id, &r.secret_name)?
        && !may_write(&owner, &r.provider_id)
    {
        return Err(StoreError::NotOwner);
    }
    if let Some(user) = &r.user_id {
        return revoke_users(tx, r, Some(user))?.found();
    }
    let rows: Vec<(String, i64, String)> = {
        let mut st = tx
            .prepare_cached(
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
    let mut changed = Vec::new();
    for (env, version, state) in &rows {
        if state != "active" {
            continue;
        }
        let revision = bump_revision(tx, &r.org_id, env)?;
        exec(
            tx,
            "UPDATE secrets SET state = 'revoked', changed_rev = ?4, updated_ms = ?5
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
            params![r.org_id, env, r.secret_name, i(revision), r.now_ms],
        )
        .map_err(be)?;
        exec(
            tx,
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
                ..r.audit.record(r.now_ms, "revoked")
            },
        )?;
        changed.push((env.clone(), revision));
    }
    RevokeOutcome {
        environments: rows.into_iter().map(|(e, _, _)| e).collect(),
        changed,
    }
    .merge(revoke_users(tx, r, None)?)
    .found()
}

pub(super) fn changes_q(
    conn: &Connection,
    org_id: &str,
    env: &str,
    since: u64,
    now_ms: i64,
) -> Result<ChangeSet, StoreError> {
    let revision = row(
        conn,
        "SELECT revision FROM environments WHERE org_id = ?1 AND name = ?2",
        params![org_id, env],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map_err(be)?
    .map(u)
    .ok_or(StoreError::NotFound("environment"))?;
    let from = delta_base(since, revision);
    let mut st = conn
        .prepare_cached(
            "SELECT s.name, s.current_version,
                    CASE WHEN pol.policy = 'user' THEN 'revoked' ELSE s.state END,
                    s.updated_ms, v.sealed, p.version, p.sealed, p.grace_until_ms,
                    MAX(s.changed_rev, COALESCE(pol.changed_rev, 0))
             FROM secrets s
             JOIN secret_versions v
               ON v.org_id = s.org_id AND v.environment = s.environment AND v.name = s.name
              AND v.version = s.current_version
             LEFT JOIN secret_versions p
               ON p.org_id = s.org_id AND p.environment = s.environment AND p.name = s.name
              AND p.version = s.current_version - 1 AND p.grace_until_ms > ?4
             LEFT JOIN secret_policies pol
               ON pol.org_id = s.org_id AND pol.environment = s.environment AND pol.name = s.name
             WHERE s.org_id = ?1 AND s.environment = ?2
               AND (s.changed_rev > ?3 OR pol.changed_rev > ?3)
             ORDER BY s.name",
        )
        .map_err(be)?;
    let secrets = st
        .query_map(params![org_id, env, i(from), now_ms], |r| {
            let secret = super::rows::sync_row(r)?.into_secret(now_ms);
            Ok((u(r.get(8)?), secret))
        })
        .map_err(be)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(be)?;
    Ok(ChangeSet {
        revision,
        from,
        rows: secrets,
        policies: policy_changes(conn, org_id, env, from)?,
        users: user_changes(conn, org_id, env, from, now_ms)?,
    })
}
