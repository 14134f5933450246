//! User-vault secrets on the socket (issue 14): reading one user's value
//! (`GET /v1/secrets/NAME?user=ID`, from `routes::read_value`) and `POST /v1/connect`, which
//! asks the vault for a connect link so the app can send its user to supply their own value.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/secrets/NAME?user=ID` | that user's value, as any read; 404 `user_secret_missing` with `"connect": true` when they have none |
//! | `GET /v1/secrets/NAME` on a user-vault secret | 400 `user_required` |
//! | `POST /v1/connect` `{"secret_name","user_id"}` | `{"url","expires_at"}`: a single-use link valid 1 hour |
//!
//! The same access rule as reading the secret decides who may mint a link (the read gate's
//! policy step: a refusal is a 403 and a `denied` event); the agent asks the vault with its own
//! token. Reads of user values go through the gate like every read (`crate::agent::gate`);
//! this module only words its user-vault refusals.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::routes::error;
use super::{Ctx, Peer};
use crate::agent::gate::{ReadRequest, Refusal};
use crate::api::{AccessVia, ConnectLinkRequest, valid_secret_name, valid_user_id};
use crate::client::ClientError;

/// Largest body `POST /v1/connect` reads.
pub(super) const MAX_BODY: usize = 4096;

/// The answer to a refused read of the user-vault secret `name`: `user_required` without a
/// user, `user_secret_missing` (with `"connect": true`) when they have none.
pub(super) fn user_refusal(name: &str, refusal: Refusal) -> Response {
    match refusal {
        Refusal::UserRequired => error(
            StatusCode::BAD_REQUEST,
            "user_required",
            format!(
                "{name} is a user-vault secret: each app user has their own value; ask for one \
                 with ?user=ID"
            ),
        ),
        Refusal::UserMissing => missing(name),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "undeliverable",
            format!(
                "this user's {name} cannot be opened with this agent's environment key (sealed \
                 to another key?)"
            ),
        ),
    }
}

/// 404 `user_secret_missing` with `"connect": true`: the app shows its "Connect your API key"
/// step (a link from `POST /v1/connect`).
fn missing(name: &str) -> Response {
    let body = serde_json::json!({
        "error": {
            "code": "user_secret_missing",
            "message": format!(
                "this user has not connected their {name} yet: get them a connect link \
                 (POST /v1/connect)"
            ),
            "connect": true,
        }
    });
    let mut r = (StatusCode::NOT_FOUND, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /v1/connect` `{"secret_name","user_id"}` → `{"url","expires_at"}`.
pub(super) async fn connect(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Json<ConnectLinkRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "send {\"secret_name\": NAME, \"user_id\": ID} as JSON",
        );
    };
    if !valid_secret_name(&req.secret_name) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "secret names match ^[A-Z_][A-Z0-9_]{0,127}$",
        );
    }
    if !valid_user_id(&req.user_id) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_user",
            "user ids match ^[A-Za-z0-9._@-]{1,128}$",
        );
    }
    let caller = &peer.caller;
    let read =
        ReadRequest::new(caller, AccessVia::Socket, &req.secret_name).user(Some(&req.user_id));
    if ctx.state.gate().authorize(&read).is_err() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "uid {} may not read {} and so may not ask for its connect links",
                caller.uid, req.secret_name
            ),
        );
    }
    if !ctx.state.users.is_user_policy(&req.secret_name) {
        return error(
            StatusCode::CONFLICT,
            "not_user_vault",
            format!(
                "{} is not a user-vault secret in this environment: its one value is shared, \
                 there is nothing for a user to connect",
                req.secret_name
            ),
        );
    }
    let Some(c) = ctx.state.users.connector() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unreachable",
            "this agent has no vault connection",
        );
    };
    match c.client.connect_link(&c.org, &c.env, &req).await {
        Ok(link) => {
            let mut r = Json(link).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(ClientError::Unreachable(why)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unreachable",
            format!("the vault cannot be reached to make a connect link: {why}"),
        ),
        Err(e) => {
            tracing::warn!(secret = %req.secret_name, "the vault refused a connect link: {e}");
            error(
                StatusCode::BAD_GATEWAY,
                "vault_refused",
                format!("the vault refused to make a connect link: {e}"),
            )
        }
    }
}
