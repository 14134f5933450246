//! The vault server (DESIGN §3): routes, auth, store, sync feed, audit log.
//!
//! - [`server`]: `start(ServerConfig)` → [`ServerHandle`] (bound address, graceful shutdown);
//!   plain HTTP only on loopback, TLS via rustls otherwise.
//! - [`store`]: the one storage interface ([`store::Store`]) and its SQLite implementation.
//! - [`routes`]: the provider, agent and admin APIs, every error a JSON `{"error":…}`.
//! - [`auth`]: bearer tokens (hash lookup, constant-time check, expiry, revocation, scopes).
//! - [`sync`]: the change feed that wakes long-polls.
//! - [`dev`]: the bootstrap of `fyvault dev`.
//!
//! Idempotency keys are stored only as hashes, scoped per provider; the request fingerprint
//! they are compared with is a hash keyed by the idempotency key itself, so a stolen database
//! does not let anyone test guesses of a plaintext value without also knowing the key.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

pub mod auth;
pub mod clock;
pub mod dev;
pub mod error;
pub mod extract;
pub mod fanout;
mod lane;
pub mod limits;
mod listener;
pub mod routes;
pub mod server;
pub mod store;
pub mod studio;
pub mod sync;
pub mod token_cache;
pub mod trim;

pub use error::{ApiError, VaultError};
pub use server::{ServerConfig, ServerHandle, TlsFiles, start, start_with_store};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn store::Store>,
    pub feed: Arc<dyn sync::ChangeFeed>,
    pub trusted_proxies: Arc<Vec<IpAddr>>,
    /// Flips to true when the server stops (long-polls answer at once).
    pub shutdown: watch::Receiver<bool>,
    /// Parked long-polls, and the shared read that answers them.
    pub fanout: Arc<fanout::Fanout>,
    /// The connection and long-poll caps ([`limits::Limits`]).
    pub admission: Arc<limits::Admission>,
    /// The vault speaks TLS (the studio's cookie is then `Secure`).
    pub tls: bool,
    /// Base of connect links, without a trailing `/`.
    pub public_url: Arc<str>,
    /// Verified tokens, so a re-poll reads no store ([`token_cache::TokenCache`]).
    pub tokens: Arc<token_cache::TokenCache>,
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

/// Creates an admin token directly in the store (no server needed: `server init`, tests).
pub async fn bootstrap_admin_token(
    store: &dyn store::Store,
    label: &str,
    actor: &str,
) -> Result<crate::api::IssuedToken, store::StoreError> {
    let (issued, record) = routes::admin::new_token(
        crate::crypto::TokenKind::Admin,
        None,
        None,
        None,
        &crate::api::CreateTokenRequest {
            label: Some(label.to_string()),
            expires_in_seconds: None,
        },
    )
    .map_err(|e| store::StoreError::Backend(e.message))?;
    store
        .create_token(
            record,
            store::AuditContext {
                actor: actor.to_string(),
                source_ip: None,
            },
        )
        .await?;
    Ok(issued)
}
