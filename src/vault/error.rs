//! Errors: [`ApiError`] is every error answer (`{"error":{"code","message"}}`), [`VaultError`]
//! why the server could not start.

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;
use crate::vault::store::StoreError;

/// An error answer. Messages never carry a value or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the vault could not complete the request; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                ApiError::not_found(&format!("{what}_not_found"), format!("{what} not found"))
            }
            StoreError::AlreadyExists(what) => {
                ApiError::conflict(&format!("{what}_exists"), format!("{what} already exists"))
            }
            StoreError::NotOwner => ApiError::forbidden(
                "not_secret_owner",
                "this secret name belongs to another provider of the org",
            ),
            StoreError::Revoked => ApiError::conflict(
                "secret_revoked",
                "the secret is revoked in this environment; push (POST …/push) to issue it again",
            ),
            StoreError::IdempotencyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request; use a new key",
            ),
            StoreError::PolicyMismatch(crate::api::SecretPolicy::User) => ApiError::conflict(
                "user_vault_secret",
                "this secret's policy is user: each value belongs to one user, send user_id",
            ),
            StoreError::PolicyMismatch(crate::api::SecretPolicy::Creator) => ApiError::conflict(
                "creator_vault_secret",
                "this secret's policy is creator: one shared value, send no user_id (or set its \
                 policy to user first)",
            ),
            StoreError::LinkUsed => ApiError::new(
                StatusCode::GONE,
                "link_used",
                "this connect link was already used; ask the app for a new one",
            ),
            StoreError::LinkExpired => ApiError::new(
                StatusCode::GONE,
                "link_expired",
                "this connect link expired (links are valid for one hour); ask the app for a new one",
            ),
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "storage failure");
                ApiError::internal()
            }
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the vault's database is unreachable right now; retry shortly",
                )
            }
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "refusing plain HTTP on non-loopback address {0}: give --tls-cert and --tls-key, or listen on 127.0.0.1/::1"
    )]
    PlainHttpNotLoopback(SocketAddr),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
}
