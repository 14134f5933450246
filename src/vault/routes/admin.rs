//! The admin API (admin token): orgs, environments, providers, tokens, audit queries; plus
//! `whoami` (any token) and `health` (no token).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::api::{
    AuditQuery, AuditQueryResponse, CreateEnvironmentRequest, CreateOrgRequest,
    CreateProviderRequest, CreateTokenRequest, DEFAULT_GRACE_SECONDS, EnvironmentInfo,
    EnvironmentList, IssuedToken, MAX_GRACE_SECONDS, OrgInfo, OrgList, ProviderCreated,
    ProviderInfo, ProviderList, TokenInfo, TokenList, TokenListQuery, TokenRevoked,
    UpdateEnvironmentRequest, WhoAmI,
};
use crate::crypto::{self, CryptoError, PublicKey, TokenKind};
use crate::vault::AppState;
use crate::vault::auth::{Auth, Principal};
use crate::vault::clock::{fmt_ms, now_ms, parse_rfc3339};
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, P, Q};
use crate::vault::routes::provider::{check_environment, check_secret_name};
use crate::vault::store::{AuditFilter, Environment, Org, Provider, TokenFilter, TokenRecord};

/// Longest token lifetime an admin may ask for (10 years).
const MAX_TOKEN_LIFETIME_SECONDS: u64 = 10 * 365 * 24 * 3600;
const DEFAULT_AUDIT_LIMIT: u32 = 1000;
const MAX_AUDIT_LIMIT: u32 = 10_000;

fn check_label(field: &str, s: &str) -> Result<(), ApiError> {
    if s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            &format!("invalid_{field}"),
            format!("{field} must be 1 to 128 printable characters"),
        ));
    }
    Ok(())
}

fn check_grace(g: u64) -> Result<(), ApiError> {
    if g > MAX_GRACE_SECONDS {
        return Err(ApiError::bad_request(
            "invalid_grace_period",
            format!("grace periods are between 0 and {MAX_GRACE_SECONDS} seconds"),
        ));
    }
    Ok(())
}

pub fn env_info(e: Environment) -> EnvironmentInfo {
    EnvironmentInfo {
        org_id: e.org_id,
        environment: e.name,
        public_key: e.public_key,
        default_grace_seconds: e.default_grace_seconds,
        revision: e.revision,
        created_at: fmt_ms(e.created_ms),
    }
}

fn org_info(o: Org) -> OrgInfo {
    OrgInfo {
        org_id: o.org_id,
        name: o.name,
        created_at: fmt_ms(o.created_ms),
    }
}

pub fn token_info(t: TokenRecord) -> TokenInfo {
    TokenInfo {
        token_id: t.token_id,
        kind: t.kind,
        org_id: t.org_id,
        environment: t.environment,
        provider_id: t.provider_id,
        label: t.label,
        created_at: fmt_ms(t.created_ms),
        expires_at: t.expires_ms.map(fmt_ms),
        revoked_at: t.revoked_ms.map(fmt_ms),
    }
}

/// A fresh token and its stored record (hash only). The caller stores the record.
pub fn new_token(
    kind: TokenKind,
    org_id: Option<String>,
    environment: Option<String>,
    provider_id: Option<String>,
    req: &CreateTokenRequest,
) -> Result<(IssuedToken, TokenRecord), ApiError> {
    if let Some(label) = &req.label {
        check_label("label", label)?;
        if label.starts_with(crate::vault::studio::session::SESSION_LABEL_PREFIX) {
            return Err(ApiError::bad_request(
                "invalid_label",
                "labels starting with `studio session of ` are reserved for studio sessions",
            ));
        }
    }
    if let Some(secs) = req.expires_in_seconds
        && (secs == 0 || secs > MAX_TOKEN_LIFETIME_SECONDS)
    {
        return Err(ApiError::bad_request(
            "invalid_expiry",
            format!("expires_in_seconds must be between 1 and {MAX_TOKEN_LIFETIME_SECONDS}"),
        ));
    }
    let now = now_ms();
    let expires_ms = req
        .expires_in_seconds
        .map(|s| now.saturating_add(s as i64 * 1000));
    let token = crypto::generate_token(kind);
    let record = TokenRecord {
        token_id: crypto::random_id("tok"),
        kind,
        hash: crypto::hash_token(token.expose()),
        org_id,
        environment,
        provider_id,
        label: req.label.clone(),
        created_ms: now,
        expires_ms,
        revoked_ms: None,
    };
    let issued = IssuedToken {
        token_id: record.token_id.clone(),
        kind,
        token,
        org_id: record.org_id.clone(),
        environment: record.environment.clone(),
        provider_id: record.provider_id.clone(),
        label: record.label.clone(),
        created_at: fmt_ms(now),
        expires_at: expires_ms.map(fmt_ms),
    };
    Ok((issued, record))
}

async fn admin(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    p.require_admin(state).await
}

async fn org_must_exist(state: &AppState, org: &str) -> Result<(), ApiError> {
    match state.store.get_org(org).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("org_not_found", "org not found")),
    }
}

/// `GET /api/v1/health`
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Include the allocator's heap counters (costly on a fragmented heap).
    #[serde(default)]
    heap: bool,
}

/// `GET /api/v1/admin/stats` (admin token): connections and long-polls held now, their caps,
/// the shared sync reads made so far, and the token cache's entries, hits and misses.
pub async fn stats(
    State(state): State<AppState>,
    Auth(p): Auth,
    Q(q): Q<StatsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_admin(&state).await?;
    let a = &state.admission;
    let (hits, misses) = state.tokens.hits_misses();
    // Only when asked: glibc walks every free block of every arena under the arena's lock.
    let heap = if q.heap {
        tokio::task::spawn_blocking(crate::vault::trim::heap_usage)
            .await
            .ok()
            .flatten()
            .map(|(in_use, held)| serde_json::json!({"in_use_bytes": in_use, "held_bytes": held}))
    } else {
        None
    };
    Ok(Json(serde_json::json!({
        "connections": a.open_connections(),
        "max_connections": a.limits.max_connections,
        "long_polls": a.parked_long_polls(),
        "max_long_polls": a.limits.max_long_polls,
        "shared_sync_reads": state.fanout.shared_reads(),
        "own_sync_reads": state.fanout.own_reads(),
        "lane": {
            "served": a.lane.counts().0,
            "handed_to_hyper": a.lane.counts().1,
        },
        "heap": heap,
        "token_cache": {
            "entries": state.tokens.len(),
            "hits": hits,
            "misses": misses,
        },
    })))
}

/// `GET /api/v1/whoami`
pub async fn whoami(Auth(p): Auth) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: p.token_id,
        kind: p.kind,
        org_id: p.org_id,
        environment: p.environment,
        provider_id: p.provider_id,
    })
}

/// `POST /api/v1/admin/orgs`
pub async fn create_org(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(req): JsonBody<CreateOrgRequest>,
) -> Result<(StatusCode, Json<OrgInfo>), ApiError> {
    admin(&state, &p).await?;
    check_label("name", &req.name)?;
    let org = Org {
        org_id: crypto::random_id("org"),
        name: req.name,
        created_ms: now_ms(),
    };
    let org = state.store.create_org(org, p.audit()).await?;
    Ok((StatusCode::CREATED, Json(org_info(org))))
}

/// `GET /api/v1/admin/orgs`
pub async fn list_orgs(
    State(state): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<OrgList>, ApiError> {
    admin(&state, &p).await?;
    let orgs = state.store.list_orgs().await?;
    Ok(Json(OrgList {
        orgs: orgs.into_iter().map(org_info).collect(),
    }))
}

/// `POST /api/v1/admin/orgs/:org_id/environments`
pub async fn create_environment(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
    JsonBody(req): JsonBody<CreateEnvironmentRequest>,
) -> Result<(StatusCode, Json<EnvironmentInfo>), ApiError> {
    admin(&state, &p).await?;
    check_environment(&req.name)?;
    let pk = PublicKey::from_base64(&req.public_key).map_err(|e| match e {
        CryptoError::LowOrderPublicKey => ApiError::bad_request(
            "invalid_public_key",
            "public_key is a low-order X25519 point (e.g. all zeros): `fyvault admin env \
             create` generates a usable key pair",
        ),
        _ => ApiError::bad_request(
            "invalid_public_key",
            "public_key must be base64 of a 32-byte X25519 public key",
        ),
    })?;
    let grace = req.default_grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    check_grace(grace)?;
    let env = Environment {
        org_id: org,
        name: req.name,
        public_key: pk.to_base64(),
        default_grace_seconds: grace,
        revision: 0,
        created_ms: now_ms(),
    };
    let env = state.store.create_environment(env, p.audit()).await?;
    Ok((StatusCode::CREATED, Json(env_info(env))))
}

/// `PATCH /api/v1/admin/orgs/:org_id/environments/:env`
pub async fn update_environment(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
    JsonBody(req): JsonBody<UpdateEnvironmentRequest>,
) -> Result<Json<EnvironmentInfo>, ApiError> {
    admin(&state, &p).await?;
    check_environment(&env)?;
    check_grace(req.default_grace_seconds)?;
    let e = state
        .store
        .set_environment_grace(&org, &env, req.default_grace_seconds)
        .await?;
    Ok(Json(env_info(e)))
}

/// `GET /api/v1/admin/orgs/:org_id/environments`
pub async fn list_environments(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
) -> Result<Json<EnvironmentList>, ApiError> {
    admin(&state, &p).await?;
    org_must_exist(&state, &org).await?;
    let envs = state.store.list_environments(&org).await?;
    Ok(Json(EnvironmentList {
        environments: envs.into_iter().map(env_info).collect(),
    }))
}

/// `POST /api/v1/admin/orgs/:org_id/providers`
pub async fn create_provider(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
    JsonBody(req): JsonBody<CreateProviderRequest>,
) -> Result<(StatusCode, Json<ProviderCreated>), ApiError> {
    admin(&state, &p).await?;
    check_label("name", &req.name)?;
    let provider = Provider {
        org_id: org.clone(),
        provider_id: crypto::random_id("prov"),
        name: req.name,
        created_ms: now_ms(),
    };
    let (issued, record) = new_token(
        TokenKind::Provider,
        Some(org),
        None,
        Some(provider.provider_id.clone()),
        &CreateTokenRequest {
            label: None,
            expires_in_seconds: req.expires_in_seconds,
        },
    )?;
    let provider = state
        .store
        .create_provider(provider, record, p.audit())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProviderCreated {
            org_id: provider.org_id,
            provider_id: provider.provider_id,
            name: provider.name,
            created_at: fmt_ms(provider.created_ms),
            token: issued,
        }),
    ))
}

/// `GET /api/v1/admin/orgs/:org_id/providers`
pub async fn list_providers(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
) -> Result<Json<ProviderList>, ApiError> {
    admin(&state, &p).await?;
    org_must_exist(&state, &org).await?;
    let list = state.store.list_providers(&org).await?;
    Ok(Json(ProviderList {
        providers: list
            .into_iter()
            .map(|p| ProviderInfo {
                org_id: p.org_id,
                provider_id: p.provider_id,
                name: p.name,
                created_at: fmt_ms(p.created_ms),
            })
            .collect(),
    }))
}

/// `POST /api/v1/admin/orgs/:org_id/providers/:provider_id/tokens`
pub async fn create_provider_token(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, provider)): P<(String, String)>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    admin(&state, &p).await?;
    if state.store.get_provider(&org, &provider).await?.is_none() {
        return Err(ApiError::not_found(
            "provider_not_found",
            "no such provider in this org",
        ));
    }
    let (issued, record) = new_token(TokenKind::Provider, Some(org), None, Some(provider), &req)?;
    state.store.create_token(record, p.audit()).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `POST /api/v1/admin/orgs/:org_id/environments/:env/agent-tokens`
pub async fn create_agent_token(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    admin(&state, &p).await?;
    check_environment(&env)?;
    if state.store.get_environment(&org, &env).await?.is_none() {
        return Err(ApiError::not_found(
            "environment_not_found",
            "no such environment in this org",
        ));
    }
    let (issued, record) = new_token(TokenKind::Agent, Some(org), Some(env), None, &req)?;
    state.store.create_token(record, p.audit()).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `POST /api/v1/admin/tokens`: a further admin token.
pub async fn create_admin_token(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    admin(&state, &p).await?;
    let (issued, record) = new_token(TokenKind::Admin, None, None, None, &req)?;
    state.store.create_token(record, p.audit()).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `GET /api/v1/admin/tokens?org_id=&kind=&include_revoked=`
pub async fn list_tokens(
    State(state): State<AppState>,
    Auth(p): Auth,
    Q(q): Q<TokenListQuery>,
) -> Result<Json<TokenList>, ApiError> {
    admin(&state, &p).await?;
    let tokens = state
        .store
        .list_tokens(TokenFilter {
            org_id: q.org_id,
            kind: q.kind,
            include_revoked: q.include_revoked.unwrap_or(false),
        })
        .await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(token_info).collect(),
    }))
}

/// `DELETE /api/v1/admin/tokens/:token_id`
pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(token_id): P<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    admin(&state, &p).await?;
    let t = state
        .store
        .revoke_token(&token_id, now_ms(), p.audit())
        .await?;
    // Other instances forget it through the database's notification.
    state.tokens.forget(&t.token_id);
    tracing::info!(token_id = %t.token_id, by = %p.actor(), "token revoked");
    Ok(Json(TokenRevoked {
        token_id: t.token_id,
        revoked_at: fmt_ms(t.revoked_ms.unwrap_or_default()),
    }))
}

fn audit_filter(org_id: Option<String>, q: AuditQuery) -> Result<AuditFilter, ApiError> {
    if let Some(s) = &q.secret {
        check_secret_name(s)?;
    }
    if let Some(e) = &q.environment {
        check_environment(e)?;
    }
    if let Some(a) = &q.action
        && (a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    {
        return Err(ApiError::bad_request(
            "invalid_action",
            "action is a lowercase word such as issued, rotated, revoked, accessed, denied",
        ));
    }
    let time = |field: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                parse_rfc3339(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_time",
                        format!("{field} must be an RFC 3339 time such as 2025-01-31T12:00:00Z"),
                    )
                })
            })
            .transpose()
    };
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_AUDIT_LIMIT}"),
        ));
    }
    Ok(AuditFilter {
        org_id,
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
        secret: q.secret,
        environment: q.environment,
        action: q.action,
        limit,
    })
}

/// `GET /api/v1/orgs/:org_id/audit?secret=&environment=&action=&since=&until=&limit=`
pub async fn query_audit(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
    Q(q): Q<AuditQuery>,
) -> Result<Json<AuditQueryResponse>, ApiError> {
    admin(&state, &p).await?;
    let filter = audit_filter(Some(org.clone()), q)?;
    org_must_exist(&state, &org).await?;
    let records = state.store.query_audit(filter).await?;
    Ok(Json(AuditQueryResponse { records }))
}

/// `GET /api/v1/admin/audit?…`: every org's records and the org-less ones (admin tokens).
pub async fn query_audit_all(
    State(state): State<AppState>,
    Auth(p): Auth,
    Q(q): Q<AuditQuery>,
) -> Result<Json<AuditQueryResponse>, ApiError> {
    admin(&state, &p).await?;
    let filter = audit_filter(None, q)?;
    let records = state.store.query_audit(filter).await?;
    Ok(Json(AuditQueryResponse { records }))
}
