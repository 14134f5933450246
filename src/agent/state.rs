//! The state every part of a running agent shares: the secret view (its lock, grace clock,
//! cache invalidation and change feed live in [`crate::agent::secret_view`]), the policy, the
//! caller cache, the audit hook and the health. Built by `run`, handed to `fs` and `socket`.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::agent::access::{CallerCache, Policy};
use crate::agent::audit::Auditor;
use crate::agent::delivery::Delivery;
use crate::agent::secret_view::SecretView;
use crate::agent::users::UserVault;

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
    /// Policies and per-user values of user-vault secrets (socket only, sealed until read).
    pub users: UserVault,
    policy: RwLock<Arc<Policy>>,
    /// `[credentials]`, templates, file modes (see [`crate::agent::delivery`]).
    delivery: RwLock<Arc<Delivery>>,
    pub callers: CallerCache,
    pub auditor: Auditor,
    health: RwLock<Health>,
    /// Secrets whose feed offered an older version than one already served: name →
    /// (offered, held). Reported as degraded until a version at least as new arrives.
    rollbacks: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    /// Versions this agent cannot open: name → (version, reason), each reported once.
    undeliverable: RwLock<std::collections::BTreeMap<String, (u64, &'static str)>>,
    /// An accepted vault restore waiting for the sync loop (`crate::agent::restore`).
    pub restore: crate::agent::restore::Requests,
}

impl AgentState {
    pub fn new(policy: Policy, auditor: Auditor) -> Arc<Self> {
        Arc::new(AgentState {
            view: SecretView::new(),
            users: UserVault::default(),
            policy: RwLock::new(Arc::new(policy)),
            delivery: RwLock::default(),
            callers: CallerCache::default(),
            auditor,
            health: RwLock::new(Health::Syncing),
            rollbacks: std::sync::Mutex::default(),
            undeliverable: RwLock::default(),
            restore: crate::agent::restore::Requests::default(),
        })
    }

    /// Notes that `version` of `name` cannot be opened and reports it (an `undeliverable`
    /// access event, shipped to the vault) the first time only.
    pub fn undeliverable(&self, name: &str, version: u64, reason: &'static str) {
        let mut map = self.undeliverable.write().expect("undeliverable lock");
        if map.get(name) != Some(&(version, reason)) {
            map.insert(name.to_owned(), (version, reason));
            self.auditor.undeliverable(name, version, reason);
        }
    }

    /// `name` is delivered (or revoked): no longer undeliverable.
    pub fn delivered(&self, name: &str) {
        if self
            .undeliverable
            .read()
            .expect("undeliverable lock")
            .contains_key(name)
        {
            self.undeliverable
                .write()
                .expect("undeliverable lock")
                .remove(name);
        }
    }

    /// The versions this agent cannot open now: (name, version, reason), by name.
    pub fn undeliverable_list(&self) -> Vec<(String, u64, &'static str)> {
        let map = self.undeliverable.read().expect("undeliverable lock");
        map.iter().map(|(n, (v, r))| (n.clone(), *v, *r)).collect()
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

    /// The delivery settings in force (cheap clone of an `Arc`).
    pub fn delivery(&self) -> Arc<Delivery> {
        self.delivery.read().expect("delivery lock").clone()
    }

    /// Replaces the delivery settings (start, config reload); every cache of what is shown
    /// (file modes, template sizes) is dropped.
    pub fn set_delivery(&self, delivery: Delivery) {
        *self.delivery.write().expect("delivery lock") = Arc::new(delivery);
        self.view.invalidate_all();
    }

    /// Ends grace periods on time (see [`SecretView::run_expiry`]); runs until aborted.
    pub async fn run_expiry(self: Arc<Self>) {
        self.view.run_expiry().await;
    }

    pub fn health(&self) -> Health {
        self.health.read().expect("health lock").clone()
    }

    /// Notes what one applied answer said about rollbacks: `refused` (name, offered, held) are
    /// kept; a name that got a version at least as new as the one held (`accepted`) is cleared.
    pub fn note_rollbacks(&self, refused: &[(String, u64, u64)], accepted: &[&str]) {
        let mut r = self
            .rollbacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in accepted {
            r.remove(*name);
        }
        for (name, offered, held) in refused {
            // Reported to the vault once per offer (an `undeliverable` event carrying the
            // version held: the vault raises its version floor to it).
            if r.insert(name.clone(), (*offered, *held)) != Some((*offered, *held)) {
                self.auditor.undeliverable(name, *held, "older_than_served");
            }
        }
    }

    /// Forgets the refusals of `names` (all with `None`): an operator accepted the restore.
    /// Returns the names cleared.
    pub fn clear_rollbacks(&self, names: Option<&[String]>) -> Vec<String> {
        let mut r = self
            .rollbacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cleared: Vec<String> = r
            .keys()
            .filter(|n| names.is_none_or(|names| names.contains(n)))
            .cloned()
            .collect();
        for n in &cleared {
            r.remove(n);
        }
        cleared
    }

    /// The refused rollbacks, as a reason for `degraded` (None when there are none).
    pub fn rollback_reason(&self) -> Option<String> {
        let r = self
            .rollbacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_empty() {
            return None;
        }
        let list: Vec<String> = r
            .iter()
            .map(|(n, (offered, held))| format!("{n} (offered v{offered}, serving v{held})"))
            .collect();
        Some(format!(
            "refused older versions than already served: {} — was the vault restored from a \
             backup? (docs/agent.md, \"Rollback protection\")",
            list.join(", ")
        ))
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
