//! The poll lane: agents' long-polls served on plain HTTP/1.1 connections without hyper's
//! per-connection state (docs/vault.md, "The poll lane").
//!
//! A parked long-poll is most of what a vault holds for a fleet, and hyper keeps an 8 KiB read
//! and an 8 KiB write buffer, its dispatcher and the router's futures for every one of them.
//! The lane looks at each request before anything reads it (`peek`): a sync request
//! (`GET /api/v1/orgs/ORG/environments/ENV/sync`, or `/v1/…`, HTTP/1.1, bearer token, no body)
//! is consumed and answered here with the same [`SyncPoll`] as the axum handler, the same
//! extractors and the same log line; while it is parked the connection holds only its socket,
//! its fanout registration, its long-poll permit and a timer. Anything else — another route, a
//! body, HTTP/1.0 or HTTP/2, a head that did not arrive in one piece, a percent-encoded path —
//! is left unread and the whole connection goes to hyper, as every connection did before.
//! Handing over is one way: a connection that once carried another request stays with hyper
//! (the agent keeps its long-poll on a connection of its own, so its polls stay here).
//!
//! TLS connections always go to hyper (rustls holds its own buffers per connection); plain
//! HTTP, and so the lane, is served on loopback only (behind a TLS proxy on the same host).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts as _};
use axum::http::{self, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::vault::AppState;
use crate::vault::auth::Auth;
use crate::vault::error::ApiError;
use crate::vault::extract::Q;
use crate::vault::routes::agent::{PollEnd, SyncPoll, SyncQuery};

/// The longest request head the lane looks at; a longer one goes to hyper.
const MAX_HEAD: usize = 4096;
/// Most header lines the lane parses; more goes to hyper.
const MAX_HEADERS: usize = 32;
/// An answer must be written within this time, or the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the lane makes of the next request on a connection.
#[derive(Debug)]
pub(crate) enum Next {
    /// A sync request it serves: the head (to consume) and what it says.
    Sync(Box<SyncHead>),
    /// Anything else: the connection goes to hyper, unread.
    Hyper,
    /// The client closed the connection.
    Closed,
}

/// A sync request's head, parsed.
#[derive(Debug)]
pub(crate) struct SyncHead {
    /// Bytes of the head on the wire (consumed once the lane takes the request).
    len: usize,
    org: String,
    env: String,
    /// Path without the query (the log line's).
    path: String,
    /// The client asked to close after the answer (`Connection: close`).
    close: bool,
    parts: http::request::Parts,
}

/// Classifies the bytes at the front of a connection (nothing is consumed).
pub(crate) fn classify(bytes: &[u8], peer: SocketAddr) -> Next {
    if bytes.is_empty() {
        return Next::Closed;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return Next::Hyper,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Next::Hyper;
    }
    let Some(target) = req.path else {
        return Next::Hyper;
    };
    let (path, _query) = target.split_once('?').unwrap_or((target, ""));
    let Some((org, env)) = sync_route(path) else {
        return Next::Hyper;
    };
    let mut builder = http::Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(http::Version::HTTP_11);
    let mut authorized = false;
    for h in req.headers.iter() {
        let name = h.name;
        let plain = |n: &str| name.eq_ignore_ascii_case(n);
        if plain("content-length") {
            if h.value != b"0" {
                return Next::Hyper;
            }
        } else if plain("transfer-encoding") || plain("expect") || plain("upgrade") {
            return Next::Hyper;
        } else if plain("connection") {
            let v = String::from_utf8_lossy(h.value);
            if v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            {
                return Next::Hyper;
            }
        } else if plain("authorization") {
            authorized = true;
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Next::Hyper;
        };
        builder = builder.header(name, value);
    }
    let close = builder.headers_ref().is_some_and(asks_to_close);
    // A cookie-authenticated call (the studio) takes the general path.
    if !authorized {
        return Next::Hyper;
    }
    let Ok(request) = builder.extension(ConnectInfo(peer)).body(()) else {
        return Next::Hyper;
    };
    Next::Sync(Box::new(SyncHead {
        len,
        org: org.to_owned(),
        env: env.to_owned(),
        path: path.to_owned(),
        close,
        parts: request.into_parts().0,
    }))
}

/// `Connection: close` among `headers`.
fn asks_to_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

/// `/api/v1/orgs/ORG/environments/ENV/sync` or `/v1/…` → (ORG, ENV). Segments that are empty
/// or percent-encoded are left to the router.
fn sync_route(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("/api/v1/orgs/")
        .or_else(|| path.strip_prefix("/v1/orgs/"))?;
    let (org, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("environments/")?;
    let env = rest.strip_suffix("/sync")?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    (plain(org) && plain(env)).then_some((org, env))
}

/// How a connection left the lane.
pub(crate) enum Leave {
    /// Served until closed (by either side, a timeout or shutdown).
    Done,
    /// The next request is not the lane's: serve the rest with hyper.
    ToHyper(TcpStream),
}

/// Serves sync requests on `stream` until another kind of request arrives.
pub(crate) async fn serve(state: &AppState, mut stream: TcpStream, peer: SocketAddr) -> Leave {
    let limits = &state.admission.limits;
    let peer_text = peer.to_string();
    loop {
        // The next request, within the header timeout (an idle keep-alive connection ends).
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let head = loop {
            tokio::select! {
                r = stream.readable() => if r.is_err() { return Leave::Done },
                _ = tokio::time::sleep_until(deadline) => return Leave::Done,
                _ = crate::vault::stopped(state.shutdown.clone()) => return Leave::Done,
            }
            match peek(&stream, peer) {
                Ok(next) => break next,
                // Readiness may be spurious: wait again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Leave::Done,
            }
        };
        let head = match head {
            Next::Sync(head) => head,
            Next::Hyper => {
                state.admission.lane.handed_over();
                return Leave::ToHyper(stream);
            }
            Next::Closed => return Leave::Done,
        };
        if consume(&stream, head.len).is_err() {
            return Leave::Done;
        }
        state.admission.lane.served();
        let start = Instant::now();
        let SyncHead {
            org,
            env,
            path,
            mut close,
            mut parts,
            ..
        } = *head;
        // A client that hangs up ends the poll (dropping it frees its place).
        let end = tokio::select! {
            end = answer(state, &mut parts, org, env) => end,
            () = hung_up(&stream) => return Leave::Done,
        };
        drop(parts);
        // Closing after this answer (asked by the client or the answer, or shutting down)
        // is said in the answer, as hyper does.
        close |= *state.shutdown.borrow();
        let (status, written) = match end {
            PollEnd::Shared(body) => (
                StatusCode::OK,
                write(&mut stream, StatusCode::OK, None, close, &body).await,
            ),
            PollEnd::Answer(resp) => {
                let status = resp.status();
                close |= asks_to_close(resp.headers());
                (status, write_response(&mut stream, resp, close).await)
            }
        };
        crate::vault::routes::log_line(&Method::GET, &path, status, start, &peer_text);
        if written.is_err() || close {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
            return Leave::Done;
        }
    }
}

/// The sync answer for one request: the same extractors, in the same order, as the route.
async fn answer(
    state: &AppState,
    parts: &mut http::request::Parts,
    org: String,
    env: String,
) -> PollEnd {
    let result = async {
        let Auth(p) = Auth::from_request_parts(parts, state).await?;
        let Q(q) = Q::<SyncQuery>::from_request_parts(parts, state).await?;
        let poll = SyncPoll::new(state, &p, org, env, &q).await?;
        poll.run(state).await
    }
    .await;
    result.unwrap_or_else(|e: ApiError| PollEnd::Answer(e.into_response()))
}

/// Looks at the next request without reading it or waiting (`WouldBlock` when nothing is
/// there yet; the stream's readiness is then cleared).
fn peek(stream: &TcpStream, peer: SocketAddr) -> std::io::Result<Next> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd as _;
    let mut buf = vec![0u8; MAX_HEAD];
    let n = stream.try_io(tokio::io::Interest::READABLE, || {
        recv(
            stream.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)
    })?;
    Ok(classify(&buf[..n], peer))
}

/// Reads and drops the `len` bytes of a head that `peek` saw (they are in the socket).
fn consume(stream: &TcpStream, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match stream.try_read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // `peek` saw these bytes, so they are in the socket's buffer.
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves when the client closes (or resets) the connection. Bytes of a next request sent
/// early (pipelining) are left for after the answer.
async fn hung_up(stream: &TcpStream) {
    let mut one = [0u8; 1];
    match stream.peek(&mut one).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Writes an axum response (its body is complete: every sync answer is).
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(std::io::Error::other)?;
    write(stream, parts.status, Some(&parts.headers), close, &body).await
}

/// Writes one HTTP/1.1 answer: status line, the headers (a JSON content type when none are
/// given), `connection: close` when `close` (unless the headers say it), `date`,
/// `content-length`, body.
async fn write(
    stream: &mut TcpStream,
    status: StatusCode,
    headers: Option<&http::HeaderMap>,
    close: bool,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    match headers {
        Some(h) => {
            for (name, value) in h {
                if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                    continue;
                }
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        None => out.extend_from_slice(b"content-type: application/json\r\n"),
    }
    if close && !headers.is_some_and(asks_to_close) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    fn sync_head(bytes: &[u8]) -> Option<Box<SyncHead>> {
        match classify(bytes, peer()) {
            Next::Sync(h) => Some(h),
            _ => None,
        }
    }

    const POLL: &[u8] =
        b"GET /api/v1/orgs/org_a/environments/prod/sync?since=3&wait=300 HTTP/1.1\r\n\
host: v\r\nauthorization: Bearer x\r\naccept: */*\r\n\r\n";

    #[test]
    fn a_sync_poll_is_the_lanes() {
        let h = sync_head(POLL).unwrap();
        assert_eq!((h.org.as_str(), h.env.as_str()), ("org_a", "prod"));
        assert_eq!(h.len, POLL.len());
        assert_eq!(h.path, "/api/v1/orgs/org_a/environments/prod/sync");
        assert!(!h.close);
        assert_eq!(h.parts.uri.query(), Some("since=3&wait=300"));
        assert!(h.parts.headers.contains_key("authorization"));
        assert!(
            h.parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .is_some()
        );
        // The alias, a second request behind it (pipelined: only the first head counts),
        // Connection: close.
        let mut two = b"GET /v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\nConnection: keep-alive, close\r\n\r\n".to_vec();
        let first = two.len();
        two.extend_from_slice(POLL);
        let h = sync_head(&two).unwrap();
        assert_eq!(h.len, first);
        assert!(h.close);
    }

    #[test]
    fn everything_else_goes_to_hyper_unread() {
        let cases: &[&[u8]] = &[
            // other routes and methods
            b"GET /api/v1/health HTTP/1.1\r\n\r\n",
            b"POST /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            b"HEAD /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/sync/ HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/x/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            b"GET /api/v1/orgs//environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            b"GET /api/v1/orgs/o%41/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
            // HTTP/1.0, HTTP/2's preface, a head cut short, garbage
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.0\r\nAuthorization: Bearer x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bea",
            b"\x16\x03\x01\x02\x00\x01",
            // a body, expectations, upgrades, no bearer token (the studio's cookie)
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET /api/v1/orgs/o/environments/e/sync HTTP/1.1\r\nCookie: fyvault_session=x\r\n\r\n",
        ];
        for c in cases {
            assert!(
                matches!(classify(c, peer()), Next::Hyper),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        assert!(matches!(classify(b"", peer()), Next::Closed));
        // More header lines than the lane parses.
        let mut many =
            b"GET /v1/orgs/o/environments/e/sync HTTP/1.1\r\nAuthorization: Bearer x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(classify(&many, peer()), Next::Hyper));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            let mut bytes = POLL[..len.min(POLL.len())].to_vec();
            for (i, b) in bytes.iter_mut().enumerate() {
                if (seed >> (i % 64)) & 7 == 0 {
                    *b = (seed >> 8) as u8 ^ i as u8;
                }
            }
            let _ = classify(&bytes, peer());
        }
    }
}
