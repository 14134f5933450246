//! The studio: the vault's web dashboard, served by `fyvault server` itself from assets built
//! into the binary (`web/`, `include_str!`), and the end-user connect page (`/connect/{token}`).
//!
//! | route | what |
//! |---|---|
//! | `GET /studio/` | the single page (Secrets, Tokens, Audit) |
//! | `GET /studio/{asset}` | its ES modules and stylesheet |
//! | `POST /studio/session` | sign in: `{"token": "fvadmin_…"}` → session cookie, `{admin, csrf, expires_at}` |
//! | `GET /studio/session` | the current session (`{admin, csrf, expires_at}`) or 401 |
//! | `DELETE /studio/session` | sign out: revokes the session token, clears the cookie |
//! | `GET /connect/{token}` | the page where an end user seals their own key (issue 14's JSON API) |
//!
//! The page's JSON calls go to the ordinary `/api/v1` routes, authenticated by the session cookie
//! instead of a bearer token ([`session`]). Every studio response carries a strict
//! Content-Security-Policy (`script-src 'self'`, no inline script, no eval, `frame-ancestors
//! 'none'`) and `Referrer-Policy: no-referrer` (a connect link's token is in its path).

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::api::CreateTokenRequest;
use crate::crypto::{self, TokenKind};
use crate::vault::AppState;
use crate::vault::auth::source_ip;
use crate::vault::clock::{fmt_ms, now_ms};
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, P};
use crate::vault::routes::admin::new_token;
use crate::vault::store::AuditContext;

pub mod session;

/// The Content-Security-Policy of every studio and connect page response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One built-in file: name under `/studio/`, content type, bytes.
type Asset = (&'static str, &'static str, &'static str);

const JS: &str = "text/javascript; charset=utf-8";

/// Everything the studio and the connect page load, compiled into the binary.
const ASSETS: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "connect.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/connect.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
    ("app.js", JS, include_str!("../../../web/app.js")),
    ("api.js", JS, include_str!("../../../web/api.js")),
    ("ui.js", JS, include_str!("../../../web/ui.js")),
    ("secrets.js", JS, include_str!("../../../web/secrets.js")),
    ("tokens.js", JS, include_str!("../../../web/tokens.js")),
    ("audit.js", JS, include_str!("../../../web/audit.js")),
    ("dotenv.js", JS, include_str!("../../../web/dotenv.js")),
    ("hpke.js", JS, include_str!("../../../web/hpke.js")),
    ("connect.js", JS, include_str!("../../../web/connect.js")),
];

fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(n, _, _)| *n == name)
}

fn serve(name: &str) -> Response {
    match asset(name) {
        Some((_, ctype, body)) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
            *body,
        )
            .into_response(),
        None => ApiError::not_found("no_such_asset", "no such studio file").into_response(),
    }
}

async fn index() -> Response {
    serve("index.html")
}

async fn file(P(name): P<String>) -> Response {
    // The page itself is served at /studio/ only; connect.html at /connect/{token}.
    if name.ends_with(".html") {
        return ApiError::not_found("no_such_asset", "no such studio file").into_response();
    }
    serve(&name)
}

async fn connect_page(P(_token): P<String>) -> Response {
    serve("connect.html")
}

/// The security headers of every studio response.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cache-control", "no-store");
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

#[derive(Serialize)]
struct SessionInfo {
    /// The admin token the session acts as.
    admin: String,
    csrf: String,
    expires_at: Option<String>,
}

fn invalid_admin_token() -> ApiError {
    ApiError::unauthorized(
        "invalid_token",
        "sign in with a live admin token (fvadmin_…)",
    )
}

/// `POST /studio/session`: an admin token in, a session cookie out.
async fn sign_in(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    JsonBody(req): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    session::check_same_origin(&parts.headers)?;
    let ip = source_ip(&parts, &state.trusted_proxies).map(|ip| ip.to_string());
    let token = zeroize::Zeroizing::new(req.token);
    let token = token.trim();
    if crypto::parse_token(token)
        .map(|k| k != TokenKind::Admin)
        .unwrap_or(true)
    {
        return Err(invalid_admin_token());
    }
    let hash = crypto::hash_token(token.as_bytes());
    let record = state
        .store
        .find_token(&hash)
        .await?
        .ok_or_else(invalid_admin_token)?;
    let now = now_ms();
    if !crypto::ct_eq(record.hash.as_bytes(), hash.as_bytes())
        || record.kind != TokenKind::Admin
        || session::is_session(&record)
        || record.revoked_ms.is_some()
        || record.expires_ms.is_some_and(|e| e <= now)
    {
        return Err(invalid_admin_token());
    }
    let (issued, mut rec) = new_token(
        TokenKind::Admin,
        None,
        None,
        None,
        &CreateTokenRequest {
            label: None,
            expires_in_seconds: Some(session::SESSION_SECONDS),
        },
    )?;
    rec.label = Some(format!(
        "{}{}",
        session::SESSION_LABEL_PREFIX,
        record.token_id
    ));
    let audit = AuditContext {
        actor: format!("admin:{}", record.token_id),
        source_ip: ip,
    };
    state.store.create_token(rec, audit).await?;
    let secret = std::str::from_utf8(issued.token.expose()).unwrap_or_default();
    let cookie = session::set_cookie(secret, session::SESSION_SECONDS, state.tls);
    tracing::info!(admin = %record.token_id, session = %issued.token_id, "studio sign-in");
    let body = SessionInfo {
        admin: record.token_id,
        csrf: session::csrf_for(issued.token.expose()),
        expires_at: issued.expires_at.clone(),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal())?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

async fn current(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<session::Session, ApiError> {
    let ip = source_ip(parts, &state.trusted_proxies).map(|ip| ip.to_string());
    session::from_cookie(parts, state, ip)
        .await?
        .ok_or_else(|| ApiError::unauthorized("missing_session", "sign in to the studio first"))
}

/// `GET /studio/session`
async fn whoami(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = current(&state, &parts).await?;
    Ok(Json(SessionInfo {
        admin: s.principal.token_id,
        csrf: s.csrf,
        expires_at: s.expires_ms.map(fmt_ms),
    }))
}

/// `DELETE /studio/session`: revokes the session token and clears the cookie.
async fn sign_out(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let s = current(&state, &parts).await?;
    state
        .store
        .revoke_token(&s.session_id, now_ms(), s.principal.audit())
        .await?;
    state.tokens.forget(&s.session_id);
    tracing::info!(admin = %s.principal.token_id, session = %s.session_id, "studio sign-out");
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let cookie = session::set_cookie("", 0, state.tls);
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal())?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

/// The studio's routes (merged into the application at the root).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studio", get(|| async { Redirect::permanent("/studio/") }))
        .route("/studio/", get(index))
        .route(
            "/studio/session",
            get(whoami).post(sign_in).delete(sign_out),
        )
        .route("/studio/{name}", get(file))
        .route("/connect/{token}", get(connect_page))
        .method_not_allowed_fallback(crate::vault::routes::method_not_allowed)
        .layer(middleware::from_fn(headers))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_page_loads_only_built_in_scripts() {
        for (name, _, body) in super::ASSETS {
            if name.ends_with(".html") {
                assert!(!body.contains("<script>"), "{name}: inline script");
                let handler = body.split(" on").skip(1).any(|rest| {
                    let word: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                    !word.is_empty() && rest[word.len()..].starts_with('=')
                });
                assert!(!handler, "{name}: an inline event handler");
                for src in body.split("src=\"").skip(1) {
                    let src = src.split('"').next().unwrap();
                    let file = src.trim_start_matches("/studio/");
                    assert!(super::asset(file).is_some(), "{name} loads {src}");
                }
            }
        }
    }
}
