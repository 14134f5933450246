//! The coalescer behind [`super::Auditor::record`]: identical accesses (same action, secret,
//! version, via, uid, exe and unit) add to one entry's `count`; the entry keeps the *first*
//! access's time, pid and gid. At most `max` distinct entries are held; an access that would
//! need one more is counted as overflow and reported as one `dropped` event. Pure in-memory
//! work, behind the auditor's short mutex; the writer thread [`Pending::take`]s the events.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::agent::access::Caller;
use crate::api::{AccessAction, AccessEvent, AccessVia, valid_secret_name};
use crate::rfc3339;

/// Longest unit name, executable path and host name kept in an event (longer ones are cut at a
/// character boundary).
const MAX_NAME_BYTES: usize = 1024;
const MAX_EXE_BYTES: usize = 4096;
pub(super) const MAX_HOST_BYTES: usize = 255;

/// The coalescing key: what makes two accesses "identical".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    action: AccessAction,
    /// `None` for a name that is not a valid secret name (a probe refused before any lookup):
    /// the vault refuses such names, and the access is still counted.
    secret: Option<String>,
    version: Option<u64>,
    /// `None` only for `undeliverable` (no process involved: no process fields are shipped).
    via: Option<AccessVia>,
    uid: u32,
    exe: Option<String>,
    unit: Option<String>,
    /// `undeliverable` only.
    reason: Option<&'static str>,
    /// A read of one app user's value (user-vault secrets).
    user: Option<String>,
}

impl Key {
    /// The key of one access, its fields made acceptable to the vault.
    pub(super) fn of(
        caller: &Caller,
        action: AccessAction,
        secret: &str,
        version: Option<u64>,
        via: AccessVia,
    ) -> Key {
        Key {
            action,
            secret: valid_secret_name(secret).then(|| secret.to_owned()),
            version,
            via: Some(via),
            uid: caller.uid,
            exe: caller
                .exe
                .as_ref()
                .map(|p| printable(&p.to_string_lossy(), MAX_EXE_BYTES)),
            unit: caller.unit.as_deref().map(|u| printable(u, MAX_NAME_BYTES)),
            reason: None,
            user: None,
        }
    }

    /// The key of an `undeliverable` report: a version this agent cannot open, and why.
    pub(super) fn undeliverable(secret: &str, version: u64, reason: &'static str) -> Key {
        Key {
            action: AccessAction::Undeliverable,
            secret: valid_secret_name(secret).then(|| secret.to_owned()),
            version: Some(version),
            via: None,
            uid: 0,
            exe: None,
            unit: None,
            reason: Some(reason),
            user: None,
        }
    }

    /// This key for a read of `user`'s value (an app user id, already checked by the reader).
    pub(super) fn for_user(self, user: Option<&str>) -> Key {
        Key {
            user: user.map(str::to_owned),
            ..self
        }
    }
}

impl Key {
    /// The key of a `restore_accepted` report: `secret` (none: every secret), and the
    /// operator's uid (its pid travels as the first access's).
    pub(super) fn restore_accepted(secret: Option<&str>, uid: u32) -> Key {
        Key {
            action: AccessAction::RestoreAccepted,
            secret: secret.filter(|s| valid_secret_name(s)).map(str::to_owned),
            version: None,
            via: None,
            uid,
            exe: None,
            unit: None,
            reason: None,
            user: None,
        }
    }
}

/// One coalesced event: the first access's time, pid and gid, and how many accesses.
#[derive(Debug, Clone, Copy)]
struct Agg {
    time: SystemTime,
    pid: u32,
    gid: u32,
    count: u64,
}

/// The accesses recorded since the last [`take`](Pending::take).
#[derive(Debug, Default)]
pub(super) struct Pending {
    map: HashMap<Key, Agg>,
    /// Accesses refused for lack of room in `map`, not yet reported.
    overflow: u64,
}

impl Pending {
    /// Counts one access at `now`; false when there was no room for a new entry (the access
    /// is then counted in the overflow).
    pub(super) fn add(&mut self, key: Key, caller: &Caller, now: SystemTime, max: usize) -> bool {
        let room = self.map.len() < max;
        match self.map.get_mut(&key) {
            Some(agg) => agg.count += 1,
            None if room => {
                self.map.insert(
                    key,
                    Agg {
                        time: now,
                        pid: caller.pid,
                        gid: caller.gid,
                        count: 1,
                    },
                );
            }
            None => {
                self.overflow += 1;
                return false;
            }
        }
        true
    }

    /// Events waiting (the overflow counts as one).
    pub(super) fn events(&self) -> u64 {
        self.map.len() as u64 + u64::from(self.overflow > 0)
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty() && self.overflow == 0
    }

    /// Empties the coalescer: its events, oldest first, then one `dropped` event for the
    /// overflow.
    pub(super) fn take(&mut self) -> Vec<AccessEvent> {
        let mut aggs: Vec<(Key, Agg)> = std::mem::take(&mut self.map).into_iter().collect();
        aggs.sort_by_key(|(_, a)| a.time);
        let mut events: Vec<AccessEvent> = aggs.into_iter().map(|(k, a)| to_event(k, a)).collect();
        let overflow = std::mem::take(&mut self.overflow);
        if overflow > 0 {
            events.push(AccessEvent::dropped(0, overflow));
        }
        events
    }
}

/// `s` with control characters shown as `?`, cut to at most `max` bytes at a character
/// boundary (what the vault accepts for `exe`, `unit` and `host`).
pub(super) fn printable(s: &str, max: usize) -> String {
    // The common case (on every recorded access): plain ASCII, short enough.
    if s.len() <= max && s.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn to_event(k: Key, a: Agg) -> AccessEvent {
    // A process is involved only in reads and denials (they have `via`) and in an operator's
    // accepted restore.
    let process = k.via.is_some() || k.action == AccessAction::RestoreAccepted;
    AccessEvent {
        seq: 0,
        time: rfc3339::format(a.time),
        action: k.action,
        secret: k.secret,
        version: k.version,
        via: k.via,
        pid: process.then_some(a.pid),
        uid: process.then_some(k.uid),
        gid: process.then_some(a.gid),
        exe: k.exe,
        unit: k.unit,
        count: a.count,
        reason: k.reason.map(str::to_owned),
        user_id: k.user,
    }
}

/// A caller for tests: uid/gid 1000, `/usr/bin/app`.
#[cfg(test)]
pub(super) fn test_caller(pid: u32) -> Caller {
    Caller {
        uid: 1000,
        gid: 1000,
        pid,
        groups: vec![],
        exe: Some("/usr/bin/app".into()),
        unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(pid: u32) -> Caller {
        Caller {
            exe: Some("/usr/bin/app\n".into()),
            ..test_caller(pid)
        }
    }

    #[test]
    fn fields_are_made_acceptable_to_the_vault() {
        assert_eq!(printable("abc", 5), "abc");
        assert_eq!(printable("abcdef", 3), "abc");
        assert_eq!(printable("aé", 2), "a");
        assert_eq!(printable("a\nb\u{7f}c", 10), "a?b?c");
    }

    #[test]
    fn identical_accesses_coalesce_and_overflow_is_one_dropped_event() {
        let mut p = Pending::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let key = |name: &str| {
            Key::of(
                &caller(1),
                AccessAction::Accessed,
                name,
                Some(1),
                AccessVia::Fuse,
            )
        };
        assert!(p.add(key("A"), &caller(7), t0, 2));
        assert!(p.add(key("A"), &caller(8), t0, 2));
        assert!(p.add(key("../x"), &caller(9), t0, 2));
        assert!(!p.add(key("B"), &caller(9), t0, 2), "no room for a third");
        assert_eq!(p.events(), 3);
        let events = p.take();
        assert!(p.is_empty());
        let a = events
            .iter()
            .find(|e| e.secret.as_deref() == Some("A"))
            .unwrap();
        assert_eq!(
            (a.count, a.pid, a.exe.as_deref()),
            (2, Some(7), Some("/usr/bin/app?"))
        );
        assert!(
            events
                .iter()
                .any(|e| e.secret.is_none() && e.action == AccessAction::Accessed)
        );
        let d = events.last().unwrap();
        assert_eq!((d.action, d.count), (AccessAction::Dropped, 1));
    }
}
