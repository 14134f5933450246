//! Audit: agent batch ingestion (idempotent on `(org, environment, agent_id, seq)`, also across
//! instances: the unique index arbitrates, a concurrent duplicate waits for the first insert's
//! transaction and is then skipped) and queries.

use deadpool_postgres::Transaction;

use super::rows::{all, exec};
use super::{i, u};
use crate::api::{AccessVia, AuditBatchResponse, AuditRecord};
use crate::vault::clock::fmt_ms;
use crate::vault::store::{AgentBatch, AuditFilter, StoreError};

pub(super) async fn ingest_tx(
    tx: &Transaction<'_>,
    b: &AgentBatch,
) -> Result<AuditBatchResponse, StoreError> {
    let mut accepted = 0u64;
    for (time_ms, e) in &b.events {
        let n = exec(
            tx,
            "INSERT INTO audit (time_ms, org_id, environment, secret, version, action, actor,
                source_ip, host, via, pid, uid, gid, exe, unit, count, agent_id, seq, reason,
                user_id)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)
             ON CONFLICT (org_id, environment, agent_id, seq) DO NOTHING",
            &[
                time_ms,
                &b.org_id,
                &b.environment,
                &e.secret,
                &e.version.map(i),
                &e.action.as_str(),
                &b.actor,
                &b.source_ip,
                &b.host,
                &e.via.map(AccessVia::as_str),
                &e.pid.map(i64::from),
                &e.uid.map(i64::from),
                &e.gid.map(i64::from),
                &e.exe,
                &e.unit,
                &i(e.count),
                &b.agent_id,
                &i(e.seq),
                &e.reason,
                &e.user_id,
            ],
        )
        .await?;
        accepted += n;
    }
    Ok(AuditBatchResponse {
        accepted,
        duplicates: b.events.len() as u64 - accepted,
    })
}

pub(super) async fn query_audit_q(
    tx: &Transaction<'_>,
    f: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = all(
        tx,
        "SELECT id, time_ms, org_id, environment, secret, version, action, actor, source_ip,
                host, via, pid, uid, gid, exe, unit, count, reason, user_id
         FROM audit
         WHERE ($1::text IS NULL OR org_id = $1)
           AND ($2::text IS NULL OR secret = $2)
           AND ($3::text IS NULL OR environment = $3)
           AND ($4::text IS NULL OR action = $4)
           AND ($5::bigint IS NULL OR time_ms >= $5)
           AND ($6::bigint IS NULL OR time_ms <= $6)
         ORDER BY time_ms, id
         LIMIT $7",
        &[
            &f.org_id,
            &f.secret,
            &f.environment,
            &f.action,
            &f.since_ms,
            &f.until_ms,
            &i64::from(f.limit),
        ],
    )
    .await?;
    let small = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    Ok(rows
        .iter()
        .map(|r| {
            let via: Option<String> = r.get(10);
            AuditRecord {
                id: u(r.get(0)),
                time: fmt_ms(r.get(1)),
                org_id: r.get::<_, Option<String>>(2).unwrap_or_default(),
                environment: r.get(3),
                secret: r.get(4),
                version: r.get::<_, Option<i64>>(5).map(u),
                action: r.get(6),
                actor: r.get(7),
                source_ip: r.get(8),
                host: r.get(9),
                via: via.as_deref().and_then(AccessVia::parse),
                pid: small(r.get(11)),
                uid: small(r.get(12)),
                gid: small(r.get(13)),
                exe: r.get(14),
                unit: r.get(15),
                count: r.get::<_, Option<i64>>(16).map(u),
                reason: r.get(17),
                user_id: r.get(18),
            }
        })
        .collect())
}
