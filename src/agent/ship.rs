//! Shipping access events from the spool to the vault (DESIGN §3.5, §4.5).
//!
//! One task reads up to a batch (≤ 500 events, ≤ 512 KiB) after the last shipped `seq`, posts
//! it through an [`Uplink`], and on success advances the spool's acknowledged cursor. On
//! failure it keeps *the same batch in memory* and retries it with capped exponential backoff
//! and jitter, so a batch the spool has meanwhile had to drop (full) is still delivered.
//! Delivery is at-least-once: a crash between the vault's answer and the persisted cursor
//! re-sends the batch, and the vault's de-duplication on `(agent_id, seq)` makes the counting
//! exactly-once. Nothing here is on a read path.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use crate::agent::spool::Spool;
use crate::api::{AccessEvent, AuditBatch, AuditBatchResponse};
use crate::client::{ClientError, VaultClient};
use crate::retry::{Backoff, Jitter};

/// Where batches go. The real one is [`VaultUplink`]; tests use a fake.
pub trait Uplink: Send + Sync + 'static {
    type Error: std::fmt::Display + Send + 'static;

    /// Posts one batch. `Ok` means the vault recorded (or had already recorded) every event.
    fn post(
        &self,
        batch: &AuditBatch,
    ) -> impl Future<Output = Result<AuditBatchResponse, Self::Error>> + Send;

    /// Whether `err` means the vault will never take this batch as it is (it refused its
    /// content), rather than "try again later". Such a batch is split to find the refused
    /// event, which is then counted as dropped instead of blocking the spool forever.
    fn is_rejection(_err: &Self::Error) -> bool {
        false
    }
}

/// `POST /api/v1/orgs/:org/audit/events` through the agent's [`VaultClient`] (whose token the
/// agent keeps current).
#[derive(Debug, Clone)]
pub struct VaultUplink {
    client: VaultClient,
    org: String,
}

impl VaultUplink {
    pub fn new(client: VaultClient, org: impl Into<String>) -> Self {
        VaultUplink {
            client,
            org: org.into(),
        }
    }
}

impl Uplink for VaultUplink {
    type Error = ClientError;

    fn post(
        &self,
        batch: &AuditBatch,
    ) -> impl Future<Output = Result<AuditBatchResponse, ClientError>> + Send {
        self.client.post_audit(&self.org, batch)
    }

    /// 400/413/422: the content was refused. 401/403 (a token being replaced), 408, 429 and
    /// 5xx are worth retrying as they are.
    fn is_rejection(err: &ClientError) -> bool {
        matches!(err.status(), Some(400 | 413 | 422))
    }
}

/// Shipping settings.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub agent_id: String,
    pub host: Option<String>,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A post that takes longer is abandoned and retried.
    pub post_timeout: Duration,
}

/// How shipping stands (for stats).
#[derive(Debug, Clone, Default)]
pub struct ShipStatus {
    pub last_shipped_at: Option<SystemTime>,
    pub last_error: Option<String>,
    /// First failure of the current run of failures.
    pub failing_since: Option<SystemTime>,
}

/// What the auditor and the shipping task share.
#[derive(Debug)]
pub(crate) struct Link {
    /// The writer appended records.
    pub new_data: Notify,
    /// Retry now (flush): cuts a backoff short.
    pub kick: Notify,
    pub stop: watch::Sender<bool>,
    /// The acknowledged cursor, as shipped.
    pub acked: watch::Sender<u64>,
    pub status: Mutex<ShipStatus>,
    /// Events acknowledged since start.
    pub shipped_total: AtomicU64,
}

impl Link {
    pub fn new(acked: u64) -> Self {
        Link {
            new_data: Notify::new(),
            kick: Notify::new(),
            stop: watch::channel(false).0,
            acked: watch::channel(acked).0,
            status: Mutex::new(ShipStatus::default()),
            shipped_total: AtomicU64::new(0),
        }
    }

    pub fn status(&self) -> ShipStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut ShipStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The spool as the auditor holds it: `None` once stopped (which releases its lock file).
pub(crate) type SharedSpool = Arc<Mutex<Option<Spool>>>;

/// Runs a closure on the spool off the async threads. `None` if the spool is closed.
async fn with_spool<T: Send + 'static>(
    spool: &SharedSpool,
    f: impl FnOnce(&mut Spool) -> T + Send + 'static,
) -> Option<T> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        spool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(f)
    })
    .await
    .ok()
    .flatten()
}

/// The shipping task; returns when `link.stop` turns true.
pub(crate) async fn run<U: Uplink>(
    spool: SharedSpool,
    link: Arc<Link>,
    uplink: U,
    cfg: ShipConfig,
) {
    let mut stop = link.stop.subscribe();
    // Last seq taken from the spool, and the events taken but not yet acknowledged.
    let mut after = *link.acked.borrow();
    let mut queue: VecDeque<AccessEvent> = VecDeque::new();
    // Events per post: shrinks while the vault rejects a batch, to isolate the bad event.
    let mut limit = cfg.batch_max_events;
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max, Jitter::Equal);
    loop {
        if *stop.borrow() {
            return;
        }
        if queue.is_empty() {
            let (max_events, max_bytes) = (cfg.batch_max_events, cfg.batch_max_bytes);
            match with_spool(&spool, move |s| s.take_batch(after, max_events, max_bytes)).await {
                None => return,
                Some(Ok(events)) => {
                    after = events.last().map_or(after, |e| e.seq);
                    queue = events.into();
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "audit: cannot read the spool");
                    link.set_status(|s| s.last_error = Some(e.to_string()));
                    if sleep_or_stop(&mut stop, &link, backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            }
            if queue.is_empty() {
                tokio::select! {
                    _ = link.new_data.notified() => {}
                    _ = link.kick.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        let n = limit.min(queue.len());
        let batch = AuditBatch {
            agent_id: cfg.agent_id.clone(),
            host: cfg.host.clone(),
            events: queue.iter().take(n).cloned().collect(),
        };
        let result = tokio::select! {
            r = tokio::time::timeout(cfg.post_timeout, uplink.post(&batch)) => r,
            _ = stop.changed() => return,
        };
        let last = batch.events.last().map_or(after, |e| e.seq);
        let step = match result {
            Ok(Ok(resp)) => {
                if resp.accepted + resp.duplicates != n as u64 {
                    tracing::warn!(
                        sent = n,
                        accepted = resp.accepted,
                        duplicates = resp.duplicates,
                        "audit: the vault acknowledged a different number of events than sent"
                    );
                }
                Step::Delivered
            }
            Ok(Err(e)) if U::is_rejection(&e) && n == 1 => {
                let count = batch.events[0].count;
                tracing::error!(
                    error = %e,
                    seq = last,
                    count,
                    "audit: the vault refuses an event; counting it as dropped"
                );
                with_spool(&spool, move |s| s.report_lost(count)).await;
                Step::Refused(e.to_string())
            }
            Ok(Err(e)) if U::is_rejection(&e) => {
                tracing::warn!(error = %e, events = n, "audit: the vault refused a batch; splitting it");
                limit = (n / 2).max(1);
                Step::Split(e.to_string())
            }
            Ok(Err(e)) => Step::Retry(e.to_string()),
            Err(_) => Step::Retry(format!("no answer within {:?}", cfg.post_timeout)),
        };
        match step {
            Step::Delivered | Step::Refused(_) => {
                queue.drain(..n);
                if queue.is_empty() {
                    limit = cfg.batch_max_events;
                }
                let records = n as u64;
                // A failed cursor write only means a re-send after a restart (de-duplicated).
                if let Some(Err(e)) =
                    with_spool(&spool, move |s| s.ack_records(last, records)).await
                {
                    tracing::error!(error = %e, "audit: cannot persist the acknowledged cursor");
                }
                if let Step::Refused(reason) = step {
                    link.set_status(|s| s.last_error = Some(reason));
                } else {
                    link.shipped_total.fetch_add(records, Ordering::Relaxed);
                    link.set_status(|s| {
                        s.last_shipped_at = Some(SystemTime::now());
                        s.last_error = None;
                        s.failing_since = None;
                    });
                }
                link.acked.send_replace(last);
                backoff.reset();
            }
            Step::Split(reason) => link.set_status(|s| s.last_error = Some(reason)),
            Step::Retry(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %reason, events = n, retry_in = ?delay, "audit: shipping failed");
                link.set_status(|s| {
                    s.last_error = Some(reason);
                    s.failing_since.get_or_insert_with(SystemTime::now);
                });
                if sleep_or_stop(&mut stop, &link, delay).await {
                    return;
                }
            }
        }
    }
}

/// What one post came to.
enum Step {
    Delivered,
    /// The single event was refused for good: skipped, counted as dropped.
    Refused(String),
    /// The batch was refused: try halves.
    Split(String),
    /// Try the same again after a backoff.
    Retry(String),
}

/// Sleeps `d` (cut short by a kick); true if told to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, link: &Link, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = link.kick.notified() => false,
        _ = stop.changed() => true,
    }
}
