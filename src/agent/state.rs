//! The state every part of a running agent shares: the secret view (its lock, grace clock,
//! cache invalidation and change feed live in [`crate::agent::secret_view`]), the policy, the
//! caller cache, the audit hook and the health. Built by `run`, handed to `fs` and `socket`.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::agent::access::{CallerCache, Policy};
use crate::agent::audit::Auditor;
use crate::agent::secret_view::SecretView;

/// How the agent stands with the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Before the first successful sync.
    Syncing,
    /// Synced and long-polling.
    Ready,
    /// Serving the last known values; the vault has been unreachable (or refused us) since.
    Degraded { since: SystemTime, reason: String },
}

/// Shared agent state. Locks are held only for short, I/O-free sections.
#[derive(Debug)]
pub struct AgentState {
    /// Every read and change of the secrets goes through its methods.
    pub view: SecretView,
    policy: RwLock<Arc<Policy>>,
    pub callers: CallerCache,
    pub auditor: Auditor,
    health: RwLock<Health>,
}

impl AgentState {
    pub fn new(policy: Policy, auditor: Auditor) -> Arc<Self> {
        Arc::new(AgentState {
            view: SecretView::new(),
            policy: RwLock::new(Arc::new(policy)),
            callers: CallerCache::default(),
            auditor,
            health: RwLock::new(Health::Syncing),
        })
    }

    /// The policy in force (cheap clone of an `Arc`).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Replaces the policy (config reload); takes effect for the next check, and every cache
    /// of what is shown (the group of every file) is dropped.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
        self.view.invalidate_all();
    }

    /// Ends grace periods on time (see [`SecretView::run_expiry`]); runs until aborted.
    pub async fn run_expiry(self: Arc<Self>) {
        self.view.run_expiry().await;
    }

    pub fn health(&self) -> Health {
        self.health.read().expect("health lock").clone()
    }

    pub fn set_health(&self, h: Health) {
        let mut cur = self.health.write().expect("health lock");
        // Keep the first "since" of an ongoing outage.
        if let (Health::Degraded { since, .. }, Health::Degraded { reason, .. }) = (&*cur, &h) {
            *cur = Health::Degraded {
                since: *since,
                reason: reason.clone(),
            };
        } else {
            *cur = h;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn degraded_keeps_first_since() {
        let state = AgentState::new(Policy::default(), Auditor::disabled());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        state.set_health(Health::Degraded {
            since: t0,
            reason: "a".into(),
        });
        state.set_health(Health::Degraded {
            since: SystemTime::now(),
            reason: "b".into(),
        });
        assert_eq!(
            state.health(),
            Health::Degraded {
                since: t0,
                reason: "b".into()
            }
        );
        state.set_health(Health::Ready);
        assert_eq!(state.health(), Health::Ready);
    }
}
