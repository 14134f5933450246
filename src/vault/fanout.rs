//! One read per change, shared by every long-poll it wakes (docs/vault.md, "One read per
//! change").
//!
//! A parked long-poll registers its `since` with the environment's [`Hub`]. One task per
//! environment (the distributor) follows the change feed; on a change it reads the store once,
//! from the lowest `since` registered ([`Store::sync_changes`]), serialises the answer once per
//! distinct `since`, and hands the same bytes to every poll at that `since`. On PostgreSQL that
//! is one query per instance per change, and on SQLite one blocking read, however many polls
//! wake.
//!
//! Correctness: a poll registers *before* it reads the store (or decides that it need not), and
//! the distributor snapshots the registered polls *after* it saw the change, so no change falls
//! between a poll's read and its wait. While no change has been announced since the last shared
//! read, a poll whose `since` is that read's revision parks without reading at all (the agent's
//! next poll after a wake costs no store read).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::vault::clock::now_ms;
use crate::vault::error::ApiError;
use crate::vault::store::Store;
use crate::vault::sync::ChangeFeed;

/// What a parked poll receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The serialised sync answer (shared by every poll at the same `since`).
    Answer(Bytes),
    /// The shared read cannot answer this `since`: read the store yourself.
    Reread,
    /// The shared read failed; answer this.
    Error(ApiError),
}

type Waiters = BTreeMap<u64, HashMap<u64, oneshot::Sender<Delivery>>>;

#[derive(Default)]
struct HubState {
    next_id: u64,
    waiters: Waiters,
    /// The revision of the last shared read, while no change has been announced since.
    current: Option<u64>,
    /// Announcements the distributor has taken in (a poll's own read may set `current` only
    /// if none came between its registration and its answer).
    generation: u64,
}

/// The parked polls of one environment.
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A registered poll; unregisters when dropped.
pub struct Waiter {
    hub: Arc<Hub>,
    since: u64,
    id: u64,
    rx: oneshot::Receiver<Delivery>,
    current: bool,
    generation: u64,
}

impl Waiter {
    /// True when `since` is the environment's revision as of the last shared read and no
    /// change has been announced since: the poll may park without reading the store.
    pub fn is_current(&self) -> bool {
        self.current
    }

    /// Tells the hub that this poll's own store read (made after it registered) found the
    /// environment at `revision`. If no change was announced since the poll registered, that
    /// is the current revision, and the polls after it park without reading: a fleet that
    /// (re)connects at once makes a few reads, not one per agent.
    pub fn saw(&self, revision: u64) {
        let mut st = self.hub.lock();
        if st.generation == self.generation && st.current.is_none() {
            st.current = Some(revision);
        }
    }

    /// The delivery; `None` when the server is stopping.
    pub async fn delivery(&mut self) -> Option<Delivery> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut st = self.hub.lock();
        if let Some(group) = st.waiters.get_mut(&self.since) {
            group.remove(&self.id);
            if group.is_empty() {
                st.waiters.remove(&self.since);
            }
        }
    }
}

/// The hubs of every environment with long-polls on this instance.
pub struct Fanout {
    store: Arc<dyn Store>,
    feed: Arc<dyn ChangeFeed>,
    hubs: Mutex<HashMap<(String, String), Arc<Hub>>>,
    shutdown: watch::Receiver<bool>,
    /// Shared reads made so far (observability, tests).
    reads: Arc<AtomicU64>,
    /// Reads polls made for themselves (a poll that cannot park on what the hub knows).
    own_reads: AtomicU64,
}

impl Fanout {
    pub fn new(
        store: Arc<dyn Store>,
        feed: Arc<dyn ChangeFeed>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Fanout {
            store,
            feed,
            hubs: Mutex::new(HashMap::new()),
            shutdown,
            reads: Arc::default(),
            own_reads: AtomicU64::new(0),
        }
    }

    /// Registers a poll at `since` (before it reads the store).
    pub fn register(&self, org: &str, env: &str, since: u64) -> Waiter {
        let hub = self.hub(org, env);
        let (tx, rx) = oneshot::channel();
        let mut st = hub.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.waiters.entry(since).or_default().insert(id, tx);
        let current = st.current == Some(since);
        let generation = st.generation;
        drop(st);
        Waiter {
            hub,
            since,
            id,
            rx,
            current,
            generation,
        }
    }

    /// Polls parked for an environment (observability, tests).
    pub fn parked(&self, org: &str, env: &str) -> usize {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.get(&(org.to_owned(), env.to_owned()))
            .map_or(0, |h| h.lock().waiters.values().map(HashMap::len).sum())
    }

    /// Store reads the distributors made (one per announced change with parked polls).
    pub fn shared_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Counts a store read a poll made for itself.
    pub fn note_own_read(&self) {
        self.own_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Store reads polls made for themselves (observability, tests).
    pub fn own_reads(&self) -> u64 {
        self.own_reads.load(Ordering::Relaxed)
    }

    fn hub(&self, org: &str, env: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (org.to_owned(), env.to_owned());
        if let Some(h) = hubs.get(&key) {
            return h.clone();
        }
        let hub = Arc::new(Hub::default());
        // Subscribed now, before the first poll registers and reads.
        let changes = self.feed.subscribe(org, env);
        tokio::spawn(distribute(
            hub.clone(),
            self.store.clone(),
            key.clone(),
            changes,
            self.shutdown.clone(),
            self.reads.clone(),
        ));
        hubs.insert(key, hub.clone());
        hub
    }
}

/// Serialises a sync answer (shared bytes).
fn to_bytes(resp: &crate::api::SyncResponse) -> Delivery {
    match serde_json::to_vec(resp) {
        Ok(v) => Delivery::Answer(Bytes::from(v)),
        Err(_) => Delivery::Error(ApiError::internal()),
    }
}

/// The distributor of one environment: one read per announced change, answers shared.
async fn distribute(
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    (org, env): (String, String),
    mut changes: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    reads: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = crate::vault::stopped(shutdown.clone()) => return,
        }
        changes.borrow_and_update();
        let sinces: Vec<u64> = {
            let mut st = hub.lock();
            st.current = None;
            st.generation += 1;
            st.waiters.keys().copied().collect()
        };
        let Some(&lowest) = sinces.first() else {
            continue;
        };
        reads.fetch_add(1, Ordering::Relaxed);
        match store.sync_changes(&org, &env, lowest, now_ms()).await {
            Ok(cs) => {
                // Current from now on, before the answers go out: the polls the woken agents
                // send right after their answer then park without a read of their own (set
                // only if no change was announced during the read; the next one clears it).
                if !changes.has_changed().unwrap_or(true) {
                    hub.lock().current = Some(cs.revision);
                }
                for since in sinces {
                    if since == cs.revision {
                        continue; // nothing new for them (a wake without a change)
                    }
                    let delivery = match cs.answer(since) {
                        Some(resp) => to_bytes(&resp),
                        None => Delivery::Reread,
                    };
                    let group = hub.lock().waiters.remove(&since);
                    for tx in group.into_iter().flat_map(HashMap::into_values) {
                        let _ = tx.send(delivery.clone());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(org = %org, env = %env, error = %e, "shared sync read failed");
                let err = Delivery::Error(e.into());
                let all = std::mem::take(&mut hub.lock().waiters);
                for tx in all.into_values().flat_map(HashMap::into_values) {
                    let _ = tx.send(err.clone());
                }
            }
        }
    }
}
