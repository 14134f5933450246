//! The gate without mounts or sockets: a real view, a real policy, a real auditor whose
//! coalesced events are taken from memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::agent::access::{Glob, Rule};
use crate::agent::audit::{AuditConfig, Auditor};
use crate::agent::ship::Uplink;
use crate::agent::view::{Update, UpdateState};
use crate::api::{AccessEvent, AuditBatch, AuditBatchResponse};

struct Down;

impl Uplink for Down {
    type Error = String;
    async fn post(&self, _: &AuditBatch) -> Result<AuditBatchResponse, String> {
        Err("down".to_owned())
    }
}

const APP_UID: u32 = 1000;

fn caller(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        pid: 4242,
        groups: vec![],
        exe: Some(PathBuf::from("/usr/bin/app")),
        unit: None,
    }
}

fn pid1(unit: &str) -> Caller {
    Caller {
        unit: Some(unit.to_owned()),
        pid: 1,
        ..caller(0)
    }
}

fn update(name: &str, version: u64, previous: Option<u64>) -> Update {
    Update {
        name: name.into(),
        version,
        state: UpdateState::Active {
            value: Secret::copy_from(format!("{name}-v{version}").as_bytes()),
            previous: previous.map(|v| {
                (
                    v,
                    Secret::copy_from(format!("{name}-v{v}").as_bytes()),
                    Duration::from_secs(600),
                )
            }),
        },
        updated_at: SystemTime::now(),
    }
}

/// An agent state: APP_UID may read `APP_*`; `app.service` is granted `UNIT_*` as a unit.
fn state(dir: &std::path::Path) -> (Arc<AgentState>, Auditor) {
    let mut cfg = AuditConfig::new(dir, "gate-test", None);
    // Nothing leaves memory during a test: the events are taken with `take_pending`.
    cfg.coalesce_window = Duration::from_secs(3600);
    let auditor = Auditor::start(cfg, Down).unwrap();
    let policy = Policy::new(
        None,
        vec![
            Rule {
                secrets: vec![Glob::new("APP_*")],
                users: vec![APP_UID],
                ..Rule::default()
            },
            Rule {
                secrets: vec![Glob::new("UNIT_*")],
                units: vec!["app.service".into()],
                ..Rule::default()
            },
        ],
    );
    (AgentState::new(policy, auditor.clone()), auditor)
}

/// (action, secret, version, via, count)
type Seen = (AccessAction, Option<String>, Option<u64>, AccessVia, u64);

fn events(a: &Auditor) -> Vec<Seen> {
    let mut v: Vec<_> = a
        .take_pending()
        .into_iter()
        .map(|e: AccessEvent| (e.action, e.secret, e.version, e.via.unwrap(), e.count))
        .collect();
    v.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
    v
}

#[tokio::test]
async fn before_the_first_sync_absence_is_not_ready_and_not_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, audit) = state(tmp.path());
    let app = caller(APP_UID);
    let req = ReadRequest::new(&app, AccessVia::Socket, "APP_KEY");
    assert_eq!(st.gate().read(&req).unwrap_err(), Refusal::NotReady);
    assert!(events(&audit).is_empty());
}

#[tokio::test]
async fn policy_before_existence_on_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, audit) = state(tmp.path());
    st.view.apply(
        1,
        true,
        vec![update("APP_KEY", 2, None), update("DB_URL", 1, None)],
    );
    let stranger = caller(2000);
    let gate = st.gate();
    // Existing and absent names are refused alike, by every method.
    for name in ["DB_URL", "NO_SUCH"] {
        let req = ReadRequest::new(&stranger, AccessVia::Fuse, name);
        assert_eq!(gate.stat(&req).unwrap_err(), Refusal::Denied);
        assert_eq!(gate.lookup(&req).unwrap_err(), Refusal::Denied);
        assert_eq!(gate.open(&req).unwrap_err(), Refusal::Denied);
        assert_eq!(gate.read(&req).unwrap_err(), Refusal::Denied);
    }
    let ev = events(&audit);
    assert_eq!(
        ev,
        vec![
            (
                AccessAction::Denied,
                Some("DB_URL".into()),
                Some(1),
                AccessVia::Fuse,
                4
            ),
            (
                AccessAction::Denied,
                Some("NO_SUCH".into()),
                None,
                AccessVia::Fuse,
                4
            ),
        ],
        "every refusal is a denied event; none is `missing`"
    );
    assert!(gate.list(&stranger, AccessVia::Socket).is_empty());
}

#[tokio::test]
async fn allowed_reads_are_accessed_and_absent_names_are_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, audit) = state(tmp.path());
    st.view.apply(1, true, vec![update("APP_KEY", 2, Some(1))]);
    let app = caller(APP_UID);
    let gate = st.gate();
    let key = ReadRequest::new(&app, AccessVia::Socket, "APP_KEY");
    let (meta, value) = gate.read(&key).unwrap();
    assert_eq!((meta.version, value.expose()), (2, &b"APP_KEY-v2"[..]));
    let (_, prev) = gate.read(&key.which(Which::Previous)).unwrap();
    assert_eq!(prev.expose(), b"APP_KEY-v1");
    let (fh, meta) = gate
        .open(&ReadRequest::new(&app, AccessVia::Fuse, "APP_KEY"))
        .unwrap();
    assert_eq!(meta.version, 2);
    st.view.close(fh);
    // Stat is no read: no event.
    gate.stat(&ReadRequest::new(&app, AccessVia::Fuse, "APP_KEY"))
        .unwrap();
    // Absent, for a caller allowed the name: a read and a lookup are `missing`, a stat is not.
    let gone = ReadRequest::new(&app, AccessVia::Socket, "APP_GONE");
    assert_eq!(gate.read(&gone).unwrap_err(), Refusal::NotFound);
    assert_eq!(gate.read(&gone).unwrap_err(), Refusal::NotFound);
    let gone_fuse = ReadRequest::new(&app, AccessVia::Fuse, "APP_GONE");
    assert_eq!(gate.lookup(&gone_fuse).unwrap_err(), Refusal::NotFound);
    assert_eq!(gate.stat(&gone_fuse).unwrap_err(), Refusal::NotFound);
    // A previous version that is not there is not a missing name.
    st.view.apply(2, false, vec![update("APP_NEW", 1, None)]);
    let no_prev = ReadRequest::new(&app, AccessVia::Socket, "APP_NEW").which(Which::Previous);
    assert_eq!(gate.read(&no_prev).unwrap_err(), Refusal::NoPrevious);
    assert_eq!(
        events(&audit),
        vec![
            (
                AccessAction::Accessed,
                Some("APP_KEY".into()),
                Some(1),
                AccessVia::Socket,
                1
            ),
            (
                AccessAction::Accessed,
                Some("APP_KEY".into()),
                Some(2),
                AccessVia::Fuse,
                1
            ),
            (
                AccessAction::Accessed,
                Some("APP_KEY".into()),
                Some(2),
                AccessVia::Socket,
                1
            ),
            (
                AccessAction::Missing,
                Some("APP_GONE".into()),
                None,
                AccessVia::Fuse,
                1
            ),
            (
                AccessAction::Missing,
                Some("APP_GONE".into()),
                None,
                AccessVia::Socket,
                2
            ),
        ]
    );
}

#[tokio::test]
async fn snapshots_hold_only_what_the_caller_may_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, audit) = state(tmp.path());
    st.view.apply(
        1,
        true,
        vec![update("APP_A", 1, None), update("DB_URL", 3, None)],
    );
    let app = caller(APP_UID);
    let fh = st.gate().open_all(&app, AccessVia::Fuse, |entries| {
        let names: Vec<&str> = entries.iter().map(|(n, _)| *n).collect();
        Secret::copy_from(names.join(",").as_bytes())
    });
    assert_eq!(&st.view.read(fh, 0, 100).unwrap()[..], b"APP_A");
    st.view.close(fh);
    let size = st
        .gate()
        .with_allowed(&app, AccessVia::Fuse, |entries| entries.len());
    assert_eq!(size, 1);
    assert_eq!(
        events(&audit),
        vec![(
            AccessAction::Accessed,
            Some("APP_A".into()),
            Some(1),
            AccessVia::Fuse,
            1
        )]
    );
}

#[tokio::test]
async fn a_unit_gets_only_what_it_was_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, audit) = state(tmp.path());
    st.view.apply(
        1,
        true,
        vec![update("UNIT_SK", 1, None), update("APP_KEY", 1, None)],
    );
    let gate = st.gate();
    let app = pid1("app.service");
    let ok = ReadRequest::new(&app, AccessVia::Systemd, "UNIT_SK");
    assert_eq!(gate.read(&ok).unwrap().1.expose(), b"UNIT_SK-v1");
    // PID 1 is root, but root's blanket grant does not apply to credentials.
    let not_granted = ReadRequest::new(&app, AccessVia::Systemd, "APP_KEY");
    assert_eq!(gate.read(&not_granted).unwrap_err(), Refusal::Denied);
    let other = pid1("other.service");
    let other_req = ReadRequest::new(&other, AccessVia::Systemd, "UNIT_SK");
    assert_eq!(gate.read(&other_req).unwrap_err(), Refusal::Denied);
    // The same root process on the socket keeps its blanket grant.
    let root_socket = ReadRequest::new(&other, AccessVia::Socket, "APP_KEY");
    assert!(gate.read(&root_socket).is_ok());
    let ev = events(&audit);
    assert!(ev.contains(&(
        AccessAction::Accessed,
        Some("UNIT_SK".into()),
        Some(1),
        AccessVia::Systemd,
        1
    )));
    assert!(ev.contains(&(
        AccessAction::Denied,
        Some("APP_KEY".into()),
        Some(1),
        AccessVia::Systemd,
        1
    )));
    assert!(ev.contains(&(
        AccessAction::Denied,
        Some("UNIT_SK".into()),
        Some(1),
        AccessVia::Systemd,
        1
    )));
}
