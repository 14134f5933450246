//! The socket API over a real Unix socket, with the view populated directly (the sync path is
//! covered by the end-to-end tests).

mod agent_support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_support::*;
use fyvault::agent::access::{Glob, Policy, Rule};
use fyvault::agent::audit::Auditor;
use fyvault::agent::socket::{self, Ctx, RunInfo, SocketError};
use fyvault::agent::state::{AgentState, Health};
use fyvault::agent::view::{Update, UpdateState};
use fyvault::secret::Secret;
use tokio::sync::watch;

struct Agent {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    state: Arc<AgentState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Agent {
    async fn start(policy: Policy) -> Agent {
        let dir = open_tempdir();
        let sock = dir.path().join("agent.sock");
        let state = AgentState::new(policy, Auditor::disabled());
        tokio::spawn(state.clone().run_expiry());
        let (stop, rx) = watch::channel(false);
        let ctx = Ctx {
            state: state.clone(),
            info: Arc::new(RunInfo::new("org_t", "test")),
            shutdown: rx,
            keep_alive: Duration::from_secs(15),
        };
        let listener = socket::bind(&sock).unwrap();
        let task = tokio::spawn(socket::serve(listener, ctx));
        Agent {
            _dir: dir,
            sock,
            state,
            stop,
            task,
        }
    }

    fn push(&self, name: &str, version: u64, value: &[u8], prev: Option<(u64, &[u8], Duration)>) {
        self.state.view.apply(
            version,
            false,
            vec![Update {
                name: name.into(),
                version,
                state: UpdateState::Active {
                    value: Secret::copy_from(value),
                    previous: prev.map(|(v, b, d)| (v, Secret::copy_from(b), d)),
                },
                updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(version),
            }],
        );
    }

    fn revoke(&self, name: &str, version: u64) {
        self.state.view.apply(
            version,
            false,
            vec![Update {
                name: name.into(),
                version,
                state: UpdateState::Revoked,
                updated_at: SystemTime::now(),
            }],
        );
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn read_rotate_grace_revoke() {
    let a = Agent::start(Policy::default()).await;
    let sock = a.sock.clone();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let v1: &[u8] = b"sk_live_one\n\x00 exact";
    a.push("STRIPE_SK", 1, v1, None);
    let r = get(&sock, "/v1/secrets/STRIPE_SK").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v1, "exact bytes");
    assert_eq!(r.headers["fyvault-version"], "1");
    assert_eq!(r.headers["cache-control"], "no-store");

    let j = request(
        &sock,
        "GET",
        "/v1/secrets/STRIPE_SK",
        Some("application/json"),
    )
    .await
    .json();
    assert_eq!(j["name"], "STRIPE_SK");
    assert_eq!(j["version"], 1);
    assert_eq!(j["value"].as_str().unwrap().as_bytes(), v1);
    assert_eq!(j["updated_at"], "1970-01-01T00:00:01Z");

    let r = get(&sock, "/v1/secrets/STRIPE_SK?version=previous").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_previous"));

    // Rotation with a grace period long enough to read the previous value, then it ends.
    a.push(
        "STRIPE_SK",
        2,
        b"sk_live_two",
        Some((1, v1, Duration::from_millis(1500))),
    );
    let r = get(&sock, "/v1/secrets/STRIPE_SK").await;
    assert_eq!(
        (r.body.as_slice(), &r.headers["fyvault-version"]),
        (
            &b"sk_live_two"[..],
            &"2".parse::<hyper::header::HeaderValue>().unwrap()
        )
    );
    let r = get(&sock, "/v1/secrets/STRIPE_SK?version=previous").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v1);
    assert_eq!(r.headers["fyvault-version"], "1");
    let list = get(&sock, "/v1/secrets").await.json();
    assert_eq!(list["secrets"][0]["previous_version"], 1);
    eventually("the grace period to end", || async {
        let r = get(&sock, "/v1/secrets/STRIPE_SK?version=previous").await;
        (r.status == 404).then_some(())
    })
    .await;
    let r = get(&sock, "/v1/secrets/STRIPE_SK?version=previous").await;
    assert_eq!(r.error_code(), "no_previous");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grace")
    );
    assert_eq!(
        get(&sock, "/v1/secrets/STRIPE_SK").await.body,
        b"sk_live_two"
    );

    // Revoke: both gone at once.
    a.push(
        "STRIPE_SK",
        3,
        b"three",
        Some((2, b"sk_live_two", Duration::from_secs(600))),
    );
    assert_eq!(
        get(&sock, "/v1/secrets/STRIPE_SK?version=previous")
            .await
            .status,
        200
    );
    a.revoke("STRIPE_SK", 3);
    for path in [
        "/v1/secrets/STRIPE_SK",
        "/v1/secrets/STRIPE_SK?version=previous",
    ] {
        let r = get(&sock, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "not_found");
    }
    assert_eq!(
        get(&sock, "/v1/secrets").await.json()["secrets"],
        serde_json::json!([])
    );
    a.stop().await;
}

#[tokio::test]
async fn bad_requests_are_clear_json_errors() {
    let a = Agent::start(Policy::default()).await;
    let s = a.sock.clone();
    a.push("A", 1, b"x", None);
    for (path, status, code) in [
        ("/v1/secrets/lower", 400, "invalid_name"),
        ("/v1/secrets/A%2FB", 400, "invalid_name"),
        ("/v1/secrets/..", 400, "invalid_name"),
        ("/v1/secrets/A?version=3", 400, "invalid_query"),
        ("/v1/secrets/A?colour=red", 400, "invalid_query"),
        ("/v1/secrets/NOPE", 404, "not_found"),
        ("/v1/nothing", 404, "no_route"),
        ("/v1/secrets/A/B", 404, "no_route"),
    ] {
        let r = get(&s, path).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{path}"
        );
    }
    let r = request(&s, "POST", "/v1/secrets/A", None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    let r = request(&s, "DELETE", "/v1/secrets/A", None).await;
    assert_eq!(r.status, 405);
    a.stop().await;
}

#[tokio::test]
async fn non_utf8_values_are_exact_and_base64_in_json() {
    let a = Agent::start(Policy::default()).await;
    let raw: &[u8] = &[0xff, 0x00, 0xfe, b'\n'];
    a.push("BIN", 4, raw, None);
    let r = get(&a.sock, "/v1/secrets/BIN").await;
    assert_eq!(r.body, raw);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let j = request(&a.sock, "GET", "/v1/secrets/BIN", Some("application/json"))
        .await
        .json();
    assert_eq!(j["value_base64"], "/wD+Cg==");
    assert!(j.get("value").is_none());
    a.stop().await;
}

#[tokio::test]
async fn events_deliver_rotations_and_revocations() {
    let a = Agent::start(Policy::default()).await;
    a.push("A_KEY", 1, b"one", None);
    let mut ev = Events::open(&a.sock).await;
    a.push("B_KEY", 1, b"b", None);
    let d = ev.expect("added", "B_KEY").await;
    assert_eq!(d["version"], 1);
    a.push(
        "A_KEY",
        2,
        b"two",
        Some((1, b"one", Duration::from_secs(600))),
    );
    let d = ev.expect("rotated", "A_KEY").await;
    assert_eq!(
        (d["version"].as_u64(), d["previous_version"].as_u64()),
        (Some(2), Some(1))
    );
    a.push("A_KEY", 3, b"three", None);
    let d = ev.expect("updated", "A_KEY").await;
    assert_eq!(
        (d["version"].as_u64(), d["previous_version"].as_u64()),
        (Some(3), Some(2))
    );
    a.push(
        "B_KEY",
        2,
        b"b2",
        Some((1, b"b", Duration::from_millis(50))),
    );
    ev.expect("rotated", "B_KEY").await;
    let d = ev.expect("expired", "B_KEY").await;
    assert_eq!(d["version"], 1);
    a.revoke("A_KEY", 3);
    let d = ev.expect("revoked", "A_KEY").await;
    assert_eq!(d["version"], 3);
    // Shutdown ends the stream (and the server returns).
    a.stop().await;
    assert!(ev.next().await.is_none());
}

/// The kind of a new version's event (`rotated`: the replaced version stays readable for its
/// grace; `updated`: it does not) is the change's own, not whatever the view holds by the time
/// the stream sends it: two changes in quick succession are each reported as they were.
#[tokio::test]
async fn event_kinds_come_from_the_change_not_from_later_state() {
    let a = Agent::start(Policy::default()).await;
    a.push("FAST", 1, b"one", None);
    let mut ev = Events::open(&a.sock).await;
    // Back to back, before the stream can send the first: a rotation with grace, then a push
    // over it without grace.
    a.push(
        "FAST",
        2,
        b"two",
        Some((1, b"one", Duration::from_secs(600))),
    );
    a.push("FAST", 3, b"three", None);
    let mut got = Vec::new();
    while got.len() < 2 {
        let (kind, d) = ev.next().await.expect("two events");
        got.push((
            kind,
            d["version"].as_u64().unwrap(),
            d["previous_version"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        got,
        [("rotated".to_owned(), 2, 1), ("updated".to_owned(), 3, 2)]
    );
    // And the other order: a push without grace, then a rotation with it.
    a.push("FAST", 4, b"four", None);
    a.push(
        "FAST",
        5,
        b"five",
        Some((4, b"four", Duration::from_secs(600))),
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let (kind, d) = ev.next().await.expect("two events");
        got.push((kind, d["version"].as_u64().unwrap()));
    }
    assert_eq!(got, [("updated".to_owned(), 4), ("rotated".to_owned(), 5)]);
    a.stop().await;
}

#[tokio::test]
async fn health_reports_state_and_memory_locking() {
    let a = Agent::start(Policy::default()).await;
    let h = get(&a.sock, "/v1/health").await.json();
    assert_eq!(h["status"], "syncing");
    assert_eq!(h["environment"], "test");
    assert_eq!(h["mlock"]["state"], "off");
    a.push("A", 7, b"x", None);
    a.state.set_health(Health::Ready);
    let h = get(&a.sock, "/v1/health").await.json();
    assert_eq!(
        (
            h["status"].as_str(),
            h["revision"].as_u64(),
            h["secrets"].as_u64()
        ),
        (Some("ready"), Some(7), Some(1))
    );
    a.state.set_health(Health::Degraded {
        since: SystemTime::UNIX_EPOCH,
        reason: "vault unreachable: connection refused".into(),
    });
    let h = get(&a.sock, "/v1/health").await.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["since"], "1970-01-01T00:00:00Z");
    assert!(h["reason"].as_str().unwrap().contains("unreachable"));
    a.stop().await;
}

#[tokio::test]
async fn binding_refuses_a_live_agent_and_replaces_a_stale_socket() {
    let a = Agent::start(Policy::default()).await;
    match socket::bind(&a.sock) {
        Err(SocketError::InUse(p)) => assert_eq!(p, a.sock),
        other => panic!("expected InUse, got {other:?}"),
    }
    let sock = a.sock.clone();
    // Keep the temp dir alive while reusing its path.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(std::fs::metadata(&stale).unwrap().file_type().is_socket());
    let l = socket::bind(&stale).expect("a stale socket is replaced");
    drop(l);
    let file = dir.path().join("plain");
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(
        socket::bind(&file),
        Err(SocketError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(sock.exists());
    a.stop().await;
}

fn cli(sock: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(fyvault())
        .args(args)
        .env("FYVAULT_SOCKET", sock)
        .output()
        .unwrap()
}

#[tokio::test]
async fn cli_get_ls_status() {
    let a = Agent::start(Policy::default()).await;
    let v: &[u8] = b"exact\nbytes ";
    a.push("API_KEY", 5, v, None);
    a.state.set_health(Health::Ready);
    let sock = a.sock.clone();
    let out = tokio::task::spawn_blocking({
        let s = sock.clone();
        move || cli(&s, &["get", "API_KEY"])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, v);
    let s = sock.clone();
    let (ls, status, missing, prev, bad) = tokio::task::spawn_blocking(move || {
        (
            cli(&s, &["ls"]),
            cli(&s, &["status"]),
            cli(&s, &["get", "NOPE"]),
            cli(&s, &["get", "API_KEY", "--previous"]),
            cli(&s, &["get", "lower"]),
        )
    })
    .await
    .unwrap();
    assert!(ls.status.success());
    assert!(String::from_utf8_lossy(&ls.stdout).starts_with("API_KEY  v5  "));
    assert!(status.status.success());
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .starts_with("ready; org_t/test revision 5, 1 secrets")
    );
    for o in [&missing, &prev, &bad] {
        assert!(!o.status.success());
        assert!(o.stdout.is_empty());
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no secret NOPE"));
    a.stop().await;

    // The agent is down.
    let down = tokio::task::spawn_blocking(move || cli(&sock, &["get", "API_KEY"]))
        .await
        .unwrap();
    assert!(!down.status.success());
    let e = String::from_utf8_lossy(&down.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("cannot reach the agent"), "{e}");
}

/// Another uid is refused (403, one line from the CLI), sees no names; a rule grants it.
#[tokio::test]
async fn other_uid_is_denied_unless_a_rule_grants_it() {
    let rule = Rule {
        secrets: vec![Glob::new("GRANTED_*")],
        users: vec![65534],
        ..Rule::default()
    };
    let a = Agent::start(Policy::new(None, vec![rule])).await;
    a.push("SECRET_X", 1, b"hidden-canary", None);
    a.push("GRANTED_Y", 1, b"granted-value", None);
    let sock = a.sock.to_str().unwrap().to_owned();
    let Some((denied, ls, granted, events)) = tokio::task::spawn_blocking(move || {
        let env = [("FYVAULT_SOCKET", sock.as_str())];
        let bin = fyvault();
        Some((
            as_nobody(&bin, &["get", "SECRET_X"], &env)?,
            as_nobody(&bin, &["ls"], &env)?,
            as_nobody(&bin, &["get", "GRANTED_Y"], &env)?,
            as_nobody(
                Path::new("/usr/bin/curl"),
                &[
                    "-sS",
                    "--max-time",
                    "1",
                    "--unix-socket",
                    &sock,
                    "http://x/v1/events",
                ],
                &[],
            ),
        ))
    })
    .await
    .unwrap() else {
        eprintln!("skipped: cannot switch uid here");
        return;
    };
    assert!(!denied.status.success());
    assert!(denied.stdout.is_empty());
    let e = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("uid 65534 may not read SECRET_X"), "{e}");
    assert!(!e.contains("canary"));
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success());
    assert!(!listing.contains("SECRET_X"), "{listing}");
    assert!(listing.contains("GRANTED_Y"), "{listing}");
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    assert_eq!(granted.stdout, b"granted-value");
    drop(events);
    a.stop().await;
}

/// The event stream only carries secrets the caller may read.
#[tokio::test]
async fn events_are_filtered_by_policy() {
    let rule = Rule {
        secrets: vec![Glob::new("GRANTED_*")],
        users: vec![65534],
        ..Rule::default()
    };
    let a = Agent::start(Policy::new(None, vec![rule])).await;
    let sock = a.sock.to_str().unwrap().to_owned();
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to switch uid");
        a.stop().await;
        return;
    }
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "curl",
            "-sSN",
        ])
        .args(["--unix-socket", &sock, "http://x/v1/events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The stream's first comment shows it is subscribed.
    let first = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ": fyvault events");
    a.push("SECRET_X", 1, b"x", None);
    a.push("GRANTED_Y", 1, b"y", None);
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if line.starts_with("data:") {
            seen.push(line.clone());
            if line.contains("GRANTED_Y") {
                break;
            }
        }
    }
    assert!(seen.iter().all(|l| !l.contains("SECRET_X")), "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
    a.stop().await;
}

/// `GET /v1/secrets/NAME` has a fast path that skips the router; a percent-encoded form of the
/// same request goes through the router. Both must answer exactly alike.
#[tokio::test]
async fn fast_path_and_router_answer_alike() {
    let a = Agent::start(Policy::default()).await;
    let s = a.sock.clone();
    a.push("SAME", 1, b"old-value", None);
    a.push(
        "SAME",
        2,
        b"new-value",
        Some((1, b"old-value", Duration::from_secs(600))),
    );
    let pairs = [
        ("/v1/secrets/SAME", "/v1/secrets/%53AME", None),
        (
            "/v1/secrets/SAME",
            "/v1/secrets/SAME?version=cur%72ent",
            None,
        ),
        (
            "/v1/secrets/SAME?version=previous",
            "/v1/secrets/SAME?version=previou%73",
            None,
        ),
        (
            "/v1/secrets/SAME",
            "/v1/secrets/%53AME",
            Some("application/json"),
        ),
        ("/v1/secrets/NOPE", "/v1/secrets/N%4FPE", None),
        (
            "/v1/secrets/NOPE?version=previous",
            "/v1/secrets/N%4FPE?version=previous",
            None,
        ),
    ];
    for (fast, routed, accept) in pairs {
        let f = request(&s, "GET", fast, accept).await;
        let r = request(&s, "GET", routed, accept).await;
        assert_eq!(f.status, r.status, "{fast} vs {routed}");
        assert_eq!(f.body, r.body, "{fast} vs {routed}");
        for h in ["content-type", "fyvault-version", "cache-control"] {
            assert_eq!(
                f.headers.get(h),
                r.headers.get(h),
                "{h}: {fast} vs {routed}"
            );
        }
    }
    let f = get(&s, "/v1/secrets/SAME").await;
    assert_eq!((f.status, f.text()), (200, "new-value".to_string()));
    assert_eq!(f.headers["fyvault-version"], "2");
    assert_eq!(f.headers["cache-control"], "no-store");
    // Other methods on the same path still get the router's 405.
    let p = request(&s, "POST", "/v1/secrets/SAME", None).await;
    assert_eq!(p.status, 405);
    assert_eq!(p.error_code(), "method_not_allowed");
    a.stop().await;
}
