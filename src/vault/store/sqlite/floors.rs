//! Version floors in SQLite (see `crate::vault::store::floors`).

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{be, exec, row};
use crate::vault::store::floors::{lift, reported};
use crate::vault::store::{AgentBatch, StoreError, WritePlan, WriteVersion};

/// Run at every open, like the main schema (idempotent).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS version_floors (
    org_id      TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    floor       INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, name)
);";

/// Raises the floors an agent batch reports (in the batch's transaction).
pub(super) fn raise(tx: &Connection, b: &AgentBatch) -> Result<(), StoreError> {
    for (name, version) in reported(b) {
        exec(
            tx,
            "INSERT INTO version_floors (org_id, environment, name, floor) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (org_id, environment, name) DO UPDATE SET
               floor = MAX(floor, excluded.floor)",
            params![b.org_id, b.environment, name, version],
        )
        .map_err(be)?;
    }
    Ok(())
}

/// `plan` for write `w`, its version lifted above the secret's floor.
pub(super) fn apply(
    tx: &Connection,
    w: &WriteVersion,
    plan: WritePlan,
) -> Result<WritePlan, StoreError> {
    let floor: Option<i64> = row(
        tx,
        "SELECT floor FROM version_floors WHERE org_id = ?1 AND environment = ?2 AND name = ?3",
        params![w.org_id, w.environment, w.secret_name],
        |r| r.get(0),
    )
    .optional()
    .map_err(be)?;
    Ok(lift(plan, floor))
}
