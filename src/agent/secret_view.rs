//! The one home of the shared secret view: its lock, the grace clock, cache invalidation and
//! the change feed. Every read and change of the view goes through a method of
//! [`SecretView`]; no other file takes the view's lock or reads the clock the view judges
//! grace by.
//!
//! - **Lock**: one `RwLock<View>`, held only for short, in-memory sections (no I/O, no reply
//!   sent, no invalidator run while it is held). Readers get copies (metadata, or a value in a
//!   zeroizing buffer), never a guard.
//! - **Grace clock**: every method passes `Instant::now()` to the pure [`View`]; the expiry task
//!   ([`SecretView::run_expiry`]) ends grace periods on time.
//! - **After a change** (a sync answer, an ended grace period, a policy reload via
//!   [`SecretView::invalidate_all`]) the registered cache invalidators (the FUSE mount's) run
//!   *synchronously*: after the lock is released and before the change returns or is published.
//!   So once [`SecretView::apply`] has returned, no kernel cache still shows the old state, and
//!   the mount can let the kernel cache attributes for long. Then the changes are published to
//!   subscribers (the socket's event stream).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use zeroize::Zeroizing;

use crate::agent::view::{Change, HandleId, Meta, ReadError, Update, View, Which};
use crate::secret::Secret;

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
pub type Invalidator = std::sync::Arc<dyn Fn(Invalidate<'_>) + Send + Sync>;

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

/// A secret as `GET /v1/secrets` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub meta: Meta,
    /// The previous version while its grace runs.
    pub previous_version: Option<u64>,
}

/// Why [`SecretView::get`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// No such secret (never pushed, or revoked).
    NoSecret,
    /// The secret exists but has no previous version readable now.
    NoPrevious,
}

/// Facts about the whole view (health, status line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The vault revision the view is synced to.
    pub revision: u64,
    /// Number of secrets held.
    pub secrets: usize,
}

/// The shared view (see the module docs). One per agent, inside [`crate::agent::state`].
#[derive(Debug)]
pub struct SecretView {
    view: RwLock<View>,
    changes: broadcast::Sender<Change>,
    /// Wakes the expiry task when a new grace deadline may be earlier than the one it waits for.
    deadline_changed: Notify,
    invalidators: Invalidators,
}

impl Default for SecretView {
    fn default() -> Self {
        SecretView {
            view: RwLock::new(View::new()),
            changes: broadcast::channel(1024).0,
            deadline_changed: Notify::new(),
            invalidators: Invalidators::default(),
        }
    }
}

impl SecretView {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- the lock: the only two places it is taken ---------------------------------------

    fn read_lock(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().expect("view lock")
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().expect("view lock")
    }

    /// The liveness probe: the lock can be taken (no wedged holder) and is not poisoned.
    pub fn probe_lock(&self) -> Result<(), String> {
        drop(self.view.read().map_err(|_| "poisoned".to_owned())?);
        Ok(())
    }

    // ---- what to apply ------------------------------------------------------------------

    /// Applies a sync answer, drops what the kernel caches of the old state, and publishes
    /// what changed. Returns the changes.
    pub fn apply(&self, revision: u64, full: bool, updates: Vec<Update>) -> Vec<Change> {
        let changes = self
            .write_lock()
            .apply(revision, full, updates, Instant::now());
        self.after_change(&changes);
        self.deadline_changed.notify_one();
        changes
    }

    /// Applies a sync answer *without* invalidating caches or publishing: only for a test that
    /// shows the kernel really caches what the mount lets it.
    #[doc(hidden)]
    pub fn apply_behind_caches(&self, revision: u64, full: bool, updates: Vec<Update>) {
        self.write_lock()
            .apply(revision, full, updates, Instant::now());
    }

    /// The rollback floor: (name, highest version seen, revoked).
    pub fn highest(&self) -> Vec<(String, u64, bool)> {
        self.read_lock()
            .highest()
            .map(|(n, v, r)| (n.to_owned(), v, r))
            .collect()
    }

    /// Raises the rollback floor (from the offline cache, before the first sync).
    pub fn remember(&self, floor: impl IntoIterator<Item = (String, u64, bool)>) {
        let mut view = self.write_lock();
        for (name, version, revoked) in floor {
            view.remember(&name, version, revoked);
        }
    }

    /// Forgets the rollback floor of `names` (all with `None`): a restore was accepted.
    pub fn forget(&self, names: Option<&[String]>) {
        self.write_lock().forget(names);
    }

    /// Drops every value now (zeroized) and every handle: the agent is stopping.
    pub fn clear(&self) {
        *self.write_lock() = View::new();
    }

    /// Ends grace periods on time: drops expired previous versions (zeroizing them) and
    /// publishes `PreviousExpired`. Runs until the task is aborted.
    pub async fn run_expiry(&self) {
        loop {
            let next = self.read_lock().next_deadline();
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
            let changes = self.write_lock().expire(Instant::now());
            self.after_change(&changes);
        }
    }

    // ---- after a change ---------------------------------------------------------------------

    /// Registers a cache invalidator, run synchronously on every view change; returns its id
    /// for [`remove_invalidator`](Self::remove_invalidator).
    pub fn add_invalidator(&self, f: Invalidator) -> u64 {
        let id = self.invalidators.next.fetch_add(1, Ordering::Relaxed);
        self.invalidators
            .list
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, f));
        id
    }

    pub fn remove_invalidator(&self, id: u64) {
        self.invalidators
            .list
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(i, _)| *i != id);
    }

    /// Anything shown may have changed (a policy reload): every cache is dropped.
    pub fn invalidate_all(&self) {
        self.invalidate(Invalidate::All);
    }

    /// Subscribes to view changes (the socket's event stream).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Invalidates caches, then publishes (the lock must not be held).
    fn after_change(&self, changes: &[Change]) {
        self.invalidate(Invalidate::Changes(changes));
        for c in changes {
            // No subscriber is fine.
            let _ = self.changes.send(c.clone());
        }
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
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in list {
            f(what);
        }
    }

    // ---- what to read -------------------------------------------------------------------------

    pub fn summary(&self) -> Summary {
        let view = self.read_lock();
        Summary {
            revision: view.revision(),
            secrets: view.len(),
        }
    }

    /// Facts about a secret's current or (in grace) previous version.
    pub fn meta(&self, name: &str, which: Which) -> Option<Meta> {
        self.read_lock().meta(name, which, Instant::now())
    }

    /// [`meta`](Self::meta), and how long the grace clock alone leaves it as it is: until the
    /// earliest grace deadline for a previous version, unbounded for a current one (a
    /// rotation invalidates caches itself).
    pub fn meta_for(&self, name: &str, which: Which) -> Option<(Meta, Duration)> {
        let now = Instant::now();
        let view = self.read_lock();
        let meta = view.meta(name, which, now)?;
        let left = match which {
            Which::Current => Duration::MAX,
            Which::Previous => view
                .next_deadline()
                .map_or(Duration::ZERO, |d| d.saturating_duration_since(now)),
        };
        Some((meta, left))
    }

    /// The secrets `include` accepts, in name order, with their previous version in grace.
    pub fn list(&self, include: impl Fn(&str) -> bool) -> Vec<Listed> {
        let now = Instant::now();
        let view = self.read_lock();
        view.list()
            .filter(|(name, _)| include(name))
            .map(|(name, meta)| Listed {
                name: name.to_owned(),
                meta,
                previous_version: view.meta(name, Which::Previous, now).map(|m| m.version),
            })
            .collect()
    }

    /// Calls `f` on each (name, version) of the current (or in-grace previous) secrets in name
    /// order, after skipping `skip`, until `f` returns true (a full directory reply).
    pub fn each_name(&self, which: Which, skip: usize, mut f: impl FnMut(&str, u64) -> bool) {
        let view = self.read_lock();
        let names: Box<dyn Iterator<Item = (&str, Meta)>> = match which {
            Which::Current => Box::new(view.list()),
            Which::Previous => Box::new(view.list_previous(Instant::now())),
        };
        for (name, meta) in names.skip(skip) {
            if f(name, meta.version) {
                break;
            }
        }
    }

    /// A copy of a secret's value (one-shot read), or why there is none.
    pub fn get(&self, name: &str, which: Which) -> Result<(Meta, Secret), Absent> {
        let now = Instant::now();
        let view = self.read_lock();
        match view.get(name, which, now) {
            Some((meta, value)) => Ok((meta, value.clone())),
            None if view.meta(name, Which::Current, now).is_some() => Err(Absent::NoPrevious),
            None => Err(Absent::NoSecret),
        }
    }

    /// `f` over the current versions of the secrets `include` accepts, in name order (e.g. to
    /// size a rendering without keeping it).
    pub fn with_current<T>(
        &self,
        include: impl Fn(&str) -> bool,
        f: impl FnOnce(&[(&str, Meta, &Secret)]) -> T,
    ) -> T {
        let now = Instant::now();
        let view = self.read_lock();
        let entries: Vec<(&str, Meta, &Secret)> = view
            .list()
            .filter(|(n, _)| include(n))
            .filter_map(|(n, _)| view.get(n, Which::Current, now).map(|(m, v)| (n, m, v)))
            .collect();
        f(&entries)
    }

    // ---- open readers -------------------------------------------------------------------------

    /// Opens a reader pinned to the version that is current (or previous) now.
    pub fn open(&self, name: &str, which: Which) -> Option<(HandleId, Meta)> {
        self.write_lock().open(name, which, Instant::now())
    }

    /// Opens a snapshot rendered by `render` from the current versions `include` accepts;
    /// returns its handle and the (name, version) pairs it pins.
    pub fn open_snapshot(
        &self,
        include: impl Fn(&str) -> bool,
        render: impl FnOnce(&[(&str, &Secret)]) -> Secret,
    ) -> (HandleId, Vec<(String, u64)>) {
        let mut view = self.write_lock();
        let pins: Vec<(String, u64)> = view
            .list()
            .filter(|(n, _)| include(n))
            .map(|(n, m)| (n.to_owned(), m.version))
            .collect();
        let (fh, _len) = view.open_snapshot(include, render);
        (fh, pins)
    }

    /// Up to `size` bytes at `offset` of what a handle reads, copied into a zeroizing buffer.
    pub fn read(
        &self,
        handle: HandleId,
        offset: u64,
        size: u32,
    ) -> Result<Zeroizing<Vec<u8>>, ReadError> {
        let view = self.read_lock();
        let bytes = view.read(handle, Instant::now())?.expose();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Ok(Zeroizing::new(bytes[start..end].to_vec()))
    }

    /// Closes a reader (its snapshot, if any, is zeroized).
    pub fn close(&self, handle: HandleId) {
        self.write_lock().close(handle);
    }

    /// Number of open readers.
    pub fn open_handles(&self) -> usize {
        self.read_lock().open_handles()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::view::UpdateState;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

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
        let view = Arc::new(SecretView::new());
        let mut rx = view.subscribe();
        let task = {
            let view = view.clone();
            tokio::spawn(async move { view.run_expiry().await })
        };
        view.apply(1, true, vec![active("A", 1, None)]);
        view.apply(
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
        assert!(view.meta("A", Which::Previous).is_none());
        assert_eq!(view.meta("A", Which::Current).unwrap().version, 2);
        task.abort();
    }

    #[test]
    fn invalidators_run_synchronously_with_the_view_unlocked() {
        let view = Arc::new(SecretView::new());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let id = {
            let (seen, v) = (seen.clone(), Arc::downgrade(&view));
            view.add_invalidator(Arc::new(move |what| {
                // The view lock is free: an invalidator may block on the kernel, which may be
                // waiting for a FUSE thread that needs the view.
                let v = v.upgrade().unwrap();
                assert!(
                    v.view.try_write().is_ok(),
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
        view.apply(1, true, vec![active("A", 1, None), active("B", 1, None)]);
        // Before apply returned, the invalidator had run.
        assert_eq!(*seen.lock().unwrap(), ["A,B"]);
        view.apply(1, false, vec![]);
        assert_eq!(seen.lock().unwrap().len(), 1, "no change, no invalidation");
        view.invalidate_all();
        assert_eq!(seen.lock().unwrap().last().unwrap(), "*");
        view.remove_invalidator(id);
        view.apply(2, false, vec![active("A", 2, None)]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn reads_copy_what_they_need() {
        let view = SecretView::new();
        view.apply(
            3,
            true,
            vec![active("A", 2, Some((1, Duration::from_secs(60))))],
        );
        assert_eq!(
            view.summary(),
            Summary {
                revision: 3,
                secrets: 1
            }
        );
        let (meta, left) = view.meta_for("A", Which::Previous).unwrap();
        assert_eq!(meta.version, 1);
        assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
        assert_eq!(view.meta_for("A", Which::Current).unwrap().1, Duration::MAX);
        assert_eq!(view.get("B", Which::Current).unwrap_err(), Absent::NoSecret);
        let (m, v) = view.get("A", Which::Previous).unwrap();
        assert_eq!((m.version, v.expose()), (1, &b"v1"[..]));
        let listed = view.list(|_| true);
        assert_eq!(listed[0].previous_version, Some(1));
        assert!(view.list(|_| false).is_empty());
        let (fh, _) = view.open("A", Which::Current).unwrap();
        assert_eq!(&view.read(fh, 1, 10).unwrap()[..], b"2");
        assert_eq!(&view.read(fh, 9, 10).unwrap()[..], b"");
        view.close(fh);
        assert_eq!(view.read(fh, 0, 1).unwrap_err(), ReadError::BadHandle);
        view.apply(4, false, vec![active("A", 3, None)]);
        assert_eq!(
            view.get("A", Which::Previous).unwrap_err(),
            Absent::NoPrevious
        );
        view.clear();
        assert_eq!(view.summary().secrets, 0);
    }
}
