//! The state every part of a running agent shares: the view, the policy, the caller cache, the
//! audit hook, the change feed and the health. Built by `run`, handed to `fs` and `socket`.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::broadcast;

use crate::agent::access::{CallerCache, Policy};
use crate::agent::audit::Auditor;
use crate::agent::view::{Change, Update, View};

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
    pub view: RwLock<View>,
    policy: RwLock<Arc<Policy>>,
    pub callers: CallerCache,
    pub auditor: Auditor,
    changes: broadcast::Sender<Change>,
    health: RwLock<Health>,
    /// Wakes the expiry task when a new grace deadline may be earlier than the one it waits for.
    deadline_changed: tokio::sync::Notify,
}

impl AgentState {
    pub fn new(policy: Policy, auditor: Auditor) -> Arc<Self> {
        Arc::new(AgentState {
            view: RwLock::new(View::new()),
            policy: RwLock::new(Arc::new(policy)),
            callers: CallerCache::default(),
            auditor,
            changes: broadcast::channel(1024).0,
            health: RwLock::new(Health::Syncing),
            deadline_changed: tokio::sync::Notify::new(),
        })
    }

    /// The policy in force (cheap clone of an `Arc`).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Replaces the policy (config reload); takes effect for the next check.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
    }

    /// Subscribes to view changes (socket SSE, FUSE cache invalidation).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
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

    /// Applies a sync answer to the view and publishes what changed. Returns the changes.
    pub fn apply(&self, revision: u64, full: bool, updates: Vec<Update>) -> Vec<Change> {
        let changes =
            self.view
                .write()
                .expect("view lock")
                .apply(revision, full, updates, Instant::now());
        self.publish(&changes);
        self.deadline_changed.notify_one();
        changes
    }

    fn publish(&self, changes: &[Change]) {
        for c in changes {
            // No subscriber is fine.
            let _ = self.changes.send(c.clone());
        }
    }

    /// Ends grace periods on time: drops expired previous versions (zeroizing them) and
    /// publishes `PreviousExpired`. Runs until the state is dropped by everyone else.
    pub async fn run_expiry(self: Arc<Self>) {
        loop {
            let next = self.view.read().expect("view lock").next_deadline();
            let notified = self.deadline_changed.notified();
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = notified => continue,
                    }
                }
                None => {
                    notified.await;
                    continue;
                }
            }
            let changes = self.view.write().expect("view lock").expire(Instant::now());
            self.publish(&changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::view::{UpdateState, Which};
    use crate::secret::Secret;
    use std::time::Duration;

    fn active(name: &str, version: u64, prev: Option<(u64, Duration)>) -> Update {
        Update {
            name: name.into(),
            version,
            state: UpdateState::Active {
                value: Secret::copy_from(format!("v{version}").as_bytes()),
                previous: prev.map(|(v, d)| (v, Secret::copy_from(format!("v{v}").as_bytes()), d)),
            },
            updated_at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn expiry_task_ends_grace_and_publishes() {
        let state = AgentState::new(Policy::default(), Auditor::disabled());
        let mut rx = state.subscribe();
        tokio::spawn(state.clone().run_expiry());
        state.apply(1, true, vec![active("A", 1, None)]);
        state.apply(
            2,
            false,
            vec![active("A", 2, Some((1, Duration::from_millis(50))))],
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("expiry within deadline")
                .unwrap();
            if let Change::PreviousExpired { name, version } = c {
                assert_eq!((name.as_str(), version), ("A", 1));
                break;
            }
        }
        let view = state.view.read().unwrap();
        assert!(view.meta("A", Which::Previous, Instant::now()).is_none());
        assert_eq!(
            view.meta("A", Which::Current, Instant::now())
                .unwrap()
                .version,
            2
        );
    }

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
