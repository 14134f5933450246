//! Audit: agent batch ingestion (idempotent on `(org, environment, agent_id, seq)`) and queries.

use rusqlite::{Connection, params};

use super::{be, i, u};
use crate::api::{AccessVia, AuditBatchResponse, AuditRecord};
use crate::vault::clock::fmt_ms;
use crate::vault::store::{AgentBatch, AuditFilter, StoreError};

pub(super) fn ingest_tx(tx: &Connection, b: &AgentBatch) -> Result<AuditBatchResponse, StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor,
                source_ip, host, via, pid, uid, gid, exe, unit, count, agent_id, seq, reason,
                user_id)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)
             ON CONFLICT (org_id, environment, agent_id, seq) DO NOTHING",
        )
        .map_err(be)?;
    let mut accepted = 0u64;
    for (time_ms, e) in &b.events {
        let n = st
            .execute(params![
                time_ms,
                b.org_id,
                b.environment,
                e.secret,
                e.version.map(i),
                e.action.as_str(),
                b.actor,
                b.source_ip,
                b.host,
                e.via.map(AccessVia::as_str),
                e.pid,
                e.uid,
                e.gid,
                e.exe,
                e.unit,
                i(e.count),
                b.agent_id,
                i(e.seq),
                e.reason,
                e.user_id,
            ])
            .map_err(be)?;
        accepted += n as u64;
    }
    Ok(AuditBatchResponse {
        accepted,
        duplicates: b.events.len() as u64 - accepted,
    })
}

pub(super) fn query_audit_q(
    conn: &Connection,
    f: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT id, time_ms, org_id, environment, secret, version, action, actor, source_ip,
                    host, via, pid, uid, gid, exe, unit, count, reason, user_id
             FROM audit
             WHERE (?1 IS NULL OR org_id = ?1)
               AND (?2 IS NULL OR secret = ?2)
               AND (?3 IS NULL OR environment = ?3)
               AND (?4 IS NULL OR action = ?4)
               AND (?5 IS NULL OR time_ms >= ?5)
               AND (?6 IS NULL OR time_ms <= ?6)
             ORDER BY time_ms, id
             LIMIT ?7",
        )
        .map_err(be)?;
    let rows = st
        .query_map(
            params![
                f.org_id,
                f.secret,
                f.environment,
                f.action,
                f.since_ms,
                f.until_ms,
                i64::from(f.limit)
            ],
            |r| {
                let via: Option<String> = r.get(10)?;
                Ok(AuditRecord {
                    id: u(r.get(0)?),
                    time: fmt_ms(r.get(1)?),
                    org_id: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    environment: r.get(3)?,
                    secret: r.get(4)?,
                    version: r.get::<_, Option<i64>>(5)?.map(u),
                    action: r.get(6)?,
                    actor: r.get(7)?,
                    source_ip: r.get(8)?,
                    host: r.get(9)?,
                    via: via.as_deref().and_then(AccessVia::parse),
                    pid: r.get(11)?,
                    uid: r.get(12)?,
                    gid: r.get(13)?,
                    exe: r.get(14)?,
                    unit: r.get(15)?,
                    count: r.get::<_, Option<i64>>(16)?.map(u),
                    reason: r.get(17)?,
                    user_id: r.get(18)?,
                })
            },
        )
        .map_err(be)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(be)?;
    Ok(rows)
}
