//! How a failed vault call is classified: unreachable (retry later), token refused (401/403),
//! or refused with the server's `{"error":{code,message}}`.

use std::time::Duration;

use reqwest::StatusCode;

use crate::api::ErrorBody;
use crate::crypto::CryptoError;

/// Why a vault call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a usable http(s) URL.
    #[error("invalid vault URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The HTTP client could not be built (e.g. an unreadable CA certificate).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// No token was set before an authenticated call.
    #[error("no token is set for the vault client")]
    NoToken,
    /// Connection refused, DNS, TLS, timeout, connection reset…: worth retrying later.
    #[error("vault unreachable: {0}")]
    Unreachable(String),
    /// 401: the token is missing, garbled, unknown, revoked or expired.
    #[error("the vault refused the token (401 {code}): {message}")]
    Unauthorized { code: String, message: String },
    /// 403: the token is valid but not allowed to do this.
    #[error("forbidden (403 {code}): {message}")]
    Forbidden { code: String, message: String },
    /// Any other non-success status, with the server's `{"error":{code,message}}`.
    #[error("the vault answered {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        /// The server's `Retry-After` (seconds form), at most [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// A success status whose body is not what the API promises.
    #[error("unexpected answer from the vault: {0}")]
    BadResponse(String),
    /// Sealing a value client-side failed (bad public key from the server…).
    #[error("sealing failed: {0}")]
    Crypto(#[from] CryptoError),
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Unauthorized { .. } => Some(401),
            ClientError::Forbidden { .. } => Some(403),
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code (`invalid_secret_name`, `not_found`, …), when it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Unauthorized { code, .. }
            | ClientError::Forbidden { code, .. }
            | ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// How long the server asked to wait before trying again (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for transport failures that a retry may cure.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable(_))
    }
}

pub(super) fn transport_reason(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "transport error".to_string()
    };
    // The chain of causes (connection refused, TLS alert…). URLs carry no secrets.
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The longest `Retry-After` a client obeys: a server (or a proxy) asking for more is not
/// allowed to stop an agent syncing for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A `Retry-After` header in its delta-seconds form (the vault's), capped at
/// [`MAX_RETRY_AFTER`]; the HTTP-date form and garbage count as absent.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

pub(super) fn error_from(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_"),
            format!("HTTP {status} (no JSON error body)"),
        ),
    };
    match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { code, message },
        StatusCode::FORBIDDEN => ClientError::Forbidden { code, message },
        _ => ClientError::Status {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let e = error_from(
            StatusCode::UNAUTHORIZED,
            None,
            br#"{"error":{"code":"unauthorized","message":"token revoked"}}"#,
        );
        assert!(matches!(e, ClientError::Unauthorized { .. }));
        assert_eq!(e.status(), Some(401));
        let e = error_from(StatusCode::BAD_GATEWAY, None, b"<html>");
        assert_eq!(e.status(), Some(502));
        assert_eq!(e.code(), Some("bad_gateway"));
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn retry_after_in_seconds_is_kept_and_capped() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&h)
        };
        assert_eq!(with("17"), Some(Duration::from_secs(17)));
        assert_eq!(with("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(with("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
        let e = error_from(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(7)),
            br#"{"error":{"code":"too_many_long_polls","message":"later"}}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.code(), Some("too_many_long_polls"));
    }
}
