//! Version floors: a restored vault must not hand out a version number it already used.
//!
//! A vault restored from a backup numbers the next version of a secret from the restored rows,
//! so it could issue a number that an agent already holds for another value. Agents that
//! refuse the restored vault's older offer report it (an `undeliverable` access event, reason
//! `older_than_served`, carrying the version the agent holds and serves). Ingesting such an
//! event raises that secret's **version floor** in the environment; the next push or rotation
//! of the secret gets a version above it. The floor is kept in its own table
//! (`version_floors`), in the same transaction as the event (SQLite and PostgreSQL alike).
//!
//! What it cannot know: numbers used by the lost timeline that no agent reports (no agent
//! connected since, or every agent that held them is gone), and a write that lands before the
//! first report arrives. docs/vault.md, "Restores and version numbers", says the same.

use crate::api::AccessAction;
use crate::vault::store::{AgentBatch, WritePlan};

/// A reported version above this is ignored (an agent token can raise numbers, never values;
/// this keeps a hostile report from using up the version space).
pub(crate) const MAX_FLOOR: u64 = 1 << 53;

/// The floors an agent batch reports: (secret, version held) of every `older_than_served`.
pub(crate) fn reported(batch: &AgentBatch) -> Vec<(&str, i64)> {
    batch
        .events
        .iter()
        .filter(|(_, e)| {
            e.action == AccessAction::Undeliverable
                && e.reason.as_deref() == Some("older_than_served")
        })
        .filter_map(|(_, e)| {
            let v = e.version.filter(|v| *v <= MAX_FLOOR)?;
            Some((e.secret.as_deref()?, i64::try_from(v).ok()?))
        })
        .collect()
}

/// `plan` with its version lifted above `floor` (unchanged without one, or when already above).
pub(crate) fn lift(mut plan: WritePlan, floor: Option<i64>) -> WritePlan {
    if let Some(f) = floor
        && plan.version <= f
    {
        plan.version = f + 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::store::WriteKind;

    #[test]
    fn a_floor_lifts_the_next_version_only_when_it_is_not_above() {
        let plan = WritePlan::decide(Some((2, "active")), WriteKind::Rotate, None, 60).unwrap();
        assert_eq!(lift(plan, None).version, 3);
        assert_eq!(lift(plan, Some(1)).version, 3);
        assert_eq!(lift(plan, Some(3)).version, 4);
        let lifted = lift(plan, Some(9));
        assert_eq!((lifted.version, lifted.replaces), (10, Some(2)));
    }
}
