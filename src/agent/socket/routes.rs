//! The handlers: parse, ask the read gate ([`crate::agent::gate`]), translate its answer.

use std::io::Write as _;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::wire::{Health, SecretInfo, SecretList, Undeliverable};
use super::{Ctx, Peer, events};
use crate::agent::delivery::template::valid_template_name;
use crate::agent::gate::{ReadRequest, Refusal};
use crate::agent::secret_view::Summary;
use crate::agent::state::Health as StateHealth;
use crate::agent::view::{Meta, Which};
use crate::api::{AccessVia, ErrorBody, valid_secret_name};
use crate::secret::Secret;

pub(super) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/secrets", get(list))
        .route("/v1/secrets/{name}", get(read))
        .route(
            "/v1/connect",
            axum::routing::post(super::connect::connect).layer(
                axum::extract::DefaultBodyLimit::max(super::connect::MAX_BODY),
            ),
        )
        .route("/v1/templates/{name}", get(template))
        .route("/v1/events", get(events::events))
        .route("/v1/health", get(health))
        .route("/v1/accept-restore", axum::routing::post(accept_restore))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
}

/// `{"error":{"code","message"}}` with a status.
pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let mut r = (status, Json(ErrorBody::new(code, message))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn no_route() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint (try /v1/secrets, /v1/secrets/NAME, /v1/templates/NAME, /v1/events, \
         /v1/health)",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the agent's API is read-only: use GET (POST only for /v1/connect)",
    )
}

async fn list(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let secrets = ctx
        .state
        .gate()
        .list(&peer.caller, AccessVia::Socket)
        .into_iter()
        .map(|s| SecretInfo {
            updated_at: crate::rfc3339::format(s.meta.updated_at),
            version: s.meta.version,
            previous_version: s.previous_version,
            name: s.name,
        })
        .collect();
    no_store(Json(SecretList { secrets }).into_response())
}

/// `POST /v1/accept-restore[?secret=A,B]`: root only; see [`crate::agent::restore`].
async fn accept_restore(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let caller = &peer.caller;
    if caller.uid != 0 {
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "accept-restore refused: not root"
        );
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "accepting a vault restore is for root only",
        );
    }
    let selection = match crate::agent::restore::parse_selection(query.as_deref()) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_query", why),
    };
    let accepted =
        crate::agent::restore::accept_running(&ctx.state, selection, caller.uid, caller.pid);
    no_store(Json(accepted).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    version: Option<String>,
    /// The app user whose value of a user-vault secret is asked for.
    #[serde(default)]
    user: Option<String>,
}

async fn read(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(name)) = name else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "the secret name is not valid",
        );
    };
    if !valid_secret_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "secret names match ^[A-Z_][A-Z0-9_]{0,127}$",
        );
    }
    let bad_query = || {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query parameters are version=current|previous and user=ID",
        )
    };
    let Ok(Query(q)) = query else {
        return bad_query();
    };
    let which = match q.version.as_deref() {
        None | Some("current") => Which::Current,
        Some("previous") => Which::Previous,
        Some(_) => return bad_query(),
    };
    if let Some(user) = &q.user
        && !crate::api::valid_user_id(user)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_user",
            "user ids match ^[A-Za-z0-9._@-]{1,128}$",
        );
    }
    read_value(&ctx, &peer, &name, which, q.user.as_deref(), &headers)
}

/// `GET /v1/templates/NAME`: the template rendered for the caller, through the gate (every
/// secret it uses must be readable by the caller and exist).
async fn template(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match name {
        Ok(Path(n)) if valid_template_name(&n) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                "template names are lowercase letters, digits, '.', '_', '-'",
            );
        }
    };
    match ctx
        .state
        .gate()
        .render_template(&peer.caller, AccessVia::Socket, &name)
    {
        Ok(out) => {
            let mut r = Response::new(secret_body(out));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(Refusal::NotFound) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no template {name}, or a secret it uses does not exist (see [[template]] in \
                 agent.toml and the agent's log)"
            ),
        ),
        Err(refusal) => refusal_response(&ctx, peer.caller.uid, &name, refusal),
    }
}

/// Does the request carry a body? The API is read-only: none is ever read.
pub(super) fn has_body<B>(req: &axum::http::Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The one request with a body: `POST /v1/connect` (read up to [`super::connect::MAX_BODY`]).
pub(super) fn takes_body<B>(req: &axum::http::Request<B>) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path() == "/v1/connect"
}

/// 413 for a request with a body; the connection is closed without reading it.
pub(super) fn body_refused() -> Response {
    let mut r = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_not_allowed",
        "the agent's API is read-only and takes no request body",
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The fast path of the hottest request, `GET /v1/secrets/NAME[?version=current|previous]`,
/// answered without the router and its extractors (the answer is exactly the handler's:
/// both call [`read_value`]). Anything else — another method, path or query, a name that is
/// not plainly valid (e.g. percent-encoded) — is `None` and goes through the router.
pub(super) fn fast_read<B>(
    ctx: &Ctx,
    peer: &Peer,
    req: &axum::http::Request<B>,
) -> Option<Response> {
    if req.method() != axum::http::Method::GET {
        return None;
    }
    let name = req.uri().path().strip_prefix("/v1/secrets/")?;
    if !valid_secret_name(name) {
        return None;
    }
    let which = match req.uri().query() {
        None | Some("version=current") => Which::Current,
        Some("version=previous") => Which::Previous,
        Some(_) => return None,
    };
    Some(read_value(ctx, peer, name, which, None, req.headers()))
}

/// The gate's answer, translated: 403 denied, 404 not found / no previous, 503 not ready; for
/// user-vault secrets 400 `user_required` and 404 `user_secret_missing` (see
/// [`super::connect`]). `user`: the app user whose value is read (ignored for creator-vault
/// secrets: the one shared value is every user's).
fn read_value(
    ctx: &Ctx,
    peer: &Peer,
    name: &str,
    which: Which,
    user: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let caller = &peer.caller;
    let req = ReadRequest::new(caller, AccessVia::Socket, name)
        .which(which)
        .user(user);
    // A copy of the value (a zeroizing Secret); the answer goes after the lock is released.
    let (meta, value) = match ctx.state.gate().read(&req) {
        Ok(v) => v,
        Err(refusal) => return refusal_response(ctx, caller.uid, name, refusal),
    };
    value_answer(name, &meta, value, headers)
}

/// The answer carrying a value: its bytes as they are (or JSON when asked), its version.
fn value_answer(name: &str, meta: &Meta, value: Secret, headers: &HeaderMap) -> Response {
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"));
    let (content_type, body) = if wants_json {
        ("application/json", json_body(name, meta, &value))
    } else if std::str::from_utf8(value.expose()).is_ok() {
        ("text/plain; charset=utf-8", value)
    } else {
        ("application/octet-stream", value)
    };
    let mut r = Response::new(secret_body(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(FYVAULT_VERSION, HeaderValue::from(meta.version));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The JSON error for a refusal of the gate (see [`crate::agent::gate`] for who learns what).
pub(super) fn refusal_response(ctx: &Ctx, uid: u32, name: &str, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Denied => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("uid {uid} may not read {name} (see the agent's access rules)"),
        ),
        Refusal::NoPrevious => error(
            StatusCode::NOT_FOUND,
            "no_previous",
            format!(
                "{name} has no previous version readable now: its grace period has ended, \
                 or it was not rotated"
            ),
        ),
        // Nothing synced yet (and no offline cache served): say so, not "no such secret".
        Refusal::NotReady => {
            let why = match ctx.state.health() {
                StateHealth::Degraded { reason, .. } => reason,
                _ => "the first sync is under way".to_owned(),
            };
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the agent has no values yet: {why}"),
            )
        }
        Refusal::Unrenderable => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_failed",
            format!("template {name} could not be rendered (see the agent's log)"),
        ),
        Refusal::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no secret {name} in environment {} (never pushed, or revoked)",
                ctx.info.environment
            ),
        ),
        Refusal::UserRequired | Refusal::UserMissing | Refusal::CannotOpen => {
            super::connect::user_refusal(name, refusal)
        }
    }
}

const FYVAULT_VERSION: HeaderName = HeaderName::from_static("fyvault-version");

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Owns a value for as long as hyper holds the body's bytes; zeroized when the last reference
/// is dropped (after the bytes were written to the socket).
struct SecretBytes(Secret);

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.expose()
    }
}

fn secret_body(value: Secret) -> Body {
    Body::from(Bytes::from_owner(SecretBytes(value)))
}

/// `{"name","version","value","updated_at"}` written straight into a zeroizing buffer sized so
/// it never reallocates (a reallocation would leave an unzeroized copy behind). A value that
/// is not UTF-8 is given as `value_base64` instead of `value`.
fn json_body(name: &str, meta: &Meta, value: &Secret) -> Secret {
    let v = value.expose();
    // Worst case of JSON string escaping is 6 bytes per byte (\u00XX).
    let cap = v.len() * 6 + name.len() * 6 + 160;
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    let out: &mut Vec<u8> = &mut buf;
    out.extend_from_slice(b"{\"name\":");
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
    let _ = write!(out, ",\"version\":{}", meta.version);
    match std::str::from_utf8(v) {
        Ok(s) => {
            out.extend_from_slice(b",\"value\":");
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Err(_) => {
            out.extend_from_slice(b",\"value_base64\":\"");
            let start = out.len();
            let n = base64::encoded_len(v.len(), true).unwrap_or(0);
            out.resize(start + n, 0);
            let _ = base64::engine::general_purpose::STANDARD.encode_slice(v, &mut out[start..]);
            out.push(b'"');
        }
    }
    let _ = write!(
        out,
        ",\"updated_at\":\"{}\"}}",
        crate::rfc3339::format(meta.updated_at)
    );
    debug_assert_eq!(buf.capacity(), cap, "the JSON buffer must not reallocate");
    Secret::from(buf)
}

async fn health(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    if !ctx.state.policy().admits(&peer.caller) {
        let status = match ctx.state.health() {
            StateHealth::Ready => "ready",
            StateHealth::Syncing => "syncing",
            StateHealth::Degraded { .. } => "degraded",
        };
        let body = super::wire::Liveness {
            status: status.into(),
            restricted: true,
        };
        return no_store(Json(body).into_response());
    }
    let (status, since, reason) = match ctx.state.health() {
        StateHealth::Ready => ("ready", None, None),
        StateHealth::Syncing => ("syncing", None, None),
        StateHealth::Degraded { since, reason } => (
            "degraded",
            Some(crate::rfc3339::format(since)),
            Some(reason),
        ),
    };
    let Summary { revision, secrets } = ctx.state.view.summary();
    let stats = ctx.state.auditor.stats();
    let audit = stats.enabled.then_some(stats);
    let body = Health {
        status: status.into(),
        since,
        reason,
        org_id: ctx.info.org_id.clone(),
        environment: ctx.info.environment.clone(),
        revision,
        secrets,
        user_values: ctx.state.users.counts().1,
        last_sync_at: ctx
            .info
            .last_sync
            .read()
            .expect("info lock")
            .map(crate::rfc3339::format),
        started_at: crate::rfc3339::format(ctx.info.started_at),
        mlock: ctx.info.mlock.read().expect("info lock").clone(),
        audit_backlog: audit.as_ref().map(|a| a.backlog_events),
        audit,
        mount: ctx.info.mount(),
        undeliverable: ctx
            .state
            .undeliverable_list()
            .into_iter()
            .map(|(secret, version, reason)| Undeliverable {
                secret,
                version,
                reason: reason.to_owned(),
            })
            .collect(),
    };
    no_store(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn json_body_escapes_and_never_reallocates() {
        let meta = Meta {
            version: 7,
            len: 0,
            updated_at: SystemTime::UNIX_EPOCH,
        };
        for raw in [&b"plain"[..], b"q\"uo\\te\n\x01", b"", b"\xff\xfe bin"] {
            let body = json_body("A_B", &meta, &Secret::copy_from(raw));
            let v: serde_json::Value = serde_json::from_slice(body.expose()).unwrap();
            assert_eq!(v["name"], "A_B");
            assert_eq!(v["version"], 7);
            assert_eq!(v["updated_at"], "1970-01-01T00:00:00Z");
            match std::str::from_utf8(raw) {
                Ok(s) => assert_eq!(v["value"], s),
                Err(_) => assert_eq!(
                    v["value_base64"],
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ),
            }
        }
        // All bytes escaped: the worst case still fits.
        let worst = vec![1u8; 1000];
        let body = json_body("A", &meta, &Secret::new(worst));
        assert!(body.len() > 6000);
    }
}
