//! The accept loop: admission under the connection cap, per-connection timeouts, accept
//! failures, and the drain at shutdown.
//!
//! - Each connection holds a permit of the connection cap ([`Limits::max_connections`]). Past
//!   the cap a new connection is answered `503` (`Connection: close`) and closed; the open
//!   ones keep working.
//! - HTTP/1.1's header-read timeout cuts slow-header clients and idle keep-alive connections;
//!   on top of it a connection (HTTP/1.1 or HTTP/2) without a request in flight for
//!   [`Limits::idle_timeout`] is shut down gracefully. A parked long-poll is in flight.
//! - A failing `accept` (EMFILE, ENFILE, ENOBUFS…) backs off from 5 ms to 1 s and is logged at
//!   most once per [`ACCEPT_LOG_EVERY`] with the number of failures since.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::vault::error::VaultError;
use crate::vault::{AppState, lane};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "accept failed" line per this period.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refusals answered at once (each reads the request head for up to a second first, so the
/// client sees the 503 rather than a reset); past this a connection over the cap is just
/// closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 89\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the vault is at its connection cap\"}}\n";

/// Binds `addr` with the configured listen backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, VaultError> {
    let bind_err = |source| VaultError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(backlog.max(1)).map_err(bind_err)
}

/// Counts failed accepts and says when to log (bounded rate) and how long to wait.
#[derive(Debug)]
struct AcceptFailures {
    backoff: Duration,
    since_log: u64,
    last_log: Option<Instant>,
}

impl AcceptFailures {
    fn new() -> Self {
        AcceptFailures {
            backoff: ACCEPT_BACKOFF_MIN,
            since_log: 0,
            last_log: None,
        }
    }

    /// One more failure: the delay before the next accept, and whether (with how many
    /// failures) to log now.
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.since_log += 1;
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        let log = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY);
        if log {
            self.last_log = Some(now);
            let n = self.since_log;
            self.since_log = 0;
            (delay, Some(n))
        } else {
            (delay, None)
        }
    }

    fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    changed: Notify,
}

struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                if tokio::time::timeout(idle, changed).await.is_err() {
                    return;
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// Accepts and serves until `shutdown`, then drains.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    state: AppState,
    shutdown: watch::Receiver<bool>,
) {
    let admission = state.admission.clone();
    let limits = &admission.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);
    let conns = admission.connections.clone();
    let cap = u32::try_from(limits.max_connections.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut failures = AcceptFailures::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    failures.succeeded();
                    x
                }
                Err(e) => {
                    let (delay, log) = failures.failed(Instant::now());
                    if let Some(n) = log {
                        tracing::warn!(
                            error = %e, failures = n, retry_ms = delay.as_millis() as u64,
                            "accept failed (logged at most every {}s)", ACCEPT_LOG_EVERY.as_secs()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = crate::vault::stopped(shutdown.clone()) => break,
                    }
                    continue;
                }
            },
            _ = crate::vault::stopped(shutdown.clone()) => break,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            refuse(stream, peer, &refusals);
            continue;
        };
        admission.note_open();
        let ctx = Conn {
            builder: builder.clone(),
            app: app.clone(),
            peer,
            idle: limits.idle_timeout,
            shutdown: shutdown.clone(),
            _permit: permit,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        // hyper's connection futures are boxed: the task of a connection parked in the lane
        // is then only as large as the lane's state (docs/vault.md, "The poll lane").
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => Box::pin(ctx.serve_tls(acceptor, stream)).await,
                None => match lane::serve(&state, stream, peer).await {
                    lane::Leave::Done => {}
                    lane::Leave::ToHyper(stream) => Box::pin(ctx.serve(TokioIo::new(stream))).await,
                },
            }
        });
    }
    drop(listener);
    tracing::info!("vault stopping: draining connections");
    match tokio::time::timeout(DRAIN_TIMEOUT, conns.acquire_many(cap)).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            open = cap as usize - conns.available_permits(),
            "connections still open after the drain timeout"
        ),
    }
    tracing::info!("vault stopped");
}

/// Answers a connection over the cap with a 503 and closes it (in the background, bounded).
fn refuse(mut stream: TcpStream, peer: SocketAddr, refusals: &Arc<Semaphore>) {
    static LAST_LOG: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    {
        let mut last = LAST_LOG.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%peer, "connection cap reached: refusing new connections (503)");
        }
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let _permit = permit;
        // Read (part of) the request first: closing with unread data would reset the
        // connection and the client would never see the answer.
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await
        })
        .await;
    });
}

/// One admitted connection.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    peer: SocketAddr,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
    /// Held until the connection ends.
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn serve_tls(self, acceptor: TlsAcceptor, stream: TcpStream) {
        let peer = self.peer;
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.serve(TokioIo::new(tls)).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            app,
            peer,
            idle,
            shutdown,
            _permit,
        } = self;
        let activity = Arc::new(Activity::default());
        let act = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = act.begin();
            let call = app.clone().oneshot(req);
            async move {
                let resp = call.await;
                drop(busy);
                resp
            }
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = activity.idle_for(idle), if !closing => {
                    tracing::debug!(%peer, "closing an idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = crate::vault::stopped(shutdown.clone()), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_log_rarely() {
        let mut f = AcceptFailures::new();
        let t0 = Instant::now();
        let mut logged = 0;
        let mut waited = Duration::ZERO;
        // 1,000 failures within one logging period: one line, delays grow to the cap.
        for i in 0..1000 {
            let (d, log) = f.failed(t0 + Duration::from_millis(i));
            waited += d;
            logged += usize::from(log.is_some());
            assert!(d >= ACCEPT_BACKOFF_MIN && d <= ACCEPT_BACKOFF_MAX);
        }
        assert_eq!(logged, 1);
        assert!(waited > Duration::from_secs(900), "{waited:?}");
        let (_, log) = f.failed(t0 + ACCEPT_LOG_EVERY);
        assert_eq!(
            log,
            Some(1000),
            "the next line counts the failures since the last"
        );
        f.succeeded();
        assert_eq!(f.failed(t0 + ACCEPT_LOG_EVERY).0, ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn the_refusal_is_a_well_formed_json_503() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }
}
