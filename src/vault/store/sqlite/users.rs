//! Policy, per-user values and connect links (issue 14) in SQLite: the same rules as the
//! creator values in `secrets.rs`, on the `user_secrets` / `user_secret_versions` tables.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{bump_revision, insert_audit};
use super::secrets::default_grace_of;
use super::{be, exec, i, row, u};
use crate::api::{PushResponse, SecretPolicy, SyncPolicy, SyncUserSecret};
use crate::vault::clock::fmt_ms;
use crate::vault::store::{
    LINK_RETENTION_MS, LinkRecord, NewAuditRecord, PolicyOutcome, RevokeOutcome, RevokeSecret,
    SecretSummary, SetPolicy, StoreError, WriteOutcome, WritePlan, WriteVersion, check_policy,
};

/// The policy of a secret name in an environment (creator when none was set).
pub(super) fn policy_of(
    tx: &Connection,
    org: &str,
    env: &str,
    name: &str,
) -> Result<SecretPolicy, StoreError> {
    let p: Option<String> = row(
        tx,
        "SELECT policy FROM secret_policies WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
        params![org, env, name],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)?;
    Ok(p.map(|p| SecretPolicy::from_stored(&p)).unwrap_or_default())
}

pub(super) fn set_policy_tx(tx: &Connection, s: &SetPolicy) -> Result<PolicyOutcome, StoreError> {
    default_grace_of(tx, &s.org_id, &s.environment)?;
    let stored: Option<String> = row(
        tx,
        "SELECT policy FROM secret_policies WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
        params![s.org_id, s.environment, s.secret_name],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)?;
    if stored.as_deref() == Some(s.policy.as_str()) {
        return Ok(PolicyOutcome { revision: None });
    }
    let revision = bump_revision(tx, &s.org_id, &s.environment)?;
    exec(
        tx,
        "INSERT INTO secret_policies (org_id, environment, name, policy, changed_rev, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (org_id, environment, name) DO UPDATE SET
           policy = excluded.policy, changed_rev = excluded.changed_rev,
           updated_ms = excluded.updated_ms",
        params![
            s.org_id,
            s.environment,
            s.secret_name,
            s.policy.as_str(),
            i(revision),
            s.now_ms
        ],
    )
    .map_err(be)?;
    insert_audit(tx, &s.audit_record())?;
    Ok(PolicyOutcome {
        revision: Some(revision),
    })
}

/// A new version of one user's value: (answer, new revision). `owner`: the provider writing
/// (recorded as the name's owner when it has none); `None` for a connect link.
pub(super) fn write_user(
    tx: &Connection,
    w: &WriteVersion,
    user: &str,
    default_grace: i64,
    owner: Option<&str>,
) -> Result<(PushResponse, u64), StoreError> {
    let current: Option<(i64, String)> = row(
        tx,
        "SELECT current_version, state FROM user_secrets
         WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND user_id = ?4",
        params![w.org_id, w.environment, w.secret_name, user],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(be)?;
    let plan = WritePlan::for_write(w, current.as_ref(), default_grace)?;
    let mut previous_expires = None;
    if let Some(prev) = plan.replaces {
        exec(
            tx,
            "UPDATE user_secret_versions SET grace_until_ms = ?5
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND user_id = ?4
               AND grace_until_ms IS NOT NULL AND grace_until_ms > ?5",
            params![w.org_id, w.environment, w.secret_name, user, w.now_ms],
        )
        .map_err(be)?;
        if let Some(until) = plan.grace_until_ms(w.now_ms) {
            exec(
                tx,
                "UPDATE user_secret_versions SET grace_until_ms = ?6
                 WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND user_id = ?4
                   AND version = ?5",
                params![w.org_id, w.environment, w.secret_name, user, prev, until],
            )
            .map_err(be)?;
            previous_expires = Some(fmt_ms(until));
        }
    }
    let revision = bump_revision(tx, &w.org_id, &w.environment)?;
    let writer = owner.map_or_else(|| w.audit.actor.clone(), str::to_string);
    exec(
        tx,
        "INSERT INTO user_secret_versions
           (org_id, environment, name, user_id, version, sealed, writer, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            w.org_id,
            w.environment,
            w.secret_name,
            user,
            plan.version,
            w.sealed_value,
            writer,
            w.now_ms
        ],
    )
    .map_err(be)?;
    exec(
        tx,
        "INSERT INTO user_secrets (org_id, environment, name, user_id, owner_provider,
                                   current_version, state, changed_rev, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?8)
         ON CONFLICT (org_id, environment, name, user_id) DO UPDATE SET
           owner_provider = COALESCE(user_secrets.owner_provider, excluded.owner_provider),
           current_version = excluded.current_version, state = 'active',
           changed_rev = excluded.changed_rev, updated_ms = excluded.updated_ms",
        params![
            w.org_id,
            w.environment,
            w.secret_name,
            user,
            owner,
            plan.version,
            i(revision),
            w.now_ms
        ],
    )
    .map_err(be)?;
    insert_audit(tx, &plan.audit_record(w))?;
    Ok((plan.response(w, previous_expires), revision))
}

/// Revokes the active values of `r`'s name held by `user` (every user when `None`) in every
/// environment of the org, with no grace.
pub(super) fn revoke_users(
    tx: &Connection,
    r: &RevokeSecret,
    user: Option<&str>,
) -> Result<RevokeOutcome, StoreError> {
    let rows: Vec<(String, String, i64, String)> = {
        let mut st = tx
            .prepare_cached(
                "SELECT environment, user_id, current_version, state FROM user_secrets
                 WHERE org_id = ?1 AND name = ?2 AND (?3 IS NULL OR user_id = ?3)
                 ORDER BY environment, user_id",
            )
            .map_err(be)?;
        st.query_map(params![r.org_id, r.secret_name, user], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .map_err(be)?
        .collect::<Result<_, _>>()
        .map_err(be)?
    };
    let mut out = RevokeOutcome {
        environments: Vec::new(),
        changed: Vec::new(),
    };
    for (env, user_id, version, state) in &rows {
        out.environments.push(env.clone());
        if state != "active" {
            continue;
        }
        let revision = match out.changed.last() {
            Some((e, rev)) if e == env => *rev,
            _ => {
                let rev = bump_revision(tx, &r.org_id, env)?;
                out.changed.push((env.clone(), rev));
                rev
            }
        };
        exec(
            tx,
            "UPDATE user_secrets SET state = 'revoked', changed_rev = ?5, updated_ms = ?6
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND user_id = ?4",
            params![r.org_id, env, r.secret_name, user_id, i(revision), r.now_ms],
        )
        .map_err(be)?;
        exec(
            tx,
            "UPDATE user_secret_versions SET grace_until_ms = NULL
             WHERE org_id = ?1 AND environment = ?2 AND name = ?3 AND user_id = ?4",
            params![r.org_id, env, r.secret_name, user_id],
        )
        .map_err(be)?;
        insert_audit(
            tx,
            &NewAuditRecord {
                org_id: Some(r.org_id.clone()),
                environment: Some(env.clone()),
                secret: Some(r.secret_name.clone()),
                version: Some(u(*version)),
                user_id: Some(user_id.clone()),
                ..r.audit.record(r.now_ms, "revoked")
            },
        )?;
    }
    out.environments.dedup();
    Ok(out)
}

/// Policies of an environment changed after revision `from`: `(changed_rev, policy)`.
pub(super) fn policy_changes(
    conn: &Connection,
    org: &str,
    env: &str,
    from: u64,
) -> Result<Vec<(u64, SyncPolicy)>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT name, policy, changed_rev FROM secret_policies
             WHERE org_id = ?1 AND environment = ?2 AND changed_rev > ?3 ORDER BY name",
        )
        .map_err(be)?;
    st.query_map(params![org, env, i(from)], |r| {
        let policy: String = r.get(1)?;
        Ok((
            u(r.get(2)?),
            SyncPolicy {
                name: r.get(0)?,
                policy: SecretPolicy::from_stored(&policy),
            },
        ))
    })
    .map_err(be)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(be)
}

/// User values of an environment changed after revision `from`, with previous versions whose
/// grace runs at `now_ms`.
pub(super) fn user_changes(
    conn: &Connection,
    org: &str,
    env: &str,
    from: u64,
    now_ms: i64,
) -> Result<Vec<(u64, SyncUserSecret)>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT s.name, s.current_version, s.state, s.updated_ms, v.sealed,
                    p.version, p.sealed, p.grace_until_ms, s.changed_rev, s.user_id
             FROM user_secrets s
             JOIN user_secret_versions v
               ON v.org_id = s.org_id AND v.environment = s.environment AND v.name = s.name
              AND v.user_id = s.user_id AND v.version = s.current_version
             LEFT JOIN user_secret_versions p
               ON p.org_id = s.org_id AND p.environment = s.environment AND p.name = s.name
              AND p.user_id = s.user_id AND p.version = s.current_version - 1
              AND p.grace_until_ms > ?4
             WHERE s.org_id = ?1 AND s.environment = ?2 AND s.changed_rev > ?3
             ORDER BY s.name, s.user_id",
        )
        .map_err(be)?;
    st.query_map(params![org, env, i(from), now_ms], |r| {
        let secret = super::rows::sync_row(r)?;
        Ok((u(r.get(8)?), secret.into_user_secret(r.get(9)?, now_ms)))
    })
    .map_err(be)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(be)
}

pub(super) fn list_secrets_q(
    conn: &Connection,
    org: &str,
    env: &str,
    reads_since_ms: i64,
) -> Result<Vec<SecretSummary>, StoreError> {
    default_grace_of(conn, org, env)?;
    let mut st = conn
        .prepare_cached(
            "WITH names AS (
                 SELECT name FROM secrets WHERE org_id = ?1 AND environment = ?2
                 UNION SELECT name FROM secret_policies WHERE org_id = ?1 AND environment = ?2
                 UNION SELECT DISTINCT name FROM user_secrets
                       WHERE org_id = ?1 AND environment = ?2)
             SELECT n.name, pol.policy, s.current_version, s.state, s.owner_provider,
                    s.updated_ms,
                    (SELECT COUNT(*) FROM user_secrets us
                      WHERE us.org_id = ?1 AND us.environment = ?2 AND us.name = n.name
                        AND us.state = 'active'),
                    (SELECT COUNT(DISTINCT a.user_id) FROM audit a
                      WHERE a.org_id = ?1 AND a.environment = ?2 AND a.secret = n.name
                        AND a.action = 'accessed' AND a.time_ms >= ?3
                        AND a.user_id IS NOT NULL)
             FROM names n
             LEFT JOIN secrets s
               ON s.org_id = ?1 AND s.environment = ?2 AND s.name = n.name
             LEFT JOIN secret_policies pol
               ON pol.org_id = ?1 AND pol.environment = ?2 AND pol.name = n.name
             ORDER BY n.name",
        )
        .map_err(be)?;
    st.query_map(params![org, env, reads_since_ms], |r| {
        let policy: Option<String> = r.get(1)?;
        let version: Option<i64> = r.get(2)?;
        let creator = match version {
            Some(v) => Some((u(v), r.get(3)?, r.get(4)?, r.get(5)?)),
            None => None,
        };
        Ok(SecretSummary {
            name: r.get(0)?,
            policy: policy
                .map(|p| SecretPolicy::from_stored(&p))
                .unwrap_or_default(),
            creator,
            users_with_value: u(r.get(6)?),
            users_read: u(r.get(7)?),
        })
    })
    .map_err(be)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(be)
}

pub(super) fn create_link_tx(
    tx: &Connection,
    l: &LinkRecord,
    audit: &crate::vault::store::AuditContext,
) -> Result<(), StoreError> {
    default_grace_of(tx, &l.org_id, &l.environment)?;
    // Links past their expiry are of no use: cleared on the way.
    exec(
        tx,
        "DELETE FROM connect_links WHERE expires_ms < ?1",
        [l.created_ms.saturating_sub(LINK_RETENTION_MS)],
    )
    .map_err(be)?;
    exec(
        tx,
        "INSERT INTO connect_links (hash, link_id, org_id, environment, name, user_id,
                                    created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            l.hash,
            l.link_id,
            l.org_id,
            l.environment,
            l.secret_name,
            l.user_id,
            l.created_ms,
            l.expires_ms
        ],
    )
    .map_err(be)?;
    insert_audit(tx, &l.audit_record(audit))
}

pub(super) fn find_link_q(conn: &Connection, hash: &str) -> Result<Option<LinkRecord>, StoreError> {
    row(
        conn,
        "SELECT hash, link_id, org_id, environment, name, user_id, created_ms, expires_ms, used_ms
         FROM connect_links WHERE hash = ?1",
        [hash],
        |r| {
            Ok(LinkRecord {
                hash: r.get(0)?,
                link_id: r.get(1)?,
                org_id: r.get(2)?,
                environment: r.get(3)?,
                secret_name: r.get(4)?,
                user_id: r.get(5)?,
                created_ms: r.get(6)?,
                expires_ms: r.get(7)?,
                used_ms: r.get(8)?,
            })
        },
    )
    .optional()
    .map_err(be)
}

pub(super) fn use_link_tx(
    tx: &Connection,
    hash: &str,
    w: &WriteVersion,
) -> Result<WriteOutcome, StoreError> {
    let link = find_link_q(tx, hash)?.ok_or(StoreError::NotFound("link"))?;
    link.usable(w.now_ms)?;
    let user = w.user_id.as_deref().unwrap_or_default();
    if (
        link.org_id.as_str(),
        link.environment.as_str(),
        link.secret_name.as_str(),
        link.user_id.as_str(),
    ) != (
        w.org_id.as_str(),
        w.environment.as_str(),
        w.secret_name.as_str(),
        user,
    ) {
        return Err(StoreError::NotFound("link"));
    }
    exec(
        tx,
        "UPDATE connect_links SET used_ms = ?2 WHERE hash = ?1",
        params![hash, w.now_ms],
    )
    .map_err(be)?;
    let default_grace = default_grace_of(tx, &w.org_id, &w.environment)?;
    check_policy(
        policy_of(tx, &w.org_id, &w.environment, &w.secret_name)?,
        Some(user),
    )?;
    let (response, revision) = write_user(tx, w, user, default_grace, None)?;
    Ok(WriteOutcome {
        response,
        replayed: false,
        revision: Some(revision),
    })
}
