//! The agent's supervisor task: what systemd is told while the agent serves.
//!
//! - `STATUS=` — one line saying what the agent does (`ready: synced revision N, M secrets; …`,
//!   `degraded since …: reason; …`), sent whenever that line changes (checked every second).
//! - `WATCHDOG=1` — when systemd asked for it (`WATCHDOG_USEC`), every half interval, and only
//!   after a liveness probe passed: the view lock can be taken, the socket answers
//!   `GET /v1/health`, and the mount (if any) answers `statfs`. A wedged agent stops pinging
//!   and systemd restarts it.
//! - When the vault becomes reachable again after an outage, the audit shipper is told to
//!   retry at once instead of finishing its backoff.
//!
//! It also owns what follows from the sync loop's reports ([`sync_reporter`]): the health, the
//! last sync time `/v1/health` shows, and the `STATUS=` line before the first sync.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::agent::secret_view::Summary;
use crate::agent::socket::RunInfo;
use crate::agent::state::{AgentState, Health};
use crate::agent::sync::{Reporter, SyncEvent};

/// How often the status line is recomputed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// A liveness probe step slower than this fails (also bounded by a quarter of the watchdog
/// interval).
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Sends `STATUS=…` to systemd (a no-op outside systemd).
pub(super) fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}

/// Turns what the sync loop reports into the agent's health, its last sync time and (before
/// the first sync, when the supervisor does not run yet) the `STATUS=` line.
pub(super) fn sync_reporter(state: Arc<AgentState>, info: Arc<RunInfo>) -> Reporter {
    Arc::new(move |event| match event {
        SyncEvent::Synced { .. } => {
            info.mark_synced();
            state.set_health(Health::Ready);
        }
        SyncEvent::Failed {
            reason,
            first: true,
        } => notify_status(&format!("syncing: {reason}")),
        SyncEvent::Failed {
            reason,
            first: false,
        } => state.set_health(Health::Degraded {
            since: std::time::SystemTime::now(),
            reason,
        }),
    })
}

pub(super) struct Supervisor {
    pub state: Arc<AgentState>,
    pub info: Arc<RunInfo>,
    pub socket: PathBuf,
    pub mount: Option<PathBuf>,
    pub watchdog: Option<Duration>,
    pub stop: watch::Receiver<bool>,
}

/// A blocking probe that may hang (a wedged lock or filesystem): at most one runs at a time,
/// so a hang costs one blocking thread, not one per tick.
#[derive(Default)]
struct Probe(Arc<AtomicBool>);

impl Probe {
    async fn run(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        if self.0.swap(true, Ordering::AcqRel) {
            return Err(format!("{what}: the previous probe is still stuck"));
        }
        let busy = self.0.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = f();
            busy.store(false, Ordering::Release);
            r
        });
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r.map_err(|e| format!("{what}: {e}")),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {limit:?}")),
        }
    }
}

impl Supervisor {
    pub(super) async fn run(self) {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wd_tick = tokio::time::interval(
            self.watchdog
                .map(|d| (d / 2).max(Duration::from_millis(10)))
                .unwrap_or(Duration::from_secs(3600)),
        );
        wd_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let limit = self
            .watchdog
            .map(|d| (d / 4).clamp(Duration::from_millis(5), PROBE_LIMIT))
            .unwrap_or(PROBE_LIMIT);
        let (lock_probe, mount_probe) = (Probe::default(), Probe::default());
        let mut last_status = String::new();
        let mut was_degraded = false;
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = status_tick.tick() => {
                    let health = self.state.health();
                    let degraded = matches!(health, Health::Degraded { .. });
                    if was_degraded && !degraded {
                        // The vault is back: ship the access events now.
                        let auditor = self.state.auditor.clone();
                        tokio::spawn(async move {
                            let _ = auditor.flush(Duration::from_millis(1)).await;
                        });
                    }
                    was_degraded = degraded;
                    let line = self.status_line(&health);
                    if line != last_status {
                        notify_status(&line);
                        tracing::debug!(status = %line, "status");
                        last_status = line;
                    }
                }
                _ = wd_tick.tick(), if self.watchdog.is_some() => {
                    match self.alive(limit, &lock_probe, &mount_probe).await {
                        Ok(()) => {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                        Err(e) => tracing::error!("liveness probe failed, not pinging the watchdog: {e}"),
                    }
                }
                () = stopped(&mut stop) => return,
            }
        }
    }

    fn status_line(&self, health: &Health) -> String {
        let Summary { revision, secrets } = self.state.view.summary();
        let mut line = match health {
            Health::Ready => format!("ready: synced revision {revision}, {secrets} secrets"),
            Health::Syncing => "syncing".to_owned(),
            Health::Degraded { since, reason } => format!(
                "degraded since {}: {reason}; serving revision {revision}, {secrets} secrets",
                crate::rfc3339::format(*since)
            ),
        };
        match self.info.mount() {
            Some(m) if m.state == "mounted" => {
                line.push_str(&format!("; mounted at {}", m.path.unwrap_or_default()))
            }
            Some(m) if m.state == "unavailable" => line.push_str("; no mount (socket only)"),
            _ => {}
        }
        let audit = self.state.auditor.stats();
        if let Some(since) = audit.failing_since.filter(|_| audit.enabled) {
            line.push_str(&format!(
                "; audit: {} events waiting, shipping failing since {since}",
                audit.backlog_events
            ));
        }
        line
    }

    /// The liveness probe: the view lock, the socket's serving loop, the mount.
    async fn alive(&self, limit: Duration, lock: &Probe, mount: &Probe) -> Result<(), String> {
        let state = self.state.clone();
        lock.run("view lock", limit, move || state.view.probe_lock())
            .await?;
        match tokio::time::timeout(limit, probe_socket(&self.socket)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("socket: {e}")),
            Err(_) => return Err(format!("socket: no answer within {limit:?}")),
        }
        if let Some(path) = self.mount.clone()
            && self.info.mount().is_some_and(|m| m.state == "mounted")
        {
            mount
                .run("mount", limit, move || {
                    nix::sys::statfs::statfs(&path)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .await?;
        }
        Ok(())
    }
}

/// Resolves when shutdown starts (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `GET /v1/health` on the agent's own socket; Ok on a 200.
async fn probe_socket(path: &std::path::Path) -> Result<(), String> {
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: fyvault\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    if &head == b"HTTP/1.1 200" {
        Ok(())
    } else {
        Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&head).trim_end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::access::Policy;
    use crate::agent::audit::Auditor;

    #[test]
    fn sync_reports_become_health_and_last_sync() {
        let state = AgentState::new(Policy::default(), Auditor::disabled());
        let info = Arc::new(RunInfo::new("org", "env"));
        let report = sync_reporter(state.clone(), info.clone());
        report(SyncEvent::Failed {
            reason: "down".into(),
            first: true,
        });
        assert_eq!(state.health(), Health::Syncing, "not serving yet");
        assert!(info.last_sync.read().unwrap().is_none());
        report(SyncEvent::Synced { revision: 3 });
        assert_eq!(state.health(), Health::Ready);
        assert!(info.last_sync.read().unwrap().is_some());
        report(SyncEvent::Failed {
            reason: "vault unreachable: x".into(),
            first: false,
        });
        assert!(matches!(
            state.health(),
            Health::Degraded { reason, .. } if reason == "vault unreachable: x"
        ));
        report(SyncEvent::Synced { revision: 4 });
        assert_eq!(state.health(), Health::Ready);
    }
}
