//! The vault's HTTP server against hostile or careless clients: slow headers, idle
//! connections, more connections than the cap, oversized bodies — while a well-behaved client
//! keeps being served and a parked long-poll is never taken for idle.

mod common;
#[path = "../benches/support/longpoll.rs"]
mod longpoll;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use common::{TestVault, eventually, tok};
use fyvault::vault::limits::Limits;
use longpoll::Conn;

const DEADLINE: Duration = Duration::from_secs(30);

fn addr(tv: &TestVault) -> SocketAddr {
    tv.handle.local_addr()
}

/// `GET /v1/health` on a fresh connection, answered within the deadline.
async fn health(vault: SocketAddr) -> u16 {
    let mut c = Conn::connect(vault).await.unwrap();
    c.send_get("/v1/health", "none").await.unwrap();
    tokio::time::timeout(DEADLINE, c.read_answer())
        .await
        .expect("health answered within the deadline")
        .unwrap()
        .status
}

fn short_timeouts(l: &mut Limits) {
    l.header_read_timeout = Duration::from_secs(2);
    l.idle_timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_served_while_slowloris_and_idle_connections_are_held_and_then_cut() {
    fyvault::vault::limits::raise_nofile().unwrap();
    let tv = TestVault::start_with(|c| short_timeouts(&mut c.limits)).await;
    let f = tv.fixture().await;
    let vault = addr(&tv);

    // A long-poll that waits longer than both timeouts is not idle: it is answered when its
    // wait ends, not cut.
    let mut poll = Conn::connect(vault).await.unwrap();
    let agent = tok(&f.agent_token);
    poll.send_sync(&f.org, common::ENV, 0, 5, &agent)
        .await
        .unwrap();
    let poll = tokio::spawn(async move { poll.read_answer().await });

    // 200 slowloris clients: a request line, then one header byte every 300 ms.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut c = Conn::connect(vault).await.unwrap();
        slow.push(tokio::spawn(async move {
            c.write_raw(b"GET /v1/health HTTP/1.1\r\nx-slow: ").await?;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                c.write_raw(b"a").await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        }));
    }
    // 2,000 connections that never send anything.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(Conn::connect(vault).await.unwrap());
    }
    // The well-behaved client is served throughout.
    for _ in 0..10 {
        assert_eq!(health(vault).await, 200);
    }
    // The vault cuts them: slow headers after the header-read timeout, idle ones after the
    // idle timeout.
    for s in slow {
        let r = tokio::time::timeout(DEADLINE, s)
            .await
            .expect("the slowloris connection is cut");
        assert!(r.unwrap().is_err(), "writes fail once the vault closed");
    }
    for mut c in idle {
        assert!(
            c.closed_within(DEADLINE).await,
            "idle connections are closed"
        );
    }
    let a = tokio::time::timeout(DEADLINE, poll)
        .await
        .unwrap()
        .unwrap()
        .expect("the long-poll is answered, not cut");
    assert_eq!((a.status, a.revision()), (200, Some(0)));
    assert_eq!(health(vault).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_get_a_503_and_open_ones_keep_working() {
    let tv = TestVault::start_with(|c| c.limits = Limits::default().with_max_connections(50)).await;
    let vault = addr(&tv);
    let mut open = Vec::new();
    for _ in 0..50 {
        let mut c = Conn::connect(vault).await.unwrap();
        c.send_get("/v1/health", "none").await.unwrap();
        assert_eq!(c.read_answer().await.unwrap().status, 200);
        open.push(c);
    }
    // One more: a clean JSON 503, then closed.
    let mut extra = Conn::connect(vault).await.unwrap();
    extra.send_get("/v1/health", "none").await.unwrap();
    let a = extra.read_answer().await.unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"]["code"], "too_many_connections");
    assert!(extra.closed_within(DEADLINE).await);
    // The admitted connections keep working.
    for c in open.iter_mut().take(5) {
        c.send_get("/v1/health", "none").await.unwrap();
        assert_eq!(c.read_answer().await.unwrap().status, 200);
    }
    // When some go, new ones get in again.
    open.truncate(40);
    eventually(10, "a new connection to be admitted", || async {
        (health(vault).await == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_without_being_read_whole() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let vault = addr(&tv);
    let path = format!("/api/v1/orgs/{}/providers/{}/push", f.org, f.provider);
    let token = tok(&f.provider_token);

    // Declares 1 GiB and sends 10 bytes: answered at once, nothing more is waited for.
    let mut c = Conn::connect(vault).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: v\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{{\"secret\":"
    );
    c.write_raw(head.as_bytes()).await.unwrap();
    let a = tokio::time::timeout(DEADLINE, c.read_answer())
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"]["code"], "body_too_large");

    // Chunked, without end: refused after at most a few times the limit.
    let stream = tokio::net::TcpStream::connect(vault).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: v\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let chunk = {
        let data = vec![b' '; 64 * 1024];
        let mut v = format!("{:x}\r\n", data.len()).into_bytes();
        v.extend_from_slice(&data);
        v.extend_from_slice(b"\r\n");
        v
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        while wr.write_all(&chunk).await.is_ok() {
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut b = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = rd.read(&mut b).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("answered while the body still flows");
    let at_answer = sent.load(Ordering::Relaxed);
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let limit = fyvault::api::MAX_BODY_BYTES;
    assert!(
        at_answer < 16 * limit,
        "{at_answer} bytes sent before the answer"
    );
    writer.abort();
}
