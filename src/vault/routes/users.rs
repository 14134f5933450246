//! Per-secret policy, the admin secret listing and connect links (issue 14).
//!
//! | route | token | handler |
//! |---|---|---|
//! | `PUT  /orgs/:org/environments/:env/secrets/:name/policy` | admin | [`set_policy`] |
//! | `GET  /orgs/:org/environments/:env/secrets` | admin | [`list_secrets`] |
//! | `POST /orgs/:org/environments/:env/connect-links` | agent of `env` | [`mint_link`] |
//! | `GET  /connect/:token` | the link token | [`link_info`] |
//! | `POST /connect/:token` | the link token | [`link_submit`] |
//!
//! A connect link's token is its only credential: single use, valid [`LINK_LIFETIME_MS`],
//! scoped to one org, environment, secret and user, stored as its SHA-256 hash only, and
//! never logged (the request log masks it).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;

use crate::api::{
    ConnectLink, ConnectLinkInfo, ConnectLinkRequest, ConnectStored, ConnectSubmit, PolicyResponse,
    SecretList, SecretListing, SecretPolicy, SecretState, SetPolicyRequest, UserCounts,
};
use crate::crypto;
use crate::vault::AppState;
use crate::vault::auth::{Auth, source_ip};
use crate::vault::clock::{fmt_ms, now_ms};
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, P};
use crate::vault::routes::provider::{
    check_environment, check_secret_name, check_user_id, check_value,
};
use crate::vault::store::{
    AuditContext, LinkRecord, SetPolicy, StoreError, WriteKind, WriteVersion,
};

/// How long a connect link can be used (1 hour).
pub const LINK_LIFETIME_MS: i64 = 3600 * 1000;
/// The window of `users.read_7d` in the listing.
const READS_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

/// `PUT …/environments/:env/secrets/:name/policy` (admin): `{"policy":"creator"|"user"}`.
pub async fn set_policy(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env, name)): P<(String, String, String)>,
    JsonBody(req): JsonBody<SetPolicyRequest>,
) -> Result<Json<PolicyResponse>, ApiError> {
    p.require_admin(&state).await?;
    check_environment(&env)?;
    check_secret_name(&name)?;
    let outcome = state
        .store
        .set_policy(SetPolicy {
            org_id: org.clone(),
            environment: env.clone(),
            secret_name: name.clone(),
            policy: req.policy,
            now_ms: now_ms(),
            audit: p.audit(),
        })
        .await
        .map_err(env_not_found)?;
    if let Some(rev) = outcome.revision {
        state.feed.publish(&org, &env, rev);
        tracing::info!(org, env, secret = %name, policy = req.policy.as_str(), "policy changed");
    }
    Ok(Json(PolicyResponse {
        secret_name: name,
        environment: env,
        policy: req.policy,
    }))
}

/// A missing environment (or org) says so.
fn env_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound("environment") => {
            ApiError::not_found("environment_not_found", "no such environment in this org")
        }
        e => e.into(),
    }
}

/// `GET …/environments/:env/secrets` (admin): every secret name with its policy, its creator
/// value's version and state, and for user-vault secrets how many users hold a value and how
/// many distinct users' values were read in the last 7 days. Never a value.
pub async fn list_secrets(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
) -> Result<Json<SecretList>, ApiError> {
    p.require_admin(&state).await?;
    check_environment(&env)?;
    let rows = state
        .store
        .list_secrets(&org, &env, now_ms() - READS_WINDOW_MS)
        .await
        .map_err(env_not_found)?;
    let secrets = rows
        .into_iter()
        .map(|s| {
            let (version, st, provider_id, updated_at) = match s.creator {
                Some((v, st, prov, ms)) => (
                    Some(v),
                    Some(if st == "active" {
                        SecretState::Active
                    } else {
                        SecretState::Revoked
                    }),
                    Some(prov),
                    Some(fmt_ms(ms)),
                ),
                None => (None, None, None, None),
            };
            SecretListing {
                secret_name: s.name,
                policy: s.policy,
                version,
                state: st,
                provider_id,
                updated_at,
                users: (s.policy == SecretPolicy::User).then_some(UserCounts {
                    with_value: s.users_with_value,
                    read_7d: s.users_read,
                }),
            }
        })
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// `POST …/environments/:env/connect-links` (the environment's agent token):
/// `{"secret_name","user_id"}` → `{"url","expires_at"}`.
pub async fn mint_link(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
    JsonBody(req): JsonBody<ConnectLinkRequest>,
) -> Result<Json<ConnectLink>, ApiError> {
    p.require_agent(&state, &org, Some(&env)).await?;
    check_environment(&env)?;
    check_secret_name(&req.secret_name)?;
    check_user_id(&req.user_id)?;
    let token = crypto::generate_link_token();
    let now = now_ms();
    let link = LinkRecord {
        hash: crypto::hash_token(token.expose()),
        link_id: crypto::random_id("link"),
        org_id: org.clone(),
        environment: env.clone(),
        secret_name: req.secret_name,
        user_id: req.user_id,
        created_ms: now,
        expires_ms: now + LINK_LIFETIME_MS,
        used_ms: None,
    };
    let (link_id, expires_ms) = (link.link_id.clone(), link.expires_ms);
    state
        .store
        .create_link(link, p.audit())
        .await
        .map_err(env_not_found)?;
    tracing::info!(org, env, link_id, "connect link created");
    // Link tokens are ASCII by construction.
    let token = std::str::from_utf8(token.expose()).unwrap_or_default();
    Ok(Json(ConnectLink {
        url: format!("{}/connect/{token}", state.public_url),
        expires_at: fmt_ms(expires_ms),
    }))
}

/// The link a presented token names, whatever its state; 404 `link_unknown` otherwise.
async fn find_link(state: &AppState, token: &str) -> Result<LinkRecord, ApiError> {
    let unknown = || {
        ApiError::not_found(
            "link_unknown",
            "no such connect link; ask the app for a new one",
        )
    };
    if !crypto::valid_link_token(token) {
        return Err(unknown());
    }
    state
        .store
        .find_link(&crypto::hash_token(token.as_bytes()))
        .await?
        .ok_or_else(unknown)
}

/// `GET /connect/:token`: what the connect page needs (the environment's public key to seal
/// to), or 410 `link_used` / `link_expired`, 404 `link_unknown`.
pub async fn link_info(
    State(state): State<AppState>,
    P(token): P<String>,
) -> Result<Json<ConnectLinkInfo>, ApiError> {
    let link = find_link(&state, &token).await?;
    link.usable(now_ms())?;
    let env = state
        .store
        .get_environment(&link.org_id, &link.environment)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("environment_not_found", "the link's environment is gone")
        })?;
    Ok(Json(ConnectLinkInfo {
        org_id: link.org_id,
        environment: link.environment,
        secret_name: link.secret_name,
        user_id: link.user_id,
        public_key: env.public_key,
        expires_at: fmt_ms(link.expires_ms),
    }))
}

/// The caller's address as the audit trail records it.
pub struct SourceIp(Option<String>);

impl FromRequestParts<AppState> for SourceIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(SourceIp(
            source_ip(parts, &state.trusted_proxies).map(|ip| ip.to_string()),
        ))
    }
}

/// `POST /connect/:token` with `{"sealed_value"}` (sealed in the browser to the environment
/// key, AAD as every value): stores it as the link's user's value; the link is then used.
pub async fn link_submit(
    State(state): State<AppState>,
    SourceIp(ip): SourceIp,
    P(token): P<String>,
    JsonBody(req): JsonBody<ConnectSubmit>,
) -> Result<Json<ConnectStored>, ApiError> {
    let link = find_link(&state, &token).await?;
    let now = now_ms();
    link.usable(now)?;
    check_value(None, Some(&req.sealed_value))?;
    let write = WriteVersion {
        org_id: link.org_id.clone(),
        environment: link.environment.clone(),
        secret_name: link.secret_name.clone(),
        provider_id: String::new(),
        kind: WriteKind::Push,
        sealed_value: req.sealed_value,
        grace_seconds: None,
        idempotency: None,
        user_id: Some(link.user_id.clone()),
        now_ms: now,
        audit: AuditContext {
            actor: format!("connect:{}", link.link_id),
            source_ip: ip,
        },
    };
    let outcome = state.store.use_link(&link.hash, write).await?;
    if let Some(rev) = outcome.revision {
        state.feed.publish(&link.org_id, &link.environment, rev);
    }
    tracing::info!(
        org = %link.org_id,
        env = %link.environment,
        secret = %link.secret_name,
        link_id = %link.link_id,
        version = outcome.response.version,
        "user value stored through a connect link"
    );
    Ok(Json(ConnectStored {
        secret_name: link.secret_name,
        user_id: link.user_id,
        version: outcome.response.version,
    }))
}

/// A request path as logged: a connect link's token (its credential) masked.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.find("/connect/") {
        Some(i) => format!("{}/connect/…", &path[..i]).into(),
        None => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_are_masked_in_logged_paths() {
        let t = crypto::generate_link_token();
        let t = std::str::from_utf8(t.expose()).unwrap().to_string();
        assert!(crypto::valid_link_token(&t));
        assert!(!crypto::valid_link_token(&t.replace("fvlink_", "fvprov_")));
        let path = format!("/api/v1/connect/{t}");
        let logged = loggable_path(&path);
        assert!(!logged.contains(&t));
        assert_eq!(logged, "/api/v1/connect/…");
        assert_eq!(loggable_path("/api/v1/health"), "/api/v1/health");
    }
}
