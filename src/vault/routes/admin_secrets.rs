//! Secret writes by an admin (the studio's add, bulk import, rotate and revoke): the provider
//! API's own write and revoke paths ([`provider::write_as`], [`provider::revoke_as`]) — the
//! same input rules, sealing, versions and grace — with the admin as actor (`admin:<token id>`
//! in the audit trail) and owner of the names it creates. An admin may write any name.
//!
//! | route | body | effect |
//! |---|---|---|
//! | `POST /admin/orgs/:org/environments/:env/secrets` | `{secret_name, sealed_value or value, only_new?}` | push; `only_new: true` → 409 `secret_exists` when the name has an active value (the studio never overwrites) |
//! | `PATCH /admin/orgs/:org/environments/:env/secrets/:name` | `{sealed_value or value, grace_period_seconds?}` | rotate (grace defaults to the environment's) |
//! | `DELETE /admin/orgs/:org/secrets/:name` | none | revoke in every environment of the org, as a provider's revoke |

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use crate::api::{RevokeResponse, SecretState};
use crate::secret::Secret;
use crate::vault::AppState;
use crate::vault::auth::{Auth, Principal};
use crate::vault::clock::now_ms;
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, P};
use crate::vault::routes::provider::{self, Write, check_environment, check_secret_name};
use crate::vault::store::{ADMIN_OWNER_PREFIX, WriteKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminPush {
    secret_name: String,
    #[serde(default)]
    value: Option<Secret>,
    #[serde(default)]
    sealed_value: Option<String>,
    #[serde(default)]
    only_new: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRotate {
    #[serde(default)]
    value: Option<Secret>,
    #[serde(default)]
    sealed_value: Option<String>,
    #[serde(default)]
    grace_period_seconds: Option<u64>,
}

/// The owner an admin writes as.
fn owner(p: &Principal) -> String {
    format!("{ADMIN_OWNER_PREFIX}{}", p.token_id)
}

/// `POST /api/v1/admin/orgs/:org/environments/:env/secrets`
pub async fn push(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AdminPush>,
) -> Result<Response, ApiError> {
    p.require_admin(&state).await?;
    check_secret_name(&req.secret_name)?;
    check_environment(&env)?;
    if req.only_new {
        let current = state.store.sync(&org, &env, 0, now_ms()).await?;
        let taken = current
            .secrets
            .iter()
            .any(|s| s.name == req.secret_name && s.state == SecretState::Active);
        if taken {
            return Err(ApiError::conflict(
                "secret_exists",
                "this name already has a value here; rotate it instead",
            ));
        }
    }
    let w = Write {
        kind: WriteKind::Push,
        secret_name: req.secret_name,
        environment: env,
        value: req.value,
        sealed_value: req.sealed_value,
        grace: None,
        user_id: None,
    };
    provider::write_as(&state, &p, &org, &owner(&p), &headers, w).await
}

/// `PATCH /api/v1/admin/orgs/:org/environments/:env/secrets/:name`
pub async fn rotate(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env, name)): P<(String, String, String)>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AdminRotate>,
) -> Result<Response, ApiError> {
    p.require_admin(&state).await?;
    let w = Write {
        kind: WriteKind::Rotate,
        secret_name: name,
        environment: env,
        value: req.value,
        sealed_value: req.sealed_value,
        grace: req.grace_period_seconds,
        user_id: None,
    };
    provider::write_as(&state, &p, &org, &owner(&p), &headers, w).await
}

/// `DELETE /api/v1/admin/orgs/:org/secrets/:name`
pub async fn revoke(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, name)): P<(String, String)>,
) -> Result<Json<RevokeResponse>, ApiError> {
    p.require_admin(&state).await?;
    provider::revoke_as(&state, &p, &org, &owner(&p), name, None).await
}
