//! Studio sessions: sign-in with an admin token → an HttpOnly, SameSite=Strict cookie holding a
//! fresh, expiring admin token of its own (a *session token*), revoked at sign-out.
//!
//! - A session token is an ordinary `fvadmin_` token (stored hashed like every token, so sessions
//!   work across vault instances over one PostgreSQL and survive restarts) labelled
//!   `studio session of <admin token id>`. That label prefix is reserved: the admin API refuses
//!   it, and a session token is refused as a bearer token — it only works as the cookie.
//! - Requests carrying the cookie act as the admin who signed in (`admin:<that token id>` in the
//!   audit trail), through the very handlers of the admin and provider APIs ([`from_cookie`] is
//!   called by the bearer extractor when no `Authorization` header is present). The session ends
//!   when it expires, at sign-out, or when that admin token is revoked.
//! - CSRF: a mutating request with the cookie must come from the studio's own origin
//!   (`Sec-Fetch-Site`/`Origin`, when the browser sends them) *and* carry `X-Fyvault-Csrf`, a
//!   value derived from the session token that only the studio's own page can read (from
//!   `GET /studio/session`). Otherwise 403 `csrf_failed`, before anything else happens.

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{self, TokenKind};
use crate::vault::AppState;
use crate::vault::auth::Principal;
use crate::vault::clock::now_ms;
use crate::vault::error::ApiError;
use crate::vault::store::{TokenFilter, TokenRecord};

/// The session cookie's name.
pub const COOKIE: &str = "fyvault_session";
/// The header carrying the CSRF value on mutating requests.
pub const CSRF_HEADER: &str = "x-fyvault-csrf";
/// Label prefix of session tokens (reserved: the admin API refuses labels starting with it).
pub const SESSION_LABEL_PREFIX: &str = "studio session of ";
/// How long a session lasts.
pub const SESSION_SECONDS: u64 = 12 * 3600;

/// The CSRF value of a session: derived from its token, so the server keeps nothing more.
pub fn csrf_for(session_token: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"fyvault-studio-csrf-v1|");
    h.update(session_token);
    hex::encode(h.finalize())
}

/// Whether a token record is a studio session token.
pub fn is_session(record: &TokenRecord) -> bool {
    record.kind == TokenKind::Admin
        && record
            .label
            .as_deref()
            .is_some_and(|l| l.starts_with(SESSION_LABEL_PREFIX))
}

/// The session cookie's value, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| Zeroizing::new(value.trim().to_string()))
}

/// The `Set-Cookie` value carrying a session (`Secure` whenever the vault speaks TLS).
pub fn set_cookie(token: &str, max_age: u64, secure: bool) -> Zeroizing<String> {
    let secure = if secure { "; Secure" } else { "" };
    Zeroizing::new(format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
}

fn csrf_failed(message: &str) -> ApiError {
    ApiError::forbidden("csrf_failed", message)
}

/// The same-origin part of the CSRF defence, for every mutating studio request (sign-in too):
/// what the browser says about where the request comes from must be this origin.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site")
        && site != "same-origin"
    {
        return Err(csrf_failed("cross-site request refused"));
    }
    if let Some(origin) = get("origin") {
        let host = get("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if host.is_empty() || origin_host != host {
            return Err(csrf_failed("cross-origin request refused"));
        }
    }
    Ok(())
}

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A live session.
pub struct Session {
    /// Acts as the admin who signed in.
    pub principal: Principal,
    /// The session token's own id (revoked at sign-out).
    pub session_id: String,
    pub csrf: String,
    pub expires_ms: Option<i64>,
}

fn expired() -> ApiError {
    ApiError::unauthorized(
        "session_expired",
        "the studio session has ended; sign in again",
    )
}

/// The session of a request that carries the cookie (`None` without one). Mutating requests
/// must pass the CSRF defence first (403), then the session must be live (401).
pub async fn from_cookie(
    parts: &Parts,
    state: &AppState,
    source_ip: Option<String>,
) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie_token(&parts.headers) else {
        return Ok(None);
    };
    let csrf = csrf_for(token.as_bytes());
    if is_mutating(&parts.method) {
        check_same_origin(&parts.headers)?;
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !crypto::ct_eq(sent, csrf.as_bytes()) {
            return Err(csrf_failed(
                "a studio request that changes something needs the X-Fyvault-Csrf header",
            ));
        }
    }
    if crypto::parse_token(&token).is_err() {
        return Err(expired());
    }
    let hash = crypto::hash_token(token.as_bytes());
    let record = state.store.find_token(&hash).await?.ok_or_else(expired)?;
    let now = now_ms();
    let live = |r: &TokenRecord| r.revoked_ms.is_none() && r.expires_ms.is_none_or(|e| e > now);
    if !crypto::ct_eq(record.hash.as_bytes(), hash.as_bytes()) || !is_session(&record) {
        return Err(expired());
    }
    if !live(&record) {
        return Err(expired());
    }
    let admin_id = record
        .label
        .as_deref()
        .and_then(|l| l.strip_prefix(SESSION_LABEL_PREFIX))
        .unwrap_or_default()
        .to_string();
    let admins = state
        .store
        .list_tokens(TokenFilter {
            org_id: None,
            kind: Some(TokenKind::Admin),
            include_revoked: true,
        })
        .await?;
    let admin_live = admins
        .iter()
        .any(|a| a.token_id == admin_id && !is_session(a) && live(a));
    if !admin_live {
        return Err(expired());
    }
    Ok(Some(Session {
        principal: Principal {
            token_id: admin_id,
            kind: TokenKind::Admin,
            org_id: None,
            environment: None,
            provider_id: None,
            source_ip,
        },
        session_id: record.token_id,
        csrf,
        expires_ms: record.expires_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_cookie_is_found_among_others_and_set_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fyvault_session=fvadmin_x ; b=2"),
        );
        assert_eq!(cookie_token(&h).unwrap().as_str(), "fvadmin_x");
        let c = set_cookie("T", 60, true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=60",
            "Path=/",
        ] {
            assert!(c.contains(part), "{}", c.as_str());
        }
        assert!(!set_cookie("T", 60, false).contains("Secure"));
    }

    #[test]
    fn same_origin_rules() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(check_same_origin(&h(&[])).is_ok());
        assert!(
            check_same_origin(&h(&[
                ("host", "127.0.0.1:8200"),
                ("origin", "http://127.0.0.1:8200"),
                ("sec-fetch-site", "same-origin")
            ]))
            .is_ok()
        );
        assert!(check_same_origin(&h(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(
            check_same_origin(&h(&[
                ("host", "127.0.0.1:8200"),
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
        assert_ne!(csrf_for(b"a"), csrf_for(b"b"));
    }
}
