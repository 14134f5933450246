//! The agent's in-memory, versioned secret table with grace timers: pure logic, no I/O.
//!
//! Each secret has a current version and, while its grace period runs, the previous one.
//! Readers that open a secret get a handle pinned to the version they opened; a handle keeps
//! reading that version while it is current or in grace, and is stale afterwards. Values are
//! dropped (and so zeroized, see [`Secret`]) the moment they leave the table: on grace expiry,
//! on revoke, on replacement. Time is always passed in (`now`), so the logic is deterministic
//! and property-tested against a simple model.
//!
//! Only one previous version is kept per secret (the vault's sync feed reports one): a second
//! rotation inside the grace period ends the older version's grace at once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use crate::secret::Secret;

/// What the vault says about one secret, with values already opened.
#[derive(Debug)]
pub struct Update {
    pub name: String,
    pub version: u64,
    pub state: UpdateState,
    pub updated_at: SystemTime,
}

#[derive(Debug)]
pub enum UpdateState {
    Active {
        value: Secret,
        /// The previous version while its grace period runs: (version, value, time left).
        previous: Option<(u64, Secret, Duration)>,
    },
    Revoked,
    /// Listed by the vault but not usable here (its value could not be opened): the view keeps
    /// what it holds for the secret, and a full answer does not drop it as unlisted.
    Unopened,
}

/// A change the view made, for the adapters to act on (cache invalidation, events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A secret the view did not hold appeared.
    Added { name: String, version: u64 },
    /// A new current version replaced an older one.
    Rotated {
        name: String,
        version: u64,
        previous: u64,
        /// The replaced version stays readable as the previous one for its grace period
        /// (decided when the change was applied: the socket's `rotated` vs `updated`).
        in_grace: bool,
    },
    /// The secret is gone: revoked upstream, or absent from a full sync.
    Revoked { name: String, version: u64 },
    /// The previous version's grace period ended.
    PreviousExpired { name: String, version: u64 },
    /// An update carried a version older than one already served; it was ignored.
    RefusedRollback {
        name: String,
        offered: u64,
        held: u64,
    },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Added { name, .. }
            | Change::Rotated { name, .. }
            | Change::Revoked { name, .. }
            | Change::PreviousExpired { name, .. }
            | Change::RefusedRollback { name, .. } => name,
        }
    }
}

/// Which version of a secret to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    Previous,
}

/// Facts about one readable version (no value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub version: u64,
    pub len: usize,
    pub updated_at: SystemTime,
}

/// An open reader's handle.
pub type HandleId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The handle is unknown (never opened or already closed).
    #[error("no such handle")]
    BadHandle,
    /// The pinned version's grace ended or the secret was revoked.
    #[error("the version this handle was opened on is no longer readable")]
    Stale,
}

#[derive(Debug)]
struct Stored {
    version: u64,
    value: Secret,
    updated_at: SystemTime,
}

impl Stored {
    fn meta(&self) -> Meta {
        Meta {
            version: self.version,
            len: self.value.len(),
            updated_at: self.updated_at,
        }
    }
}

#[derive(Debug)]
struct Entry {
    current: Stored,
    previous: Option<(Stored, Instant)>,
}

impl Entry {
    fn previous_live(&self, now: Instant) -> Option<&Stored> {
        match &self.previous {
            Some((s, deadline)) if now < *deadline => Some(s),
            _ => None,
        }
    }

    /// The value of `version` if it is current or in grace.
    fn readable(&self, version: u64, now: Instant) -> Option<&Stored> {
        if self.current.version == version {
            Some(&self.current)
        } else {
            self.previous_live(now).filter(|s| s.version == version)
        }
    }
}

#[derive(Debug)]
enum Handle {
    /// Pinned to one version of one secret.
    Secret { name: String, version: u64 },
    /// A rendered snapshot (e.g. `.env`) of several pinned versions; stale as soon as any of
    /// them is no longer readable.
    Snapshot {
        pins: Vec<(String, u64)>,
        content: Secret,
    },
}

/// The table. Wrap it in a lock to share it; every method is short and does no I/O.
#[derive(Debug, Default)]
pub struct View {
    secrets: BTreeMap<String, Entry>,
    /// Highest version ever seen per name and whether that version was revoked (or dropped by
    /// a full sync), kept after revoke, for rollback protection: a version lower than the
    /// highest, or a revoked version offered as active again, is refused.
    highest: HashMap<String, (u64, bool)>,
    handles: HashMap<HandleId, Handle>,
    next_handle: HandleId,
    revision: u64,
}

impl View {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest version seen of every name and whether it was revoked: the rollback floor
    /// (kept in the offline cache, so that it survives restarts).
    pub fn highest(&self) -> impl Iterator<Item = (&str, u64, bool)> {
        self.highest.iter().map(|(n, (v, r))| (n.as_str(), *v, *r))
    }

    /// Raises the rollback floor of `name` to `version` (from the offline cache at start).
    pub fn remember(&mut self, name: &str, version: u64, revoked: bool) {
        let e = self.highest.entry(name.to_owned()).or_insert((0, false));
        if version > e.0 {
            *e = (version, revoked);
        } else if version == e.0 {
            e.1 |= revoked;
        }
    }

    /// Forgets the rollback floor of `names` (every name with `None`): an operator accepted a
    /// deliberate vault restore, so the next answer's versions are taken as they are.
    pub fn forget(&mut self, names: Option<&[String]>) {
        match names {
            None => self.highest.clear(),
            Some(names) => {
                for n in names {
                    self.highest.remove(n);
                }
            }
        }
    }

    /// The vault revision the view is synced to (0 before the first sync).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of secrets currently readable.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Applies one sync answer. With `full`, any secret not listed is dropped (as revoked).
    pub fn apply(
        &mut self,
        revision: u64,
        full: bool,
        updates: Vec<Update>,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if full {
            let listed: std::collections::HashSet<&str> =
                updates.iter().map(|u| u.name.as_str()).collect();
            let gone: Vec<String> = self
                .secrets
                .keys()
                .filter(|n| !listed.contains(n.as_str()))
                .cloned()
                .collect();
            for name in gone {
                if let Some(e) = self.secrets.remove(&name) {
                    self.highest.insert(name.clone(), (e.current.version, true));
                    changes.push(Change::Revoked {
                        name,
                        version: e.current.version,
                    });
                }
            }
        }
        for u in updates {
            self.apply_one(u, now, &mut changes);
        }
        self.revision = self.revision.max(revision);
        changes.extend(self.expire(now));
        changes
    }

    fn apply_one(&mut self, u: Update, now: Instant, changes: &mut Vec<Change>) {
        if matches!(u.state, UpdateState::Unopened) {
            return;
        }
        let (held, revoked) = self.highest.get(&u.name).copied().unwrap_or((0, false));
        let active = matches!(u.state, UpdateState::Active { .. });
        if u.version < held || (u.version == held && revoked) {
            // A revoke repeated for the revoked version is no news; anything else is a rollback
            // (an older version, or a revoked version offered as active again).
            if u.version < held || active {
                changes.push(Change::RefusedRollback {
                    name: u.name,
                    offered: u.version,
                    held,
                });
            }
            return;
        }
        self.highest.insert(u.name.clone(), (u.version, !active));
        match u.state {
            UpdateState::Unopened => {}
            UpdateState::Revoked => {
                if let Some(e) = self.secrets.remove(&u.name) {
                    changes.push(Change::Revoked {
                        name: u.name,
                        version: e.current.version.max(u.version),
                    });
                }
            }
            UpdateState::Active { value, previous } => {
                let stored = Stored {
                    version: u.version,
                    value,
                    updated_at: u.updated_at,
                };
                let prev = previous.map(|(version, value, left)| {
                    (
                        Stored {
                            version,
                            value,
                            updated_at: u.updated_at,
                        },
                        now + left,
                    )
                });
                match self.secrets.get_mut(&u.name) {
                    None => {
                        changes.push(Change::Added {
                            name: u.name.clone(),
                            version: u.version,
                        });
                        self.secrets.insert(
                            u.name,
                            Entry {
                                current: stored,
                                previous: prev.filter(|(p, _)| p.version < u.version),
                            },
                        );
                    }
                    Some(e) if e.current.version == u.version => {
                        // Same version again (e.g. a resync): keep the values we hold and take
                        // the vault's word on the grace of the previous version we hold. A
                        // previous the vault no longer lists has ended its grace: report it like
                        // an expiry. A previous we do not hold (any more) is not brought back:
                        // its grace already ended here, and its value is zeroized.
                        let new_deadline = prev
                            .filter(|(p, _)| p.version < u.version)
                            .map(|(p, d)| (p.version, d));
                        match (e.previous.take(), new_deadline) {
                            (Some((held, _)), Some((v, d))) if held.version == v => {
                                e.previous = Some((held, d));
                            }
                            (Some((held, _)), _) => changes.push(Change::PreviousExpired {
                                name: u.name.clone(),
                                version: held.version,
                            }),
                            (None, _) => {}
                        }
                    }
                    Some(e) => {
                        let old = e.current.version;
                        let prev = prev.filter(|(p, _)| p.version < u.version);
                        // Keep the value we already hold for the previous version when the vault
                        // names it, else take the vault's copy.
                        let new_prev = match prev {
                            Some((p, deadline)) if p.version == old => {
                                let held = std::mem::replace(&mut e.current, stored);
                                Some((held, deadline))
                            }
                            other => {
                                e.current = stored;
                                other
                            }
                        };
                        let in_grace = new_prev
                            .as_ref()
                            .is_some_and(|(p, deadline)| p.version == old && now < *deadline);
                        e.previous = new_prev;
                        changes.push(Change::Rotated {
                            name: u.name,
                            version: u.version,
                            previous: old,
                            in_grace,
                        });
                    }
                }
            }
        }
    }

    /// Drops every previous version whose grace has ended; returns what expired.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, e) in self.secrets.iter_mut() {
            if let Some((p, deadline)) = &e.previous
                && now >= *deadline
            {
                changes.push(Change::PreviousExpired {
                    name: name.clone(),
                    version: p.version,
                });
                e.previous = None;
            }
        }
        self.drop_stale_snapshots(now);
        changes
    }

    /// When the next grace period ends, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.secrets
            .values()
            .filter_map(|e| e.previous.as_ref().map(|(_, d)| *d))
            .min()
    }

    /// Facts about a secret's current or (in grace) previous version.
    pub fn meta(&self, name: &str, which: Which, now: Instant) -> Option<Meta> {
        let e = self.secrets.get(name)?;
        match which {
            Which::Current => Some(e.current.meta()),
            Which::Previous => e.previous_live(now).map(Stored::meta),
        }
    }

    /// The value of a secret's current or (in grace) previous version, for one-shot reads.
    pub fn get(&self, name: &str, which: Which, now: Instant) -> Option<(Meta, &Secret)> {
        let e = self.secrets.get(name)?;
        let s = match which {
            Which::Current => &e.current,
            Which::Previous => e.previous_live(now)?,
        };
        Some((s.meta(), &s.value))
    }

    /// Every readable secret, in name order.
    pub fn list(&self) -> impl Iterator<Item = (&str, Meta)> {
        self.secrets
            .iter()
            .map(|(n, e)| (n.as_str(), e.current.meta()))
    }

    /// Every secret whose previous version is in grace, in name order.
    pub fn list_previous(&self, now: Instant) -> impl Iterator<Item = (&str, Meta)> {
        self.secrets
            .iter()
            .filter_map(move |(n, e)| e.previous_live(now).map(|p| (n.as_str(), p.meta())))
    }

    /// Opens a reader pinned to the version that is current (or previous) now.
    pub fn open(&mut self, name: &str, which: Which, now: Instant) -> Option<(HandleId, Meta)> {
        let meta = self.meta(name, which, now)?;
        let id = self.new_handle(Handle::Secret {
            name: name.to_owned(),
            version: meta.version,
        });
        Some((id, meta))
    }

    /// Opens a snapshot rendered from the current versions of the secrets `include` accepts;
    /// `render` gets them in name order and returns the content.
    pub fn open_snapshot(
        &mut self,
        include: impl Fn(&str) -> bool,
        render: impl FnOnce(&[(&str, &Secret)]) -> Secret,
    ) -> (HandleId, usize) {
        let chosen: Vec<(&str, &Stored)> = self
            .secrets
            .iter()
            .filter(|(n, _)| include(n))
            .map(|(n, e)| (n.as_str(), &e.current))
            .collect();
        let pins = chosen
            .iter()
            .map(|(n, s)| ((*n).to_owned(), s.version))
            .collect();
        let values: Vec<(&str, &Secret)> = chosen.iter().map(|(n, s)| (*n, &s.value)).collect();
        let content = render(&values);
        let len = content.len();
        (self.new_handle(Handle::Snapshot { pins, content }), len)
    }

    fn new_handle(&mut self, h: Handle) -> HandleId {
        self.next_handle += 1;
        self.handles.insert(self.next_handle, h);
        self.next_handle
    }

    /// The bytes a handle reads: the pinned version's value, or `Stale`.
    pub fn read(&self, handle: HandleId, now: Instant) -> Result<&Secret, ReadError> {
        match self.handles.get(&handle).ok_or(ReadError::BadHandle)? {
            Handle::Secret { name, version } => self
                .secrets
                .get(name)
                .and_then(|e| e.readable(*version, now))
                .map(|s| &s.value)
                .ok_or(ReadError::Stale),
            Handle::Snapshot { pins, content } => {
                if self.pins_live(pins, now) {
                    Ok(content)
                } else {
                    Err(ReadError::Stale)
                }
            }
        }
    }

    /// The version a handle is pinned to (None for snapshots and unknown handles).
    pub fn handle_version(&self, handle: HandleId) -> Option<(&str, u64)> {
        match self.handles.get(&handle)? {
            Handle::Secret { name, version } => Some((name, *version)),
            Handle::Snapshot { .. } => None,
        }
    }

    /// Closes a reader (its snapshot, if any, is zeroized).
    pub fn close(&mut self, handle: HandleId) {
        self.handles.remove(&handle);
    }

    /// Number of open handles.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    fn pins_live(&self, pins: &[(String, u64)], now: Instant) -> bool {
        pins.iter().all(|(n, v)| {
            self.secrets
                .get(n)
                .is_some_and(|e| e.readable(*v, now).is_some())
        })
    }

    /// Zeroizes snapshot contents that can no longer be read (the handle stays, stale).
    fn drop_stale_snapshots(&mut self, now: Instant) {
        let stale: Vec<HandleId> = self
            .handles
            .iter()
            .filter_map(|(id, h)| match h {
                Handle::Snapshot { pins, .. } if !self.pins_live(pins, now) => Some(*id),
                _ => None,
            })
            .collect();
        for id in stale {
            if let Some(Handle::Snapshot { pins, .. }) = self.handles.get_mut(&id) {
                let pins = std::mem::take(pins);
                // Replace the content (the old Secret is dropped and zeroized); keep the pins
                // so the handle still reads as stale.
                self.handles.insert(
                    id,
                    Handle::Snapshot {
                        pins,
                        content: Secret::default(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str, version: u64, state: UpdateState) -> Update {
        Update {
            name: name.into(),
            version,
            state,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn active(name: &str, version: u64) -> Update {
        let value = Secret::copy_from(format!("{name}{version}").as_bytes());
        update(
            name,
            version,
            UpdateState::Active {
                value,
                previous: None,
            },
        )
    }

    /// The full-answer rule lives here: a full answer drops what it does not list, and a
    /// listed secret this agent could not open is kept as it is.
    #[test]
    fn a_full_answer_keeps_listed_secrets_it_could_not_open() {
        let now = Instant::now();
        let mut v = View::new();
        v.apply(
            1,
            true,
            vec![active("A", 1), active("B", 1), active("C", 1)],
            now,
        );
        let changes = v.apply(
            2,
            true,
            vec![active("A", 2), update("B", 2, UpdateState::Unopened)],
            now,
        );
        assert_eq!(
            changes,
            [
                Change::Revoked {
                    name: "C".into(),
                    version: 1
                },
                Change::Rotated {
                    name: "A".into(),
                    version: 2,
                    previous: 1,
                    in_grace: false,
                },
            ]
        );
        let b = v.get("B", Which::Current, now).unwrap();
        assert_eq!((b.0.version, b.1.expose()), (1, &b"B1"[..]));
        assert_eq!(v.revision(), 2);
        // A later answer that opens it rotates it as usual.
        v.apply(3, false, vec![active("B", 2)], now);
        assert_eq!(v.meta("B", Which::Current, now).unwrap().version, 2);
    }

    /// Why a soak reader can fail right after a vault restart (docs/performance.md): when one
    /// answer brings two rotations at once (v1 → v3, previous v2), the vault has already ended
    /// v1's grace (only the version just replaced keeps one), so a reader pinned to v1 — opened
    /// while it was current — is stale at once.
    #[test]
    fn an_answer_that_skips_a_version_ends_the_held_current_at_once() {
        let now = Instant::now();
        let mut v = View::new();
        v.apply(1, true, vec![active("A", 1)], now);
        let (fh, _) = v.open("A", Which::Current, now).unwrap();
        let skipped = update(
            "A",
            3,
            UpdateState::Active {
                value: Secret::copy_from(b"A3"),
                previous: Some((2, Secret::copy_from(b"A2"), Duration::from_secs(60))),
            },
        );
        v.apply(3, false, vec![skipped], now);
        assert_eq!(v.read(fh, now).unwrap_err(), ReadError::Stale);
        assert_eq!(v.meta("A", Which::Previous, now).unwrap().version, 2);
    }
}
