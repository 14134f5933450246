//! What one sync read returns: the environment's revision and every secret changed after a
//! revision `from`, each with the revision of its last change. One such read answers every
//! long-poll whose `since` is at or after `from` ([`ChangeSet::answer`]), so a change that
//! wakes a thousand polls is read once (docs/vault.md, "One read per change").

use crate::api::{SyncPolicy, SyncResponse, SyncSecret, SyncUserSecret};

/// Secrets changed after `from`, as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub revision: u64,
    /// Rows changed after this revision are all here.
    pub from: u64,
    /// `(changed_rev, secret)`, ordered by name.
    pub rows: Vec<(u64, SyncSecret)>,
    /// `(changed_rev, policy)`, ordered by name.
    pub policies: Vec<(u64, SyncPolicy)>,
    /// `(changed_rev, one user's value)`, ordered by name and user.
    pub users: Vec<(u64, SyncUserSecret)>,
}

/// The revision after which an answer to `since` lists changes: 0 (the full state) when
/// `since` is 0 or ahead of the environment.
pub fn delta_base(since: u64, revision: u64) -> u64 {
    super::sync_from(since, revision).1
}

impl ChangeSet {
    /// The answer a poll at `since` gets, or `None` when this read does not reach back far
    /// enough (`since` needs changes before `from`).
    pub fn answer(&self, since: u64) -> Option<SyncResponse> {
        let base = delta_base(since, self.revision);
        if base < self.from {
            return None;
        }
        Some(SyncResponse {
            revision: self.revision,
            full: base == 0,
            secrets: after(&self.rows, base),
            policies: after(&self.policies, base),
            user_values: after(&self.users, base),
        })
    }
}

/// The items of `rows` changed after `base`.
fn after<T: Clone>(rows: &[(u64, T)], base: u64) -> Vec<T> {
    rows.iter()
        .filter(|(rev, _)| *rev > base)
        .map(|(_, t)| t.clone())
        .collect()
}
