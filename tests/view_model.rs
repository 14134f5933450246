//! Property tests of the agent's view (`agent::view`) against a simple model.
//!
//! A simulated vault holds, per secret, a version counter and its state (active with an
//! optional previous version and an absolute grace deadline, or revoked). Every vault change
//! produces a sync message; a message may be delivered at once, later (replayed out of order),
//! or never (then only a full resync brings the agent up to date). The model of the agent is a
//! few lines per transition: what a reader must see. After every step, every reader's view
//! (meta, get, list, every open handle's read) and the changes the view reported must match.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use fyvault::agent::view::{Change, HandleId, ReadError, Update, UpdateState, View, Which};
use fyvault::secret::Secret;
use proptest::prelude::*;

const NAMES: [&str; 4] = ["A", "B", "C_KEY", "D"];

fn value(name: &str, version: u64) -> Vec<u8> {
    // Distinct per (name, version), and of varying lengths.
    format!("{name}:{version}:{}", "x".repeat((version % 5) as usize)).into_bytes()
}

fn updated_at(name: &str, version: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * version + name.len() as u64)
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        name: usize,
        deliver: bool,
    },
    Rotate {
        name: usize,
        grace_ms: u64,
        deliver: bool,
    },
    Revoke {
        name: usize,
        bump: bool,
        deliver: bool,
    },
    FullResync {
        list_revoked: bool,
    },
    Replay {
        name: usize,
        pick: usize,
    },
    Advance {
        ms: u64,
        expire: bool,
    },
    Open {
        name: usize,
        previous: bool,
    },
    OpenSnapshot {
        mask: u8,
    },
    Close {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        3 => (name.clone(), prop::bool::weighted(0.8)).prop_map(|(name, deliver)| Op::Push { name, deliver }),
        4 => (name.clone(), prop::sample::select(vec![0u64, 5, 10, 30, 100]), prop::bool::weighted(0.8))
            .prop_map(|(name, grace_ms, deliver)| Op::Rotate { name, grace_ms, deliver }),
        1 => (name.clone(), any::<bool>(), prop::bool::weighted(0.8))
            .prop_map(|(name, bump, deliver)| Op::Revoke { name, bump, deliver }),
        1 => any::<bool>().prop_map(|list_revoked| Op::FullResync { list_revoked }),
        1 => (name.clone(), any::<usize>()).prop_map(|(name, pick)| Op::Replay { name, pick }),
        3 => (0u64..40, any::<bool>()).prop_map(|(ms, expire)| Op::Advance { ms, expire }),
        3 => (name, any::<bool>()).prop_map(|(name, previous)| Op::Open { name, previous }),
        1 => any::<u8>().prop_map(|mask| Op::OpenSnapshot { mask }),
        2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
    ]
}

// ------------------------------------------------------------------------------------------
// The simulated vault.

#[derive(Debug, Clone, Copy)]
enum MsgKind {
    /// Current version, previous (version, absolute deadline in ms) if any.
    Active {
        prev: Option<(u64, u64)>,
    },
    Revoked,
}

#[derive(Debug, Clone, Copy)]
struct Msg {
    name: usize,
    revision: u64,
    version: u64,
    kind: MsgKind,
}

#[derive(Debug, Default)]
struct VaultSim {
    revision: u64,
    /// Per name: last version number used, and the current message describing its state.
    secrets: HashMap<usize, (u64, Msg)>,
    log: HashMap<usize, Vec<Msg>>,
}

impl VaultSim {
    fn record(&mut self, m: Msg) -> Msg {
        self.secrets.insert(m.name, (m.version, m));
        self.log.entry(m.name).or_default().push(m);
        m
    }

    fn push(&mut self, name: usize) -> Msg {
        self.revision += 1;
        let version = self.secrets.get(&name).map_or(0, |(v, _)| *v) + 1;
        self.record(Msg {
            name,
            revision: self.revision,
            version,
            kind: MsgKind::Active { prev: None },
        })
    }

    fn rotate(&mut self, name: usize, grace_ms: u64, now: u64) -> Msg {
        let prev = match self.secrets.get(&name) {
            Some((
                _,
                Msg {
                    version,
                    kind: MsgKind::Active { .. },
                    ..
                },
            )) if grace_ms > 0 => Some((*version, now + grace_ms)),
            _ => None,
        };
        self.revision += 1;
        let version = self.secrets.get(&name).map_or(0, |(v, _)| *v) + 1;
        self.record(Msg {
            name,
            revision: self.revision,
            version,
            kind: MsgKind::Active { prev },
        })
    }

    fn revoke(&mut self, name: usize, bump: bool) -> Option<Msg> {
        let (last, _) = *self.secrets.get(&name)?;
        self.revision += 1;
        Some(self.record(Msg {
            name,
            revision: self.revision,
            version: if bump { last + 1 } else { last },
            kind: MsgKind::Revoked,
        }))
    }

    fn full(&self, list_revoked: bool) -> Vec<Msg> {
        let mut v: Vec<Msg> = self
            .secrets
            .values()
            .map(|(_, m)| *m)
            .filter(|m| list_revoked || matches!(m.kind, MsgKind::Active { .. }))
            .collect();
        v.sort_by_key(|m| m.name);
        v
    }
}

fn to_update(m: &Msg, now: u64) -> Update {
    let name = NAMES[m.name];
    Update {
        name: name.to_owned(),
        version: m.version,
        state: match m.kind {
            MsgKind::Revoked => UpdateState::Revoked,
            MsgKind::Active { prev } => UpdateState::Active {
                value: Secret::new(value(name, m.version)),
                previous: prev.filter(|(_, d)| *d > now).map(|(pv, d)| {
                    (
                        pv,
                        Secret::new(value(name, pv)),
                        Duration::from_millis(d - now),
                    )
                }),
            },
        },
        updated_at: updated_at(name, m.version),
    }
}

// ------------------------------------------------------------------------------------------
// The model of the agent.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MSecret {
    cur: u64,
    /// (version, absolute deadline ms); kept until the expiry step drops it.
    prev: Option<(u64, u64)>,
}

#[derive(Debug)]
enum MHandle {
    Secret {
        name: usize,
        version: u64,
    },
    Snapshot {
        pins: Vec<(usize, u64)>,
        content: Vec<u8>,
        /// Once a pin was unreadable, the snapshot stays stale.
        stale: bool,
    },
}

#[derive(Debug, Default)]
struct Model {
    held: BTreeMap<usize, MSecret>,
    /// Highest version seen per name, and whether that version was revoked.
    highest: HashMap<usize, (u64, bool)>,
    revision: u64,
    handles: Vec<(HandleId, MHandle)>,
    closed: Vec<HandleId>,
}

fn ev_added(name: usize, version: u64) -> Change {
    Change::Added {
        name: NAMES[name].into(),
        version,
    }
}

impl Model {
    fn readable(&self, name: usize, version: u64, now: u64) -> bool {
        self.held.get(&name).is_some_and(|s| {
            s.cur == version || s.prev.is_some_and(|(pv, d)| pv == version && now < d)
        })
    }

    fn live_prev(&self, name: usize, now: u64) -> Option<u64> {
        self.held
            .get(&name)?
            .prev
            .filter(|(_, d)| now < *d)
            .map(|(v, _)| v)
    }

    fn apply(&mut self, revision: u64, full: bool, msgs: &[Msg], now: u64) -> Vec<Change> {
        let mut out = Vec::new();
        if full {
            let listed: BTreeSet<usize> = msgs.iter().map(|m| m.name).collect();
            let gone: Vec<usize> = self
                .held
                .keys()
                .filter(|n| !listed.contains(n))
                .copied()
                .collect();
            for n in gone {
                let s = self.held.remove(&n).unwrap();
                self.highest.insert(n, (s.cur, true));
                out.push(Change::Revoked {
                    name: NAMES[n].into(),
                    version: s.cur,
                });
            }
        }
        for m in msgs {
            self.apply_one(m, now, &mut out);
        }
        self.revision = self.revision.max(revision);
        out.extend(self.expire(now));
        out
    }

    fn apply_one(&mut self, m: &Msg, now: u64, out: &mut Vec<Change>) {
        let name = NAMES[m.name];
        let (hv, revoked) = self.highest.get(&m.name).copied().unwrap_or((0, false));
        let active = matches!(m.kind, MsgKind::Active { .. });
        if m.version < hv || (m.version == hv && revoked) {
            if m.version < hv || active {
                out.push(Change::RefusedRollback {
                    name: name.into(),
                    offered: m.version,
                    held: hv,
                });
            }
            return;
        }
        self.highest.insert(m.name, (m.version, !active));
        match m.kind {
            MsgKind::Revoked => {
                if let Some(s) = self.held.remove(&m.name) {
                    out.push(Change::Revoked {
                        name: name.into(),
                        version: s.cur.max(m.version),
                    });
                }
            }
            MsgKind::Active { prev } => {
                let prev = prev.filter(|(_, d)| *d > now);
                match self.held.get_mut(&m.name) {
                    None => {
                        out.push(ev_added(m.name, m.version));
                        self.held.insert(
                            m.name,
                            MSecret {
                                cur: m.version,
                                prev,
                            },
                        );
                    }
                    Some(s) if s.cur == m.version => {
                        // Only the previous we still hold keeps (or changes) its deadline.
                        s.prev = match (s.prev, prev) {
                            (Some((old, _)), Some((p, d))) if p == old => Some((old, d)),
                            (Some((old, _)), _) => {
                                out.push(Change::PreviousExpired {
                                    name: name.into(),
                                    version: old,
                                });
                                None
                            }
                            (None, _) => None,
                        };
                    }
                    Some(s) => {
                        out.push(Change::Rotated {
                            name: name.into(),
                            version: m.version,
                            previous: s.cur,
                            in_grace: prev.is_some_and(|(pv, _)| pv == s.cur),
                        });
                        *s = MSecret {
                            cur: m.version,
                            prev,
                        };
                    }
                }
            }
        }
    }

    fn expire(&mut self, now: u64) -> Vec<Change> {
        let mut out = Vec::new();
        for (n, s) in self.held.iter_mut() {
            if let Some((pv, d)) = s.prev
                && now >= d
            {
                out.push(Change::PreviousExpired {
                    name: NAMES[*n].into(),
                    version: pv,
                });
                s.prev = None;
            }
        }
        out
    }

    /// Marks snapshots whose pins are no longer readable as stale for good.
    fn settle_snapshots(&mut self, now: u64) {
        let stale_now: Vec<bool> = self
            .handles
            .iter()
            .map(|(_, h)| match h {
                MHandle::Snapshot { pins, .. } => {
                    !pins.iter().all(|(n, v)| self.readable(*n, *v, now))
                }
                MHandle::Secret { .. } => false,
            })
            .collect();
        for ((_, h), s) in self.handles.iter_mut().zip(stale_now) {
            if let MHandle::Snapshot { stale, .. } = h {
                *stale |= s;
            }
        }
    }
}

fn sorted(mut v: Vec<Change>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|c| format!("{c:?}")).collect();
    s.sort();
    s
}

fn render(items: &[(&str, &Secret)]) -> Secret {
    let mut out = Vec::new();
    for (n, v) in items {
        out.extend_from_slice(n.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.expose());
        out.push(b'\n');
    }
    Secret::new(out)
}

fn model_render(model: &Model, include: &[usize]) -> (Vec<(usize, u64)>, Vec<u8>) {
    let mut pins = Vec::new();
    let mut out = Vec::new();
    // The view renders in name order; NAMES is sorted.
    for (n, s) in &model.held {
        if include.contains(n) {
            pins.push((*n, s.cur));
            out.extend_from_slice(NAMES[*n].as_bytes());
            out.push(b'=');
            out.extend_from_slice(&value(NAMES[*n], s.cur));
            out.push(b'\n');
        }
    }
    (pins, out)
}

/// Everything a reader can observe must match the model.
fn check(view: &View, model: &Model, base: Instant, now: u64) -> Result<(), TestCaseError> {
    let t = base + Duration::from_millis(now);
    prop_assert_eq!(view.revision(), model.revision);
    prop_assert_eq!(view.len(), model.held.len());
    for (i, name) in NAMES.iter().enumerate() {
        let cur = model.held.get(&i).map(|s| s.cur);
        let got = view.get(name, Which::Current, t);
        prop_assert_eq!(got.map(|(m, _)| m.version), cur, "current of {}", name);
        if let (Some((meta, val)), Some(v)) = (got, cur) {
            prop_assert_eq!(val.expose(), &value(name, v)[..]);
            prop_assert_eq!(meta.len, val.len());
            prop_assert_eq!(meta.updated_at, updated_at(name, v));
            prop_assert_eq!(view.meta(name, Which::Current, t), Some(meta));
        }
        let prev = model.live_prev(i, now);
        let got = view.get(name, Which::Previous, t);
        prop_assert_eq!(got.map(|(m, _)| m.version), prev, "previous of {}", name);
        if let (Some((meta, val)), Some(v)) = (got, prev) {
            prop_assert_eq!(val.expose(), &value(name, v)[..]);
            prop_assert_eq!(meta.len, val.len());
        }
        prop_assert_eq!(view.meta(name, Which::Previous, t).map(|m| m.version), prev);
    }
    let listed: Vec<(String, u64)> = view
        .list()
        .map(|(n, m)| (n.to_owned(), m.version))
        .collect();
    let expected: Vec<(String, u64)> = model
        .held
        .iter()
        .map(|(n, s)| (NAMES[*n].to_owned(), s.cur))
        .collect();
    prop_assert_eq!(listed, expected);
    let listed_prev: Vec<(String, u64)> = view
        .list_previous(t)
        .map(|(n, m)| (n.to_owned(), m.version))
        .collect();
    let expected_prev: Vec<(String, u64)> = model
        .held
        .keys()
        .filter_map(|n| model.live_prev(*n, now).map(|v| (NAMES[*n].to_owned(), v)))
        .collect();
    prop_assert_eq!(listed_prev, expected_prev);

    prop_assert_eq!(view.open_handles(), model.handles.len());
    for (id, h) in &model.handles {
        let got = view.read(*id, t).map(|s| s.expose().to_vec());
        match h {
            MHandle::Secret { name, version } => {
                let expected = if model.readable(*name, *version, now) {
                    Ok(value(NAMES[*name], *version))
                } else {
                    Err(ReadError::Stale)
                };
                prop_assert_eq!(
                    got,
                    expected,
                    "handle {} on {} v{}",
                    id,
                    NAMES[*name],
                    version
                );
                prop_assert_eq!(view.handle_version(*id), Some((NAMES[*name], *version)));
            }
            MHandle::Snapshot { content, stale, .. } => {
                let expected = if *stale {
                    Err(ReadError::Stale)
                } else {
                    Ok(content.clone())
                };
                prop_assert_eq!(got, expected, "snapshot {}", id);
            }
        }
    }
    for id in &model.closed {
        prop_assert_eq!(view.read(*id, t).err(), Some(ReadError::BadHandle));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let base = Instant::now();
    let mut now: u64 = 0;
    let mut vault = VaultSim::default();
    let mut view = View::new();
    let mut model = Model::default();

    for op in ops {
        let t = base + Duration::from_millis(now);
        let deliver = |msgs: Vec<Msg>,
                       revision: u64,
                       full: bool,
                       view: &mut View,
                       model: &mut Model|
         -> Result<(), TestCaseError> {
            let updates = msgs.iter().map(|m| to_update(m, now)).collect();
            let got = view.apply(revision, full, updates, t);
            let expected = model.apply(revision, full, &msgs, now);
            prop_assert_eq!(sorted(got), sorted(expected));
            Ok(())
        };
        match op {
            Op::Push { name, deliver: d } => {
                let m = vault.push(name);
                if d {
                    deliver(vec![m], m.revision, false, &mut view, &mut model)?;
                }
            }
            Op::Rotate {
                name,
                grace_ms,
                deliver: d,
            } => {
                let m = vault.rotate(name, grace_ms, now);
                if d {
                    deliver(vec![m], m.revision, false, &mut view, &mut model)?;
                }
            }
            Op::Revoke {
                name,
                bump,
                deliver: d,
            } => {
                if let Some(m) = vault.revoke(name, bump)
                    && d
                {
                    deliver(vec![m], m.revision, false, &mut view, &mut model)?;
                }
            }
            Op::FullResync { list_revoked } => {
                let msgs = vault.full(list_revoked);
                deliver(msgs, vault.revision, true, &mut view, &mut model)?;
            }
            Op::Replay { name, pick } => {
                if let Some(log) = vault.log.get(&name) {
                    let m = log[pick % log.len()];
                    deliver(vec![m], m.revision, false, &mut view, &mut model)?;
                }
            }
            Op::Advance { ms, expire } => {
                now += ms;
                if expire {
                    let t = base + Duration::from_millis(now);
                    let got = view.expire(t);
                    let expected = model.expire(now);
                    prop_assert_eq!(sorted(got), sorted(expected));
                }
            }
            Op::Open { name, previous } => {
                let which = if previous {
                    Which::Previous
                } else {
                    Which::Current
                };
                let expected = if previous {
                    model.live_prev(name, now)
                } else {
                    model.held.get(&name).map(|s| s.cur)
                };
                let got = view.open(NAMES[name], which, t);
                prop_assert_eq!(got.map(|(_, m)| m.version), expected);
                if let (Some((id, _)), Some(version)) = (got, expected) {
                    model.handles.push((id, MHandle::Secret { name, version }));
                }
            }
            Op::OpenSnapshot { mask } => {
                let include: Vec<usize> =
                    (0..NAMES.len()).filter(|i| mask & (1 << i) != 0).collect();
                let inc = include.clone();
                let (id, len) =
                    view.open_snapshot(move |n| inc.iter().any(|i| NAMES[*i] == n), render);
                let (pins, content) = model_render(&model, &include);
                prop_assert_eq!(len, content.len());
                model.handles.push((
                    id,
                    MHandle::Snapshot {
                        pins,
                        content,
                        stale: false,
                    },
                ));
            }
            Op::Close { pick } => {
                if !model.handles.is_empty() {
                    let (id, _) = model.handles.remove(pick % model.handles.len());
                    view.close(id);
                    model.closed.push(id);
                }
            }
        }
        model.settle_snapshots(now);
        check(&view, &model, base, now)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn view_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

/// A revoked version stays revoked: an old message (or a vault restored from a backup taken
/// before the revoke) offering the same version as active again is refused.
#[test]
fn revoked_version_is_not_resurrected() {
    let ops = vec![
        Op::Push {
            name: 0,
            deliver: true,
        },
        Op::Revoke {
            name: 0,
            bump: false,
            deliver: true,
        },
        Op::Replay { name: 0, pick: 0 },
    ];
    run(ops).unwrap();
}

/// A resync that no longer lists a previous version (its grace ended upstream) reports the
/// previous as expired, so adapters drop it from `.previous/` at once.
#[test]
fn resync_dropping_previous_reports_expiry() {
    let ops = vec![
        Op::Push {
            name: 1,
            deliver: true,
        },
        Op::Rotate {
            name: 1,
            grace_ms: 10,
            deliver: true,
        },
        Op::Advance {
            ms: 10,
            expire: false,
        },
        Op::FullResync {
            list_revoked: false,
        },
    ];
    run(ops).unwrap();
}
