//! The poll lane (src/vault/lane.rs) over real TCP: a sync long-poll on a plain HTTP/1.1
//! connection is answered by the lane exactly as hyper + axum would answer it (same status,
//! body, content type), keep-alive and pipelining work, a parked poll whose client hangs up
//! frees its place, a connection moves to hyper for good on its first other request, a push
//! wakes every parked lane poll once, shutdown answers and closes them, and garbage or half
//! heads get an answer or a close, never a hang.

mod common;
#[path = "../benches/support/longpoll.rs"]
mod longpoll;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use common::{ENV, Fixture, TestVault, eventually, tok, write};
use longpoll::{Conn, RawAnswer};

const DEADLINE: Duration = Duration::from_secs(30);

fn addr(tv: &TestVault) -> SocketAddr {
    tv.handle.local_addr()
}

fn sync_path(org: &str, env: &str, query: &str) -> String {
    format!("/api/v1/orgs/{org}/environments/{env}/sync?{query}")
}

/// A raw sync request (`extra` are more header lines, each ending in CRLF).
fn sync_request(org: &str, since: u64, wait: u64, token: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nhost: vault\r\nauthorization: Bearer {token}\r\n{extra}\r\n",
        sync_path(org, ENV, &format!("since={since}&wait={wait}"))
    )
    .into_bytes()
}

async fn connect(tv: &TestVault) -> Conn {
    Conn::connect(addr(tv)).await.expect("connect")
}

/// The next answer on `c`, within the deadline.
async fn answer(c: &mut Conn) -> RawAnswer {
    tokio::time::timeout(DEADLINE, c.read_answer())
        .await
        .expect("answered within the deadline")
        .expect("an answer, not a closed connection")
}

/// `GET path` on `c`, answered.
async fn get(c: &mut Conn, path: &str, token: &str) -> RawAnswer {
    c.send_get(path, token).await.unwrap();
    answer(c).await
}

/// `GET /api/v1/admin/stats` on a fresh connection. The lane hands that connection to hyper,
/// so every call adds one to `lane.handed_to_hyper` (its own answer included).
async fn stats(tv: &TestVault) -> Value {
    let mut c = connect(tv).await;
    let a = get(&mut c, "/api/v1/admin/stats", &tok(&tv.admin_token)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()
}

/// (`lane.served`, `lane.handed_to_hyper`).
fn lane_counts(s: &Value) -> (u64, u64) {
    (
        s["lane"]["served"].as_u64().expect("lane.served"),
        s["lane"]["handed_to_hyper"]
            .as_u64()
            .expect("lane.handed_to_hyper"),
    )
}

fn long_polls(s: &Value) -> u64 {
    s["long_polls"].as_u64().expect("long_polls")
}

/// Pushes `name` = `value` (a provider write through the typed client).
async fn push(tv: &TestVault, f: &Fixture, name: &str, value: &str) {
    tv.client(&f.provider_token)
        .push(&f.org, &f.provider, &write(name, value, None))
        .await
        .unwrap();
}

/// The environment's current revision (a `wait=0` poll on a connection of its own).
async fn current_revision(tv: &TestVault, f: &Fixture) -> u64 {
    let mut c = connect(tv).await;
    c.send_sync(&f.org, ENV, 0, 0, &tok(&f.agent_token))
        .await
        .unwrap();
    let a = answer(&mut c).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.revision().expect("a revision")
}

/// Waits until the vault holds `n` parked long-polls (stats and fanout agree).
async fn parked(tv: &TestVault, f: &Fixture, n: usize) {
    eventually(30, &format!("{n} parked long-polls"), || async {
        let s = stats(tv).await;
        (long_polls(&s) == n as u64 && tv.handle.held_long_polls(&f.org, ENV) == n).then_some(())
    })
    .await;
}

/// Header names of an answer, without those that differ by nature (`date`) or by framing.
fn header_names(a: &RawAnswer) -> BTreeSet<String> {
    a.head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !matches!(k.as_str(), "date" | "content-length" | "connection"))
        .collect()
}

fn show(a: &RawAnswer) -> String {
    format!("{}\n\n{}", a.head, String::from_utf8_lossy(&a.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_and_hyper_give_the_same_answers() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    tv.env(&f.org, "staging", None).await;
    push(&tv, &f, "A", "a1").await;
    push(&tv, &f, "B", "b1").await;
    let rev = current_revision(&tv, &f).await;
    assert!(rev > 0);

    let agent = tok(&f.agent_token);
    let org = f.org.as_str();
    // (what, path, token, expected status, expected error code)
    let cases: Vec<(&str, String, String, u16, Option<&str>)> = vec![
        (
            "full answer",
            sync_path(org, ENV, "since=0&wait=0"),
            agent.clone(),
            200,
            None,
        ),
        (
            "full answer, /v1 alias",
            format!("/v1/orgs/{org}/environments/{ENV}/sync?since=0&wait=0"),
            agent.clone(),
            200,
            None,
        ),
        (
            "unchanged after the wait",
            sync_path(org, ENV, &format!("since={rev}&wait=1")),
            agent.clone(),
            200,
            None,
        ),
        (
            "bad token",
            sync_path(org, ENV, "since=0&wait=0"),
            "fyv_not_a_token".to_owned(),
            401,
            Some("invalid_token"),
        ),
        (
            "provider token",
            sync_path(org, ENV, "since=0&wait=0"),
            tok(&f.provider_token),
            403,
            Some("wrong_token_kind"),
        ),
        (
            "admin token",
            sync_path(org, ENV, "since=0&wait=0"),
            tok(&tv.admin_token),
            403,
            Some("wrong_token_kind"),
        ),
        (
            "another environment",
            sync_path(org, "staging", "since=0&wait=0"),
            agent.clone(),
            403,
            Some("wrong_environment"),
        ),
        (
            "another org",
            sync_path("org_other", ENV, "since=0&wait=0"),
            agent.clone(),
            403,
            Some("wrong_org"),
        ),
        // The token's scope is checked before the name (SyncPoll::new: require_agent, then
        // check_environment), so an agent token never sees `invalid_environment` here: the
        // point is that both paths agree.
        (
            "invalid environment name",
            sync_path(org, "Not_An_Env", "since=0&wait=0"),
            agent.clone(),
            403,
            Some("wrong_environment"),
        ),
        (
            "unknown query field",
            sync_path(org, ENV, "bogus=1"),
            agent.clone(),
            400,
            Some("invalid_query"),
        ),
        (
            "since not a number",
            sync_path(org, ENV, "since=abc"),
            agent.clone(),
            400,
            Some("invalid_query"),
        ),
    ];

    let before = lane_counts(&stats(&tv).await);
    for (what, path, token, status, code) in &cases {
        // The lane: a fresh connection whose first request is the sync.
        let mut lane = connect(&tv).await;
        let started = Instant::now();
        let l = get(&mut lane, path, token).await;
        let lane_took = started.elapsed();
        // hyper: a fresh connection whose first request is another route.
        let mut hyper = connect(&tv).await;
        let h = get(&mut hyper, "/api/v1/health", "none").await;
        assert_eq!(h.status, 200, "{what}: health: {}", show(&h));
        let started = Instant::now();
        let h = get(&mut hyper, path, token).await;
        let hyper_took = started.elapsed();

        assert_eq!(l.status, *status, "{what}: lane: {}", show(&l));
        assert_eq!(h.status, *status, "{what}: hyper: {}", show(&h));
        let (lj, hj) = (l.json(), h.json());
        assert!(
            lj.is_object(),
            "{what}: lane body is not JSON: {}",
            show(&l)
        );
        assert_eq!(
            lj,
            hj,
            "{what}: bodies differ\nlane: {}\nhyper: {}",
            show(&l),
            show(&h)
        );
        match code {
            Some(code) => {
                assert_eq!(lj["error"]["code"], *code, "{what}: {}", show(&l));
                assert_eq!(lj["error"]["message"], hj["error"]["message"], "{what}");
                assert!(
                    lj["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{what}: no message"
                );
            }
            None => {
                assert_eq!(lj["revision"], rev, "{what}");
                for k in ["revision", "full", "secrets"] {
                    assert!(lj.get(k).is_some(), "{what}: no {k}: {lj}");
                    assert_eq!(lj[k], hj[k], "{what}: {k}");
                }
            }
        }
        assert_eq!(
            l.header("content-type"),
            h.header("content-type"),
            "{what}: content types differ\nlane: {}\nhyper: {}",
            l.head,
            h.head
        );
        assert_eq!(l.header("content-type"), Some("application/json"), "{what}");
        assert!(
            l.header("date").is_some(),
            "{what}: lane answer without date"
        );
        assert!(
            h.header("date").is_some(),
            "{what}: hyper answer without date"
        );
        assert_eq!(
            header_names(&l),
            header_names(&h),
            "{what}: header sets differ\nlane: {}\nhyper: {}",
            l.head,
            h.head
        );
        if path.contains("wait=1") {
            assert!(lj["secrets"].as_array().is_some_and(Vec::is_empty));
            assert_eq!(lj["full"], false, "{what}");
            for (who, took) in [("lane", lane_took), ("hyper", hyper_took)] {
                assert!(
                    took >= Duration::from_millis(900),
                    "{what}: {who} answered after {took:?}, before the wait"
                );
            }
        } else if code.is_none() {
            assert_eq!(lj["full"], true, "{what}");
            assert_eq!(lj["secrets"].as_array().map(Vec::len), Some(2), "{what}");
        }
    }
    let after = lane_counts(&stats(&tv).await);
    let n = cases.len() as u64;
    assert_eq!(after.0 - before.0, n, "lane.served: one per lane request");
    // One per hyper connection, and one for the last stats call's own connection.
    assert_eq!(after.1 - before.1, n + 1, "lane.handed_to_hyper");
}

/// A vault with one secret pushed: the vault, its fixture, the environment's revision and the
/// agent token.
async fn vault_with_a_secret() -> (TestVault, Fixture, u64, String) {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    push(&tv, &f, "A", "a1").await;
    let rev = current_revision(&tv, &f).await;
    let agent = tok(&f.agent_token);
    (tv, f, rev, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_polls_are_answered_in_order() {
    let (tv, f, rev, agent) = vault_with_a_secret().await;
    let before = lane_counts(&stats(&tv).await);

    // Keep-alive: three polls in a row on one connection.
    let mut c = connect(&tv).await;
    for i in 0..3 {
        c.send_sync(&f.org, ENV, 0, 0, &agent).await.unwrap();
        let a = answer(&mut c).await;
        assert_eq!(a.status, 200, "poll {i}: {}", show(&a));
        assert_eq!(a.revision(), Some(rev), "poll {i}");
        assert_eq!(a.json()["full"], true, "poll {i}");
    }

    // Pipelined: a full poll and an incremental one in one write, answered in that order.
    let mut two = sync_request(&f.org, 0, 0, &agent, "");
    two.extend_from_slice(&sync_request(&f.org, rev, 0, &agent, ""));
    c.write_raw(&two).await.unwrap();
    let first = answer(&mut c).await;
    let second = answer(&mut c).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.json()["full"], true, "{}", show(&first));
    assert_eq!(first.json()["secrets"].as_array().map(Vec::len), Some(1));
    assert_eq!(second.json()["full"], false, "{}", show(&second));
    assert_eq!(second.revision(), Some(rev));

    // Pipelined behind a parked poll: the bytes of the next request are not taken for a
    // hang-up; the parked one answers after its wait, then the next one.
    let mut two = sync_request(&f.org, rev, 1, &agent, "");
    two.extend_from_slice(&sync_request(&f.org, 0, 0, &agent, ""));
    let started = Instant::now();
    c.write_raw(&two).await.unwrap();
    let first = answer(&mut c).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the parked poll answered before its wait"
    );
    let second = answer(&mut c).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.json()["full"], false, "{}", show(&first));
    assert_eq!(first.revision(), Some(rev));
    assert_eq!(second.json()["full"], true, "{}", show(&second));

    // Connection: close: answered, then closed.
    c.write_raw(&sync_request(&f.org, 0, 0, &agent, "connection: close\r\n"))
        .await
        .unwrap();
    let last = answer(&mut c).await;
    assert_eq!(last.status, 200, "{}", show(&last));
    assert_eq!(last.revision(), Some(rev));
    assert_eq!(
        last.header("connection"),
        Some("close"),
        "the answer says so"
    );
    assert!(
        c.closed_within(DEADLINE).await,
        "the connection stays open after Connection: close"
    );

    // All of it in the lane: 3 + 2 + 2 + 1 requests, no connection handed over (but the last
    // stats call's own).
    let after = lane_counts(&stats(&tv).await);
    assert_eq!(after.0 - before.0, 8, "lane.served");
    assert_eq!(after.1 - before.1, 1, "lane.handed_to_hyper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_whose_client_hangs_up_frees_its_place() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    push(&tv, &f, "A", "a1").await;
    let rev = current_revision(&tv, &f).await;
    let base = stats(&tv).await;
    assert_eq!(long_polls(&base), 0);
    let base_conns = base["connections"].as_u64().expect("connections");

    let mut c = connect(&tv).await;
    c.send_sync(&f.org, ENV, rev, 300, &tok(&f.agent_token))
        .await
        .unwrap();
    // (Not compared with `base_conns` here: each stats call's own connection, and the ones
    // before it still closing, make that count race.)
    parked(&tv, &f, 1).await;

    drop(c);
    eventually(30, "the hung-up poll to free its place", || async {
        let s = stats(&tv).await;
        (long_polls(&s) == 0 && tv.handle.held_long_polls(&f.org, ENV) == 0).then_some(())
    })
    .await;
    // Its connection (and permit) went too.
    eventually(30, "the hung-up connection to be released", || async {
        (stats(&tv).await["connections"].as_u64().unwrap() <= base_conns).then_some(())
    })
    .await;
    // The place is usable again.
    let mut c = connect(&tv).await;
    c.send_sync(&f.org, ENV, rev, 300, &tok(&f.agent_token))
        .await
        .unwrap();
    parked(&tv, &f, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_goes_to_hyper_on_its_first_other_request_and_keeps_working() {
    let (tv, f, rev, agent) = vault_with_a_secret().await;
    let before = lane_counts(&stats(&tv).await);

    let mut c = connect(&tv).await;
    c.send_sync(&f.org, ENV, 0, 0, &agent).await.unwrap();
    let a = answer(&mut c).await;
    assert_eq!((a.status, a.revision()), (200, Some(rev)), "{}", show(&a));
    let mid = lane_counts(&stats(&tv).await);
    assert_eq!(mid.0 - before.0, 1, "the first poll is the lane's");
    assert_eq!(
        mid.1 - before.1,
        1,
        "nothing handed over but the stats call"
    );

    let who = get(&mut c, "/api/v1/whoami", &agent).await;
    assert_eq!(who.status, 200, "{}", show(&who));
    assert_eq!(who.json()["org_id"], f.org.as_str());
    assert_eq!(who.json()["environment"], ENV);

    // Still served on the same connection, now by hyper (for good).
    for since in [0, rev] {
        c.send_sync(&f.org, ENV, since, 0, &agent).await.unwrap();
        let a = answer(&mut c).await;
        assert_eq!((a.status, a.revision()), (200, Some(rev)), "{}", show(&a));
        assert_eq!(a.json()["full"], since == 0);
    }
    let after = lane_counts(&stats(&tv).await);
    assert_eq!(
        after.0 - mid.0,
        0,
        "the syncs after the handover are hyper's"
    );
    // The connection, and the last stats call's own.
    assert_eq!(after.1 - mid.1, 2, "lane.handed_to_hyper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_lane_poll_is_woken_by_a_push_and_answered_once() {
    const N: usize = 50;
    let (tv, f, rev0, agent) = vault_with_a_secret().await;
    let before = lane_counts(&stats(&tv).await);

    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = connect(&tv).await;
        c.send_sync(&f.org, ENV, rev0, 300, &agent).await.unwrap();
        conns.push(c);
    }
    parked(&tv, &f, N).await;

    let mut since = rev0;
    for (round, value) in ["a2", "a3"].into_iter().enumerate() {
        push(&tv, &f, "A", value).await;
        let mut rev = None;
        for (i, c) in conns.iter_mut().enumerate() {
            let a = answer(c).await;
            assert_eq!(a.status, 200, "round {round}, poll {i}: {}", show(&a));
            let r = a.revision().expect("a revision");
            assert!(
                r > since,
                "round {round}, poll {i}: revision {r} after {since}"
            );
            assert_eq!(
                *rev.get_or_insert(r),
                r,
                "round {round}: every poll sees one change"
            );
            let j = a.json();
            assert_eq!(j["full"], false);
            assert_eq!(j["secrets"].as_array().map(Vec::len), Some(1), "{j}");
        }
        since = rev.unwrap();
        // Answered once: nothing more comes on any connection, each parks again.
        for c in conns.iter_mut() {
            c.send_sync(&f.org, ENV, since, 300, &agent).await.unwrap();
        }
        parked(&tv, &f, N).await;
    }
    // Every parked poll is still parked (no second answer arrived): a short read times out.
    for (i, c) in conns.iter_mut().enumerate().take(5) {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.read_answer())
                .await
                .is_err(),
            "poll {i} answered twice"
        );
    }
    let after = lane_counts(&stats(&tv).await);
    assert_eq!(after.0 - before.0, 3 * N as u64, "lane.served: every poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_parked_lane_polls_and_closes() {
    const N: usize = 5;
    let (tv, f, rev, agent) = vault_with_a_secret().await;
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = connect(&tv).await;
        c.send_sync(&f.org, ENV, rev, 300, &agent).await.unwrap();
        conns.push(c);
    }
    parked(&tv, &f, N).await;

    tv.handle.trigger_shutdown();
    for (i, c) in conns.iter_mut().enumerate() {
        let a = answer(c).await;
        assert_eq!(a.status, 200, "poll {i}: {}", show(&a));
        assert_eq!(a.revision(), Some(rev), "poll {i}: an unchanged answer");
        assert_eq!(a.json()["full"], false);
        assert_eq!(
            a.header("connection"),
            Some("close"),
            "poll {i}: says it closes"
        );
        assert!(
            a.json()["secrets"].as_array().is_some_and(Vec::is_empty),
            "{}",
            show(&a)
        );
        assert!(
            c.closed_within(DEADLINE).await,
            "poll {i}: the connection stays open after shutdown"
        );
    }
}

/// Reads until the vault closes `s`, within the deadline: what it sent (maybe nothing) and
/// when it closed.
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "neither answered-and-closed nor closed within {DEADLINE:?}; got {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    (got, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_half_heads_get_an_http_answer_or_a_close_never_a_hang() {
    let header_timeout = Duration::from_secs(2);
    // Well under the 20 s default: the configured timeout is the one that applies.
    let cut = Duration::from_secs(15);
    let tv = TestVault::start_with(|c| c.limits.header_read_timeout = header_timeout).await;
    let f = tv.fixture().await;
    push(&tv, &f, "A", "a1").await;
    let rev = current_revision(&tv, &f).await;
    let agent = tok(&f.agent_token);
    let vault = addr(&tv);

    // Garbage (a TLS ClientHello's start on a plain port, with and without a blank line).
    for garbage in [
        &b"\x16\x03\x01garbage\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01",
    ] {
        let mut s = TcpStream::connect(vault).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let (got, _) = until_closed(&mut s).await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
            "{garbage:?}: {}",
            String::from_utf8_lossy(&got)
        );
    }

    // A head that never completes: cut after the header read timeout.
    let mut s = TcpStream::connect(vault).await.unwrap();
    let half = format!(
        "GET /api/v1/orgs/{}/environments/{ENV}/sync HTTP/1.1\r\nAuthorization: Bear",
        f.org
    );
    s.write_all(half.as_bytes()).await.unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(took < cut, "a half head held for {took:?}");

    // A connection that sends nothing, and one idle after a lane answer: cut likewise.
    let mut s = TcpStream::connect(vault).await.unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took < cut, "a silent connection held for {took:?}");
    let mut s = TcpStream::connect(vault).await.unwrap();
    s.write_all(&sync_request(&f.org, 0, 0, &agent, ""))
        .await
        .unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took < cut,
        "an idle keep-alive connection held for {took:?}"
    );

    // A valid poll in two writes: the lane sees half a head and hands the connection to hyper,
    // which answers it whole.
    let before = lane_counts(&stats(&tv).await);
    let req = sync_request(&f.org, 0, 0, &agent, "");
    let (a, b) = req.split_at(req.len() - 20);
    let mut c = connect(&tv).await;
    c.write_raw(a).await.unwrap();
    // The client's own pace (two writes 200 ms apart), not a wait for the vault.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.write_raw(b).await.unwrap();
    let got = answer(&mut c).await;
    assert_eq!(got.status, 200, "{}", show(&got));
    assert_eq!(got.revision(), Some(rev));
    let after = lane_counts(&stats(&tv).await);
    assert_eq!(after.0 - before.0, 0, "the split poll is not the lane's");
    // The split connection, and the last stats call's own.
    assert_eq!(after.1 - before.1, 2, "lane.handed_to_hyper");
}
