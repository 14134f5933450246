//! Version floors in PostgreSQL (see `crate::vault::store::floors`). The table comes with
//! schema migration 3.

use deadpool_postgres::Transaction;

use super::rows::{exec, opt};
use crate::vault::store::floors::{lift, reported};
use crate::vault::store::{AgentBatch, StoreError, WritePlan, WriteVersion};

/// Migration 3: the floors table.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS version_floors (
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    floor       BIGINT NOT NULL,
    PRIMARY KEY (org_id, environment, name)
)";

/// Raises the floors an agent batch reports (in the batch's transaction).
pub(super) async fn raise(tx: &Transaction<'_>, b: &AgentBatch) -> Result<(), StoreError> {
    for (name, version) in reported(b) {
        exec(
            tx,
            "INSERT INTO version_floors (org_id, environment, name, floor) VALUES ($1, $2, $3, $4)
             ON CONFLICT (org_id, environment, name) DO UPDATE SET
               floor = GREATEST(version_floors.floor, excluded.floor)",
            &[&b.org_id, &b.environment, &name, &version],
        )
        .await?;
    }
    Ok(())
}

/// `plan` for write `w`, its version lifted above the secret's floor.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    w: &WriteVersion,
    plan: WritePlan,
) -> Result<WritePlan, StoreError> {
    let floor: Option<i64> = opt(
        tx,
        "SELECT floor FROM version_floors WHERE org_id = $1 AND environment = $2 AND name = $3",
        &[&w.org_id, &w.environment, &w.secret_name],
    )
    .await?
    .map(|r| r.get(0));
    Ok(lift(plan, floor))
}
