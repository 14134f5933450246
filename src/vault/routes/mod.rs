//! The HTTP surface. Every route is served under `/api/v1` and under the `/v1` alias.
//!
//! | route | token | handler |
//! |---|---|---|
//! | `GET  /health` | none | [`admin::health`] |
//! | `GET  /whoami` | any | [`admin::whoami`] |
//! | `POST /orgs/:org/providers/:id/push` | provider | [`provider::push`] |
//! | `PATCH /orgs/:org/providers/:id` | provider | [`provider::rotate`] |
//! | `DELETE /orgs/:org/providers/:id` | provider | [`provider::revoke`] |
//! | `GET  /orgs/:org/environments/:env/public-key` | provider/agent/admin | [`provider::public_key`] |
//! | `GET  /orgs/:org/environments/:env/sync` | agent | [`agent::sync`] |
//! | `POST /orgs/:org/audit/events` | agent | [`agent::ingest`] |
//! | `GET  /orgs/:org/audit` | admin | [`admin::query_audit`] |
//! | `PUT  /orgs/:org/environments/:env/secrets/:name/policy` | admin | [`users::set_policy`] |
//! | `GET  /orgs/:org/environments/:env/secrets` | admin | [`users::list_secrets`] |
//! | `POST /orgs/:org/environments/:env/connect-links` | agent | [`users::mint_link`] |
//! | `GET/POST /connect/:token` | the link token | [`users::link_info`], [`users::link_submit`] |
//! | `GET  /admin/stats` | admin | connections and long-polls held, caps, shared reads |
//! | `/admin/…` | admin | orgs, environments, providers, tokens, audit, secrets ([`admin_secrets`]) |
//!
//! Admin calls may also be authenticated by a studio session cookie ([`crate::vault::studio`]).

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post, put};

use crate::vault::AppState;
use crate::vault::error::ApiError;

pub mod admin;
pub mod admin_secrets;
pub mod agent;
pub mod provider;
pub mod users;

async fn not_found() -> ApiError {
    ApiError::not_found("no_such_route", "no such API route")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept this method",
    )
}

fn api() -> Router<AppState> {
    Router::new()
        .route("/health", get(admin::health))
        .route("/whoami", get(admin::whoami))
        .route("/orgs/{org}/providers/{id}/push", post(provider::push))
        .route(
            "/orgs/{org}/providers/{id}",
            patch(provider::rotate).delete(provider::revoke),
        )
        .route(
            "/orgs/{org}/providers/{id}/undeliverable",
            get(provider::undeliverable),
        )
        .route(
            "/orgs/{org}/environments/{env}/public-key",
            get(provider::public_key),
        )
        .route("/orgs/{org}/environments/{env}/sync", get(agent::sync))
        .route(
            "/orgs/{org}/environments/{env}/secrets",
            get(users::list_secrets),
        )
        .route(
            "/orgs/{org}/environments/{env}/secrets/{name}/policy",
            put(users::set_policy),
        )
        .route(
            "/orgs/{org}/environments/{env}/connect-links",
            post(users::mint_link),
        )
        .route(
            "/connect/{token}",
            get(users::link_info).post(users::link_submit),
        )
        .route("/orgs/{org}/audit/events", post(agent::ingest))
        .route("/orgs/{org}/audit", get(admin::query_audit))
        .route("/admin/orgs", post(admin::create_org).get(admin::list_orgs))
        .route(
            "/admin/orgs/{org}/environments",
            post(admin::create_environment).get(admin::list_environments),
        )
        .route(
            "/admin/orgs/{org}/environments/{env}",
            patch(admin::update_environment),
        )
        .route(
            "/admin/orgs/{org}/environments/{env}/agent-tokens",
            post(admin::create_agent_token),
        )
        .route(
            "/admin/orgs/{org}/providers",
            post(admin::create_provider).get(admin::list_providers),
        )
        .route(
            "/admin/orgs/{org}/providers/{id}/tokens",
            post(admin::create_provider_token),
        )
        .route(
            "/admin/tokens",
            post(admin::create_admin_token).get(admin::list_tokens),
        )
        .route(
            "/admin/tokens/{token_id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route(
            "/admin/orgs/{org}/environments/{env}/secrets",
            post(admin_secrets::push),
        )
        .route(
            "/admin/orgs/{org}/environments/{env}/secrets/{name}",
            patch(admin_secrets::rotate),
        )
        .route(
            "/admin/orgs/{org}/secrets/{name}",
            axum::routing::delete(admin_secrets::revoke),
        )
        .route("/admin/audit", get(admin::query_audit_all))
        .route("/admin/stats", get(admin::stats))
        .method_not_allowed_fallback(method_not_allowed)
}

/// One log line per request: method, path (no query), status, duration, peer. Never bodies,
/// headers or tokens.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = users::loggable_path(req.uri().path()).into_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let start = Instant::now();
    let resp = next.run(req).await;
    log_line(&method, &path, resp.status(), start, &peer);
    resp
}

/// The request's log line (also written by [`crate::vault::lane`] for the syncs it serves).
pub(crate) fn log_line(
    method: &axum::http::Method,
    path: &str,
    status: StatusCode,
    start: Instant,
    peer: &str,
) {
    let ms = start.elapsed().as_millis() as u64;
    // An agent's long-poll answers every `sync_wait_seconds` per agent: routine, at debug.
    if routine(path, status) {
        tracing::debug!(%method, path, status = status.as_u16(), ms, peer, "request");
    } else {
        tracing::info!(%method, path, status = status.as_u16(), ms, peer, "request");
    }
}

/// A request not worth an INFO line: a successful agent sync (long-poll).
fn routine(path: &str, status: axum::http::StatusCode) -> bool {
    status.is_success() && path.ends_with("/sync")
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v1", api())
        .nest("/v1", api())
        .merge(crate::vault::studio::router())
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    #[test]
    fn only_successful_syncs_are_routine() {
        let sync = "/api/v1/orgs/org_a/environments/production/sync";
        assert!(super::routine(sync, StatusCode::OK));
        assert!(!super::routine(sync, StatusCode::UNAUTHORIZED));
        assert!(!super::routine(
            "/api/v1/orgs/org_a/providers/p/push",
            StatusCode::CREATED
        ));
    }
}
