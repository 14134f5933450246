//! Fetch + long-poll the vault, apply changes to the view (DESIGN §4.1).
//!
//! The first round asks for the full state (`since=0`); after that the agent long-polls with
//! the revision it holds. Sealed values are opened with the environment key into
//! [`Secret`]s; a value that fails to open is logged (name and version only) and skipped, and
//! the agent keeps what it held for that secret. While the vault is unreachable the agent keeps
//! serving and reports `degraded` (since the first failure); it reconnects with capped
//! exponential backoff and full jitter (never sooner than a refusal's `Retry-After`, such as
//! the vault's long-poll cap sends), and never busy-loops. A 401 (token revoked upstream)
//! is reported as such and retried slowly, and at once when the token file changes.
//!
//! This module only reports what happened ([`SyncEvent`], through the [`Reporter`] it is
//! given); `run` owns what follows from it: the health, `/v1/health`'s last sync time and
//! systemd's `STATUS=` line.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};

use crate::agent::state::AgentState;
use crate::agent::view::{Change, Update, UpdateState};
use crate::api::{SecretState, SyncResponse, SyncSecret};
use crate::client::{ClientError, VaultClient};
use crate::crypto::{CryptoError, PrivateKey, aad};
use crate::retry::{Backoff, Jitter};

/// Timing knobs (defaults are the product's; tests shorten them).
#[derive(Debug, Clone)]
pub struct SyncTiming {
    /// Long-poll wait asked of the vault (`run` takes it from the config).
    pub wait: Duration,
    /// Backoff while the vault is unreachable or failing.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Backoff while the vault refuses the token (401/403).
    pub refused_base: Duration,
    pub refused_cap: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        SyncTiming {
            wait: Duration::from_secs(crate::agent::config::DEFAULT_SYNC_WAIT_SECONDS),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(30),
            refused_base: Duration::from_secs(5),
            refused_cap: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("vault refused the agent token (401): {0}")]
    Unauthorized(String),
    #[error("vault refused the agent token for {org}/{env} (403): {message}")]
    Forbidden {
        org: String,
        env: String,
        message: String,
    },
    #[error("{0}")]
    Other(#[from] ClientError),
    #[error("shutting down")]
    Shutdown,
}

/// How a degraded reason starts while the agent serves its offline cache (until a sync).
pub const CACHE_PREFIX: &str = "serving cache from ";

/// What the sync loop reports to its owner (`run`), synchronously, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// An answer was applied: the agent is synced to `revision`.
    Synced { revision: u64 },
    /// A round failed; `first`: before the first sync (the agent does not serve yet).
    Failed { reason: String, first: bool },
}

/// Where [`SyncEvent`]s go.
pub type Reporter = Arc<dyn Fn(SyncEvent) + Send + Sync>;

/// The sync loop's parts.
pub struct Syncer {
    pub client: VaultClient,
    pub org: String,
    pub env: String,
    pub key: PrivateKey,
    pub state: Arc<AgentState>,
    /// Told what happened (see [`SyncEvent`]).
    pub report: Reporter,
    pub timing: SyncTiming,
    /// Caps the grace of previous versions (config `grace_seconds`).
    pub grace_cap: Option<Duration>,
    /// Notified when the token changed: a waiting retry happens at once.
    pub token_changed: Arc<Notify>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// The offline cache kept up to date with every applied answer (None: not kept).
    pub cache: Option<Arc<std::sync::Mutex<crate::agent::cache::Keeper>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("org", &self.org)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    /// One sync round trip, applied to the view. Returns the new revision.
    pub async fn round(&self, since: u64, wait: Duration) -> Result<u64, ClientError> {
        let resp = self
            .client
            .sync(&self.org, &self.env, since, wait.as_secs())
            .await?;
        let revision = resp.revision;
        self.apply(resp);
        Ok(revision)
    }

    /// Opens and applies one answer (changes are published by the state).
    fn apply(&self, resp: SyncResponse) {
        let (revision, full) = (resp.revision, resp.full);
        // A secret that cannot be opened stays listed (`Unopened`): the view keeps what it holds
        // for it, and a full answer drops only what it does not list (the view's rule).
        let updates = self.open_all(&resp.secrets);
        let changes = self.state.view.apply(revision, full, updates);
        let user_changes =
            self.state
                .users
                .apply(full, &resp.policies, &resp.user_values, self.grace_cap);
        let refused: Vec<(String, u64, u64)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::RefusedRollback {
                    name,
                    offered,
                    held,
                } => Some((name.clone(), *offered, *held)),
                _ => None,
            })
            .collect();
        let refused_names: Vec<&str> = refused.iter().map(|r| r.0.as_str()).collect();
        let accepted: Vec<&str> = resp
            .secrets
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !refused_names.contains(n))
            .collect();
        self.state.note_rollbacks(&refused, &accepted);
        if let Some(keeper) = &self.cache {
            keeper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(&self.key, &resp, &refused_names, self.state.view.highest());
        }
        (self.report)(SyncEvent::Synced { revision });
        for c in &changes {
            log_change(c);
        }
        tracing::debug!(
            revision,
            full,
            changed = changes.len(),
            user_values_changed = user_changes,
            "sync answer applied"
        );
    }

    /// Opens every secret of an answer, in order. A large answer (the first sync of many
    /// secrets: two X25519 operations each, ~100 µs) is opened on every core.
    fn open_all(&self, secrets: &[SyncSecret]) -> Vec<Update> {
        const PER_THREAD_MIN: usize = 64;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(secrets.len() / PER_THREAD_MIN)
            .max(1);
        if threads == 1 {
            return secrets.iter().map(|s| self.open(s)).collect();
        }
        let chunk = secrets.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = secrets
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().map(|s| self.open(s)).collect::<Vec<_>>())
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("opening sealed values panicked"))
                .collect()
        })
    }

    /// Opens one secret of a sync answer; `Unopened` (logged) when it cannot be used.
    fn open(&self, s: &SyncSecret) -> Update {
        let state = self.open_state(s).unwrap_or(UpdateState::Unopened);
        Update {
            name: s.name.clone(),
            version: s.version,
            state,
            // The vault's time; now when it cannot be read.
            updated_at: crate::rfc3339::parse(&s.updated_at).unwrap_or_else(SystemTime::now),
        }
    }

    fn open_state(&self, s: &SyncSecret) -> Option<UpdateState> {
        let state = match s.state {
            SecretState::Revoked => {
                self.state.delivered(&s.name);
                UpdateState::Revoked
            }
            SecretState::Active => {
                let Some(sealed) = &s.sealed_value else {
                    tracing::error!(
                        secret = %s.name, version = s.version,
                        "the vault sent an active secret without a value; skipped"
                    );
                    self.state
                        .undeliverable(&s.name, s.version, "missing_value");
                    return None;
                };
                let place = aad(&self.org, &self.env, &s.name);
                let value = match self.key.open(sealed, &place) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(
                            secret = %s.name, version = s.version,
                            "cannot open the sealed value ({e}); keeping what this agent holds \
                             (reported to the vault as undeliverable)"
                        );
                        let reason = match e {
                            CryptoError::BadSealedValue => "malformed",
                            _ => "cannot_open",
                        };
                        self.state.undeliverable(&s.name, s.version, reason);
                        return None;
                    }
                };
                self.state.delivered(&s.name);
                let previous = s.previous.as_ref().and_then(|p| {
                    let mut left = Duration::from_millis(p.grace_remaining_ms);
                    if let Some(cap) = self.grace_cap {
                        left = left.min(cap);
                    }
                    if left.is_zero() {
                        return None;
                    }
                    match self.key.open(&p.sealed_value, &place) {
                        Ok(v) => Some((p.version, v, left)),
                        Err(e) => {
                            tracing::error!(
                                secret = %s.name, version = p.version,
                                "cannot open the previous version's sealed value ({e}); not \
                                 serving it"
                            );
                            None
                        }
                    }
                });
                UpdateState::Active { value, previous }
            }
        };
        Some(state)
    }

    /// Serves the offline cache: its secrets opened and applied as a full answer. Returns its
    /// revision (the sync loop goes on from there).
    pub fn serve_cache(&self, cache: &crate::agent::cache::Cache) -> u64 {
        let updates = self.open_all(&cache.as_sync_secrets());
        let changes = self.state.view.apply(cache.revision, true, updates);
        for c in &changes {
            log_change(c);
        }
        cache.revision
    }

    /// The first full sync, before the agent reports ready. Retries while the vault is
    /// unreachable (status `syncing`); a refused token is fatal here (the operator must fix it).
    /// With an offline cache young enough (`cached`, already applied by
    /// [`serve_cache`](Self::serve_cache)), an unreachable vault ends the wait: the cache is
    /// served, degraded, and the sync loop catches up once the vault answers.
    pub async fn first_sync(
        &self,
        cached: Option<&crate::agent::cache::Cache>,
    ) -> Result<u64, SyncError> {
        let mut backoff = Backoff::new(self.timing.retry_base, self.timing.retry_cap, Jitter::Full);
        let mut stop = self.shutdown.clone();
        loop {
            let r = tokio::select! {
                r = self.round(0, Duration::ZERO) => r,
                _ = stop.wait_for(|s| *s) => return Err(SyncError::Shutdown),
            };
            match r {
                Ok(rev) => return Ok(rev),
                Err(ClientError::Unauthorized { message, .. }) => {
                    return Err(SyncError::Unauthorized(message));
                }
                Err(ClientError::Forbidden { message, .. }) => {
                    return Err(SyncError::Forbidden {
                        org: self.org.clone(),
                        env: self.env.clone(),
                        message,
                    });
                }
                Err(e) if cached.is_some() => {
                    let cache = cached.expect("checked");
                    let from = crate::rfc3339::format(
                        std::time::UNIX_EPOCH + Duration::from_millis(cache.written_at_ms),
                    );
                    tracing::warn!(
                        "first sync failed: {e}; serving the offline cache written at {from}"
                    );
                    (self.report)(SyncEvent::Failed {
                        reason: format!("{CACHE_PREFIX}{from}, {e}"),
                        first: false,
                    });
                    return Ok(cache.revision);
                }
                Err(e) => {
                    let delay = backoff.next_delay_after(e.retry_after());
                    tracing::warn!("first sync failed: {e}; retrying in {delay:?}");
                    (self.report)(SyncEvent::Failed {
                        reason: e.to_string(),
                        first: true,
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Err(SyncError::Shutdown),
                    }
                }
            }
        }
    }

    /// An operator accepted a vault restore (the view already forgot the floor): the offline
    /// cache is rewritten without it, and the next round asks for the full state (returns the
    /// `since` to use: 0).
    fn restore_accepted(&self) -> u64 {
        if self.state.restore.take().is_some()
            && let Some(keeper) = &self.cache
        {
            keeper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_floor(&self.key, self.state.view.highest());
        }
        tracing::info!("restore accepted: asking the vault for its full state");
        0
    }

    /// Long-polls forever from `since`, until shutdown.
    pub async fn run(self, mut since: u64) {
        let mut retry = Backoff::new(self.timing.retry_base, self.timing.retry_cap, Jitter::Full);
        let mut refused = Backoff::new(
            self.timing.refused_base,
            self.timing.refused_cap,
            Jitter::Full,
        );
        // Answers without news that come back fast (a misbehaving server) are spaced out too.
        let mut empty = Backoff::new(self.timing.retry_base, self.timing.retry_cap, Jitter::Full);
        let mut stop = self.shutdown.clone();
        let mut was_ready = true;
        loop {
            let started = Instant::now();
            // After a failure the retry does not wait for news: the vault is marked reachable as
            // soon as it answers, not when a long-poll ends (up to `wait` later).
            let wait = if was_ready {
                self.timing.wait
            } else {
                Duration::ZERO
            };
            let r = tokio::select! {
                r = self.round(since, wait) => r,
                _ = self.state.restore.requested() => {
                    since = self.restore_accepted();
                    continue;
                }
                _ = stop.wait_for(|s| *s) => return,
            };
            let delay = match r {
                Ok(rev) => {
                    // Only a long-poll that went through ends the backoff: the quick probe after
                    // a failure (`wait` 0) is answered even by a vault that refuses long-polls
                    // over its cap, and resetting on it made such an agent retry at the base
                    // delay forever instead of backing off.
                    if !wait.is_zero() {
                        retry.reset();
                    }
                    refused.reset();
                    let recovered = !was_ready;
                    if recovered {
                        tracing::info!("vault reachable again; synced to revision {rev}");
                        was_ready = true;
                        // Access events waiting in the spool go now, not after their backoff.
                        self.state.auditor.retry_now();
                    }
                    let news = rev != since;
                    since = rev;
                    if news || recovered || started.elapsed() >= Duration::from_secs(1) {
                        empty.reset();
                        continue;
                    }
                    empty.next_delay()
                }
                Err(e) => {
                    let (reason, delay) = match &e {
                        ClientError::Unauthorized { .. } => (
                            "vault refused the agent token (401)".to_owned(),
                            refused.next_delay(),
                        ),
                        ClientError::Forbidden { .. } => (
                            format!(
                                "vault refused the agent token for {}/{} (403)",
                                self.org, self.env
                            ),
                            refused.next_delay(),
                        ),
                        ClientError::Unreachable(why) => {
                            (format!("vault unreachable: {why}"), retry.next_delay())
                        }
                        // A refusal naming its own delay (the vault's long-poll cap, an
                        // overloaded proxy): never sooner than asked, jittered on top.
                        other => (
                            other.to_string(),
                            retry.next_delay_after(other.retry_after()),
                        ),
                    };
                    if was_ready {
                        tracing::warn!("sync failed: {e}; serving the last known values");
                    } else {
                        tracing::debug!("sync failed again: {e}; next try in {delay:?}");
                    }
                    was_ready = false;
                    (self.report)(SyncEvent::Failed {
                        reason,
                        first: false,
                    });
                    delay
                }
            };
            let changed = self.token_changed.notified();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = changed => {
                    tracing::info!("retrying the sync with the new token");
                    refused.reset();
                    retry.reset();
                }
                _ = self.state.restore.requested() => {
                    since = self.restore_accepted();
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn log_change(c: &Change) {
    match c {
        Change::Added { name, version } => tracing::info!(secret = %name, version, "added"),
        Change::Rotated {
            name,
            version,
            previous,
            in_grace,
        } => tracing::info!(secret = %name, version, previous, in_grace, "new version"),
        Change::Revoked { name, version } => tracing::info!(secret = %name, version, "revoked"),
        Change::PreviousExpired { name, version } => {
            tracing::info!(secret = %name, version, "previous version's grace ended")
        }
        Change::RefusedRollback {
            name,
            offered,
            held,
        } => tracing::warn!(
            secret = %name, offered, held,
            "refused an older version than one already served (rollback protection)"
        ),
    }
}
