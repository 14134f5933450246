//! Fan-out across instances: a dedicated LISTEN connection per instance.
//!
//! Every transaction that moves an environment's revision does
//! `pg_notify('fyvault_changes', 'org|env|revision')` (see `rows::notify_change`); PostgreSQL
//! delivers it at commit to every listening connection. [`PgChangeFeed`] keeps one such
//! connection and publishes each notification into the instance's [`LocalChangeFeed`], so a
//! long-poll held by instance A wakes when instance B writes. No table is polled.
//!
//! Notifications sent while the connection is down are lost, so after every (re)LISTEN the
//! feed wakes every waiter: each re-reads the store and answers if its environment moved.
//! The connection is re-made with capped exponential backoff and checked with a ping so a
//! silently dead one is noticed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Breaker, CHANGES_CHANNEL, PgStore, TOKENS_CHANNEL, describe, err_text};
use crate::vault::sync::{ChangeFeed, LocalChangeFeed};
use crate::vault::token_cache::TokenCache;

/// How often the idle LISTEN connection is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The change feed of an instance over PostgreSQL: local fan-out fed by LISTEN/NOTIFY.
pub struct PgChangeFeed {
    local: Arc<LocalChangeFeed>,
    listening: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("listening", &*self.listening.borrow())
            .finish()
    }
}

impl PgChangeFeed {
    /// Starts the LISTEN task; change notifications are published into `local`, token
    /// revocations forgotten from `tokens`.
    pub fn start(
        store: &PgStore,
        local: Arc<LocalChangeFeed>,
        tokens: Arc<TokenCache>,
    ) -> PgChangeFeed {
        let (tx, rx) = watch::channel(false);
        let listener = Listener {
            config: store.pg_config().clone(),
            tls: store.pg_tls().clone(),
            local: local.clone(),
            tokens,
            breaker: store.breaker(),
            min: store.options().backoff_min,
            max: store.options().backoff_max,
            listening: tx,
        };
        PgChangeFeed {
            local,
            listening: rx,
            task: tokio::spawn(listener.run()),
        }
    }

    /// The in-process feed the notifications are published into.
    pub fn local(&self) -> &Arc<LocalChangeFeed> {
        &self.local
    }

    /// True while the LISTEN connection is up.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until LISTEN is in place, at most `limit`; returns whether it is.
    pub async fn wait_listening(&self, limit: Duration) -> bool {
        let mut rx = self.listening.clone();
        tokio::time::timeout(limit, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeFeed for PgChangeFeed {
    fn subscribe(&self, org_id: &str, env: &str) -> watch::Receiver<u64> {
        let rx = self.local.subscribe(org_id, env);
        tracing::debug!(org_id, env, "change feed: subscribed");
        rx
    }

    /// Local waiters learn at once; other instances learn from the NOTIFY the writing
    /// transaction queued.
    fn publish(&self, org_id: &str, env: &str, revision: u64) {
        self.local.publish(org_id, env, revision);
    }
}

/// `org|env|revision` → its parts. The org id is taken as everything before the last two
/// fields, so a `|` in it cannot shift them (environments and revisions hold none).
pub fn parse_payload(payload: &str) -> Option<(&str, &str, u64)> {
    let mut it = payload.rsplitn(3, '|');
    let revision = it.next()?.parse().ok()?;
    let env = it.next()?;
    let org = it.next()?;
    Some((org, env, revision))
}

struct Listener {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    local: Arc<LocalChangeFeed>,
    tokens: Arc<TokenCache>,
    breaker: Arc<Breaker>,
    min: Duration,
    max: Duration,
    listening: watch::Sender<bool>,
}

impl Listener {
    async fn run(self) {
        let mut failures = 0u32;
        loop {
            let (listened, result) = self.session().await;
            self.listening.send_replace(false);
            if listened {
                failures = 0;
            }
            match result {
                Ok(()) => tracing::warn!("the database closed the LISTEN connection"),
                Err(e) => tracing::warn!(database = %describe(&self.config), error = %err_text(&e),
                    "LISTEN connection lost or refused"),
            }
            let delay = crate::retry::ceiling(self.min, self.max, failures);
            failures = failures.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection's life: connect, LISTEN, wake everyone, then relay notifications until
    /// the connection ends or a ping fails. Returns whether LISTEN was reached.
    async fn session(&self) -> (bool, Result<(), tokio_postgres::Error>) {
        let (client, mut conn) = match self.config.connect(self.tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                self.breaker.failed();
                return (false, Err(e));
            }
        };
        let local = self.local.clone();
        let tokens = self.tokens.clone();
        let relay = async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(message) = messages.next().await {
                if let AsyncMessage::Notification(n) = message? {
                    if n.channel() == TOKENS_CHANNEL {
                        tokens.forget(n.payload());
                        continue;
                    }
                    match parse_payload(n.payload()) {
                        Some((org, env, revision)) => local.publish(org, env, revision),
                        None => tracing::debug!("ignoring a malformed change notification"),
                    }
                }
            }
            Ok(())
        };
        let mut listened = false;
        let work = async {
            client
                .batch_execute(&format!(
                    "LISTEN {CHANGES_CHANNEL}; LISTEN {TOKENS_CHANNEL}"
                ))
                .await?;
            listened = true;
            self.breaker.succeeded();
            self.listening.send_replace(true);
            // Whatever was notified while no connection listened is lost: every waiter
            // re-reads the store.
            self.local.wake_all();
            // …and revocations may have been missed: every token is read again.
            self.tokens.clear();
            tracing::info!(database = %describe(&self.config), "listening for changes");
            loop {
                tokio::time::sleep(PING_EVERY).await;
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => {
                        tracing::warn!("the LISTEN connection did not answer a ping");
                        return Ok::<(), tokio_postgres::Error>(());
                    }
                }
            }
        };
        let result = tokio::select! {
            r = relay => r,
            r = work => r,
        };
        (listened, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_from_the_right() {
        assert_eq!(parse_payload("o1|prod|42"), Some(("o1", "prod", 42)));
        assert_eq!(parse_payload("a|b|prod|7"), Some(("a|b", "prod", 7)));
        assert_eq!(parse_payload("prod|7"), None);
        assert_eq!(parse_payload("o|prod|x"), None);
        assert_eq!(parse_payload(""), None);
    }
}
