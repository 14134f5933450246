//! The Unix-socket HTTP API over the view (DESIGN §4.3).
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/secrets` | `{"secrets":[{name, version, updated_at, previous_version?}]}`: only what the caller may read, no values |
//! | `GET /v1/secrets/NAME` | the value as `text/plain` (exact bytes) with `Fyvault-Version`; with `Accept: application/json`: `{name, version, value, updated_at}` |
//! | `GET /v1/secrets/NAME?version=previous` | the previous version while its grace period runs; 404 after |
//! | `GET /v1/events` | server-sent events `added`, `updated`, `rotated`, `revoked`, `expired` (data `{name, version, …}`), for readable secrets only |
//! | `GET /v1/health` | `{status: ready/syncing/degraded, …}` |
//! | `GET /v1/secrets/NAME?user=ID`, `POST /v1/connect` | user-vault secrets: see [`connect`] |
//!
//! A connection whose peer is bound to systemd's abstract address
//! `\0<hex>/unit/<unit>/<id>` is a credential request (`LoadCredential=ID:/run/fyvault.sock`)
//! and is answered with the credential protocol instead ([`credential`]).
//!
//! The socket is mode 0666: every local user may connect; the caller's identity is taken from
//! the connection ([`peer`]) at accept time and every read is decided by the one policy check
//! ([`crate::agent::access::Policy::allows`]); a refusal is a 403 and an audit event. Errors are
//! `{"error":{"code","message"}}`. The handlers are thin: all logic is in the view and policy.

mod connect;
pub mod credential;
mod events;
pub mod limits;
pub mod peer;
mod routes;
pub mod wire;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use std::convert::Infallible;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::agent::hygiene::MlockStatus;
use crate::agent::state::AgentState;

pub use limits::Limits;
pub use peer::Peer;

/// Facts `/v1/health` reports besides the state's health.
#[derive(Debug)]
pub struct RunInfo {
    pub org_id: String,
    pub environment: String,
    pub started_at: SystemTime,
    /// Memory locking as the hygiene step left it.
    pub mlock: RwLock<MlockStatus>,
    /// When the last sync answer was applied.
    pub last_sync: RwLock<Option<SystemTime>>,
    /// The FUSE mount as `run` left it (None until `run` says).
    pub mount: RwLock<Option<wire::MountHealth>>,
}

impl RunInfo {
    pub fn new(org_id: &str, environment: &str) -> Self {
        RunInfo {
            org_id: org_id.to_owned(),
            environment: environment.to_owned(),
            started_at: SystemTime::now(),
            mlock: RwLock::new(MlockStatus::Off),
            last_sync: RwLock::new(None),
            mount: RwLock::new(None),
        }
    }

    pub fn set_mount(&self, m: wire::MountHealth) {
        *self.mount.write().expect("info lock") = Some(m);
    }

    pub fn mount(&self) -> Option<wire::MountHealth> {
        self.mount.read().expect("info lock").clone()
    }

    pub fn set_mlock(&self, m: MlockStatus) {
        *self.mlock.write().expect("info lock") = m;
    }

    pub fn mark_synced(&self) {
        *self.last_sync.write().expect("info lock") = Some(SystemTime::now());
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub state: Arc<AgentState>,
    pub info: Arc<RunInfo>,
    /// Flips to true on shutdown: open event streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Interval of keep-alive comments on `/v1/events`.
    pub keep_alive: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another agent is already serving on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Binds the socket at `path` with mode 0666. A socket file left by a dead agent is removed;
/// a live one (something accepts connections on it) is refused, and so is any other file.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("removing the stale socket {}", path.display());
                    std::fs::remove_file(path).map_err(|source| SocketError::Bind {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SocketError::Bind {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    }
    let err = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    // Bound (and listening, mode 0666) under a temporary name, then renamed into place: a
    // client that waits for the socket file to appear never finds one that refuses
    // connections (between bind(2) and listen(2)) or has the wrong mode.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path
        .parent()
        .map(|d| d.join(format!(".fyvault-{}-{n}.sock", std::process::id())));
    if let Some(tmp) = tmp {
        let _ = std::fs::remove_file(&tmp);
        if let Ok(listener) = UnixListener::bind(&tmp) {
            let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666))
                .and_then(|()| std::fs::rename(&tmp, path));
            return match placed {
                Ok(()) => Ok(listener),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(err(e))
                }
            };
        }
    }
    // No temporary name possible here (e.g. a path near the length limit): bind in place.
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// The API's routes.
pub fn router(ctx: Ctx) -> Router {
    routes::router(ctx)
}

/// Serves the API on `listener` until `ctx.shutdown` turns true: then stops accepting, ends
/// event streams, lets requests in flight finish, and returns. With the default [`Limits`].
pub async fn serve(listener: UnixListener, ctx: Ctx) -> io::Result<()> {
    serve_with(listener, ctx, Limits::default()).await
}

/// [`serve`] with these limits.
///
/// HTTP/1.1 only (hyper's HTTP/1 connection, keep-alive), the caller resolved once per
/// connection ([`Peer::of`]) and admitted by the connection limits ([`limits`]).
/// `GET /v1/secrets/NAME` is answered on a fast path that skips the router (same answer, see
/// `routes::fast_read`); everything else goes through the router.
pub async fn serve_with(listener: UnixListener, ctx: Ctx, limits: Limits) -> io::Result<()> {
    let mut stop = ctx.shutdown.clone();
    let app = router(ctx.clone());
    let graceful = GracefulShutdown::new();
    let conns = limits::Connections::new(limits.clone());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor is 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8192));
    let mut refused = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // An Err means the sender is gone: shut down too.
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = Peer::of(&stream);
        let Some(slot) = conns.admit(peer.caller.uid) else {
            // Told why (if its buffer takes it; never waited for), then closed.
            let _ = stream.try_write(limits::REFUSED);
            refused.note(peer.caller.uid);
            continue;
        };
        // PID 1 asking for a credential (its abstract address says which unit and which id):
        // the credential protocol instead of HTTP.
        if let Some(ask) = credential::systemd_ask(&stream) {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                credential::serve(&ctx, &peer, ask, stream).await;
            });
            continue;
        }
        if let Err(e) = nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::SndBuf,
            &limits.send_buffer_bytes,
        ) {
            tracing::debug!("socket: cannot set SO_SNDBUF: {e}");
        }
        let control = limits::ConnControl {
            kill: Arc::new(tokio::sync::Notify::new()),
            max_events_behind: limits.max_events_behind,
            event_stall: limits.event_stall,
        };
        let kill = control.kill.clone();
        let (ctx, app) = (ctx.clone(), app.clone());
        let uid = peer.caller.uid;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let early = if routes::has_body(&req) && !routes::takes_body(&req) {
                Some(routes::body_refused())
            } else {
                routes::fast_read(&ctx, &peer, &req)
            };
            if early.is_none() {
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
                req.extensions_mut().insert(control.clone());
            }
            let app = app.clone();
            async move {
                match early {
                    Some(r) => Ok::<_, Infallible>(r),
                    None => app.oneshot(req).await,
                }
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("socket connection ended with an error: {e}");
                },
                () = kill.notified() => tracing::info!(
                    uid,
                    "socket: closed an event stream whose reader stopped reading"
                ),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Refused connections are logged at most once a minute (a flood must not flood the log).
#[derive(Debug, Default)]
struct RefusalLog {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl RefusalLog {
    fn note(&mut self, uid: u32) {
        self.since_last += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                uid,
                refused = self.since_last,
                "socket: refusing connections over the limits (docs/agent.md, \"Limits\")"
            );
            self.since_last = 0;
            self.last = Some(now);
        }
    }
}
