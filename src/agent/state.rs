//! The state every part of a running agent shares: the view, the policy, the caller cache, the
//! audit hook, the change feed and the health. Built by `run`, handed to `fs` and `socket`.
//!
//! Every view update (a sync answer, an ended grace period, a policy reload) runs the registered
//! cache invalidators (the FUSE mount's) *synchronously*: after the view lock is released and
//! before the update returns or is published. So once `apply` has returned, no kernel cache
//! still shows the old state, and the mount can let the kernel cache attributes for long.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// What an invalidator is told to drop from its caches.
#[derive(Debug, Clone, Copy)]
pub enum Invalidate<'a> {
    /// These changes were just applied to the view.
    Changes(&'a [Change]),
    /// Anything may have changed (the policy, and with it the group shown on every file).
    All,
}

/// A cache invalidator (the FUSE mount's): called with the view lock released, never from a
/// FUSE callback; it may block briefly (the kernel takes the directory's lock).
pub type Invalidator = Arc<dyn Fn(Invalidate<'_>) + Send + Sync>;

/// Registered invalidators, by id.
#[derive(Default)]
struct Invalidators {
    next: AtomicU64,
    list: RwLock<Vec<(u64, Invalidator)>>,
}

impl std::fmt::Debug for Invalidators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.list.read().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("Invalidators")
            .field("registered", &n)
            .finish()
    }
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
    invalidators: Invalidators,
    /// Versions this agent cannot open: name → (version, reason), each reported once.
    undeliverable: RwLock<std::collections::BTreeMap<String, (u64, &'static str)>>,
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
            invalidators: Invalidators::default(),
            undeliverable: RwLock::default(),
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

    /// Registers a cache invalidator, run synchronously on every view change; returns its id
    /// for [`remove_invalidator`](Self::remove_invalidator).
    pub fn add_invalidator(&self, f: Invalidator) -> u64 {
        let id = self.invalidators.next.fetch_add(1, Ordering::Relaxed);
        self.invalidators
            .list
            .write()
            .expect("invalidators lock")
            .push((id, f));
        id
    }

    pub fn remove_invalidator(&self, id: u64) {
        self.invalidators
            .list
            .write()
            .expect("invalidators lock")
            .retain(|(i, _)| *i != id);
    }

    /// Runs every invalidator (the view lock must not be held).
    fn invalidate(&self, what: Invalidate<'_>) {
        if let Invalidate::Changes([]) = what {
            return;
        }
        // Cloned out so an invalidator may (un)register without deadlocking.
        let list: Vec<Invalidator> = self
            .invalidators
            .list
            .read()
            .expect("invalidators lock")
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in list {
            f(what);
        }
    }

    /// The policy in force (cheap clone of an `Arc`).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Replaces the policy (config reload); takes effect for the next check.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
        self.invalidate(Invalidate::All);
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

    /// Applies a sync answer to the view, drops what the kernel caches of the old state, and
    /// publishes what changed. Returns the changes.
    pub fn apply(&self, revision: u64, full: bool, updates: Vec<Update>) -> Vec<Change> {
        let changes =
            self.view
                .write()
                .expect("view lock")
                .apply(revision, full, updates, Instant::now());
        self.invalidate(Invalidate::Changes(&changes));
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
            self.invalidate(Invalidate::Changes(&changes));
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
    fn invalidators_run_synchronously_with_the_view_unlocked() {
        use std::sync::Mutex;
        let state = AgentState::new(Policy::default(), Auditor::disabled());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let id = {
            let (seen, st) = (seen.clone(), Arc::downgrade(&state));
            state.add_invalidator(Arc::new(move |what| {
                // The view lock is free: an invalidator may block on the kernel, which may be
                // waiting for a FUSE thread that needs the view.
                let st = st.upgrade().unwrap();
                assert!(
                    st.view.try_write().is_ok(),
                    "view lock held during invalidation"
                );
                seen.lock().unwrap().push(match what {
                    Invalidate::Changes(c) => c
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                    Invalidate::All => "*".into(),
                });
            }))
        };
        state.apply(1, true, vec![active("A", 1, None), active("B", 1, None)]);
        // Before apply returned, the invalidator had run.
        assert_eq!(*seen.lock().unwrap(), ["A,B"]);
        state.apply(1, false, vec![]);
        assert_eq!(seen.lock().unwrap().len(), 1, "no change, no invalidation");
        state.set_policy(Policy::new(Some(5), vec![]));
        assert_eq!(seen.lock().unwrap().last().unwrap(), "*");
        state.remove_invalidator(id);
        state.apply(2, false, vec![active("A", 2, None)]);
        assert_eq!(seen.lock().unwrap().len(), 2);
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
