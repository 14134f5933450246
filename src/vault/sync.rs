//! The change feed behind the long-poll sync (DESIGN §3.4).
//!
//! Writers publish an environment's new revision after their transaction commits; sync
//! requests subscribe *before* reading the store, so no change can slip between the read and
//! the wait. [`LocalChangeFeed`] is the in-process feed; over PostgreSQL,
//! [`crate::vault::store::postgres::PgChangeFeed`] feeds it from LISTEN/NOTIFY so every
//! instance wakes its own waiters.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Fan-out of "environment (org, env) reached revision N".
pub trait ChangeFeed: Send + Sync + 'static {
    /// A receiver that changes whenever the environment's revision is published.
    fn subscribe(&self, org_id: &str, env: &str) -> watch::Receiver<u64>;
    /// Announces a committed revision.
    fn publish(&self, org_id: &str, env: &str, revision: u64);
}

/// In-process change feed: one `watch` channel per environment.
#[derive(Debug, Default)]
pub struct LocalChangeFeed {
    channels: Mutex<HashMap<(String, String), watch::Sender<u64>>>,
}

impl LocalChangeFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests are subscribed to the environment right now (held long-polls).
    pub fn subscribers(&self, org_id: &str, env: &str) -> usize {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(org_id.to_string(), env.to_string()))
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Wakes every subscriber without changing any revision: each re-reads the store (after a
    /// reconnect of a cross-instance feed, when notifications may have been missed).
    pub fn wake_all(&self) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            tx.send_modify(|_| {});
        }
    }
}

impl ChangeFeed for LocalChangeFeed {
    fn subscribe(&self, org_id: &str, env: &str) -> watch::Receiver<u64> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((org_id.to_string(), env.to_string()))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn publish(&self, org_id: &str, env: &str, revision: u64) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&(org_id.to_string(), env.to_string())) {
            // Revisions only grow; a late publisher never moves the value back.
            tx.send_if_modified(|cur| {
                if revision > *cur {
                    *cur = revision;
                    true
                } else {
                    false
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_wake_on_publish_only_for_their_env() {
        let feed = LocalChangeFeed::new();
        let mut a = feed.subscribe("o", "prod");
        let mut b = feed.subscribe("o", "staging");
        feed.publish("o", "prod", 3);
        a.changed().await.unwrap();
        assert_eq!(*a.borrow_and_update(), 3);
        assert!(!b.has_changed().unwrap());
        feed.publish("o", "prod", 2);
        assert!(!a.has_changed().unwrap());
        // Publishing to an environment nobody watches is fine.
        feed.publish("o", "nobody", 1);
        feed.publish("o", "staging", 1);
        b.changed().await.unwrap();
        // wake_all wakes everyone, revisions unchanged.
        feed.wake_all();
        a.changed().await.unwrap();
        b.changed().await.unwrap();
        assert_eq!((*a.borrow_and_update(), *b.borrow_and_update()), (3, 1));
    }
}
