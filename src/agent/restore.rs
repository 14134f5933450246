//! Accepting a deliberate vault restore: the operator's explicit command
//! (`fyvault agent accept-restore [--secret NAME]…`), never automatic.
//!
//! Rollback protection refuses any version older than one the agent has served, and keeps
//! refusing across restarts (the floor lives in the offline cache). When a vault really was
//! restored on purpose, the operator tells the agent to forget that floor, for the named
//! secrets or for all of them:
//!
//! - **running agent**: `POST /v1/accept-restore[?secret=A,B]` on its socket, root only. The
//!   floor is forgotten in memory, the refusals are cleared, the offline cache is rewritten
//!   without it, and the agent asks the vault for its full state at once and takes it as it is.
//! - **stopped agent**: the same on the offline cache file (`STATE_DIR/cache`), which the next
//!   start reads.
//!
//! Either way one `WARN` line is logged naming who accepted what (uid and pid), and a
//! `restore_accepted` access event is recorded and shipped to the vault's audit trail like
//! every other: at once by a running agent, at the next start for a stopped one (the cache
//! carries the acceptance until then).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::agent::cache::{self, CacheError};
use crate::agent::state::AgentState;
use crate::crypto::PrivateKey;

/// Which floors to forget: every secret's (`None`) or the named ones.
pub type Selection = Option<Vec<String>>;

/// What an accepted restore did (the socket's answer, and the offline command's report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// `"all"` or `"secrets"`.
    pub scope: String,
    /// The named secrets (empty for `all`).
    pub secrets: Vec<String>,
    /// Secrets whose older versions were being refused and are now taken: (name, offered,
    /// held) as the status showed them; empty for a stopped agent (it knows no offer).
    pub refusals_cleared: Vec<String>,
    /// Where it was applied: `running agent` or the cache file's path.
    pub applied_to: String,
}

impl Accepted {
    fn new(selection: &Selection, refusals_cleared: Vec<String>, applied_to: String) -> Self {
        Accepted {
            scope: if selection.is_some() {
                "secrets"
            } else {
                "all"
            }
            .to_owned(),
            secrets: selection.clone().unwrap_or_default(),
            refusals_cleared,
            applied_to,
        }
    }
}

/// A running agent's pending restore: set by the socket, taken by the sync loop.
#[derive(Debug, Default)]
pub struct Requests {
    pending: Mutex<Option<Selection>>,
    notify: Notify,
}

impl Requests {
    /// Queues a resync (a later request widens an earlier one not yet taken).
    fn push(&self, selection: Selection) {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *p = Some(match (p.take(), selection) {
            (Some(None), _) | (_, None) => None,
            (Some(Some(mut a)), Some(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Some(a)
            }
            (None, s) => s,
        });
        drop(p);
        self.notify.notify_one();
    }

    /// Resolves when a restore was accepted (a permit waits if none is listening).
    pub async fn requested(&self) {
        self.notify.notified().await;
    }

    /// The restore waiting for the sync loop, if any.
    pub fn take(&self) -> Option<Selection> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Parses the socket's `secret=A,B` (absent: all). Every name must be a valid secret name.
pub fn parse_selection(query: Option<&str>) -> Result<Selection, String> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "secret" {
            return Err("the only query parameter is secret=NAME[,NAME…]".into());
        }
        for n in v.split(',') {
            if !crate::api::valid_secret_name(n) {
                return Err(format!(
                    "{:?} is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)",
                    n.chars().take(140).collect::<String>()
                ));
            }
            names.push(n.to_owned());
        }
    }
    names.sort();
    names.dedup();
    Ok(Some(names))
}

/// Accepts a restore on the running agent (the socket's handler, after its root check):
/// forgets the floor, clears the refusals it covers, logs, records the event, and wakes the
/// sync loop (which rewrites the cache and asks for the full state).
pub fn accept_running(state: &AgentState, selection: Selection, uid: u32, pid: u32) -> Accepted {
    state.view.forget(selection.as_deref());
    let cleared = state.clear_rollbacks(selection.as_deref());
    let what = describe(&selection);
    tracing::warn!(
        uid,
        pid,
        "restore accepted by uid {uid} (pid {pid}) for {what}: the rollback floor is forgotten; \
         the vault's versions are taken as they are"
    );
    match &selection {
        None => state.auditor.restore_accepted(None, uid, pid),
        Some(names) => {
            for n in names {
                state.auditor.restore_accepted(Some(n), uid, pid);
            }
        }
    }
    state.restore.push(selection.clone());
    Accepted::new(&selection, cleared, "running agent".into())
}

/// Accepts a restore on a stopped agent's offline cache: its floor is forgotten for the
/// selection and the file rewritten (atomically, still sealed and MACed). `Ok` with nothing
/// changed when there is no cache.
pub fn accept_offline(
    state_dir: &std::path::Path,
    key: &PrivateKey,
    org: &str,
    env: &str,
    selection: Selection,
) -> Result<Accepted, CacheError> {
    let path = cache::path(state_dir);
    if let Some(mut c) = cache::read(state_dir, key, org, env)? {
        c.forget(selection.as_deref());
        // Merged with an acceptance not yet recorded by a start.
        let secrets = match (c.accepted_restore.take().map(|a| a.secrets), &selection) {
            (Some(None), _) | (_, None) => None,
            (Some(Some(mut a)), Some(b)) => {
                a.extend(b.iter().cloned());
                a.sort();
                a.dedup();
                Some(a)
            }
            (None, Some(b)) => Some(b.clone()),
        };
        c.accepted_restore = Some(cache::AcceptedRestore {
            at_ms: cache::now_ms(),
            secrets,
            uid: nix::unistd::geteuid().as_raw(),
            pid: std::process::id(),
        });
        cache::write(state_dir, key, org, env, &c)?;
    }
    tracing::warn!(
        "restore accepted for {} in {}: the rollback floor is forgotten",
        describe(&selection),
        path.display()
    );
    Ok(Accepted::new(
        &selection,
        Vec::new(),
        path.display().to_string(),
    ))
}

/// At start: a restore accepted while the agent was stopped (marked in the cache it read) is
/// logged and recorded as `restore_accepted` access events, like one accepted on a running
/// agent. (The keeper drops the mark from the cache it writes next.)
pub fn record_offline(state: &AgentState, c: &cache::Cache) {
    let Some(a) = &c.accepted_restore else {
        return;
    };
    let when =
        crate::rfc3339::format(std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.at_ms));
    tracing::warn!(
        "restore accepted while the agent was stopped, at {when} by uid {} (pid {}), for {}: \
         the rollback floor was forgotten",
        a.uid,
        a.pid,
        describe(&a.secrets)
    );
    match &a.secrets {
        None => state.auditor.restore_accepted(None, a.uid, a.pid),
        Some(names) => {
            for n in names {
                state.auditor.restore_accepted(Some(n), a.uid, a.pid);
            }
        }
    }
}

fn describe(selection: &Selection) -> String {
    match selection {
        None => "every secret".into(),
        Some(n) => n.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_merge() {
        assert_eq!(parse_selection(None), Ok(None));
        assert_eq!(parse_selection(Some("")), Ok(None));
        assert_eq!(
            parse_selection(Some("secret=B,A&secret=A")),
            Ok(Some(vec!["A".into(), "B".into()]))
        );
        assert!(parse_selection(Some("secret=a")).is_err());
        assert!(parse_selection(Some("secret=")).is_err());
        assert!(parse_selection(Some("all=1")).is_err());
        let r = Requests::default();
        r.push(Some(vec!["B".into()]));
        r.push(Some(vec!["A".into(), "B".into()]));
        assert_eq!(r.take(), Some(Some(vec!["A".into(), "B".into()])));
        assert_eq!(r.take(), None);
        r.push(Some(vec!["A".into()]));
        r.push(None);
        assert_eq!(r.take(), Some(None));
    }
}
