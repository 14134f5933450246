//! Bearer-token authentication and scopes (DESIGN §3.3), and the caller's source IP.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::crypto::{self, TokenKind};
use crate::vault::AppState;
use crate::vault::clock::now_ms;
use crate::vault::error::ApiError;
use crate::vault::store::{AuditContext, NewAuditRecord};

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub kind: TokenKind,
    pub org_id: Option<String>,
    pub environment: Option<String>,
    pub provider_id: Option<String>,
    pub source_ip: Option<String>,
}

impl Principal {
    /// The actor written in audit records.
    pub fn actor(&self) -> String {
        match self.kind {
            TokenKind::Provider => format!(
                "provider:{}",
                self.provider_id.as_deref().unwrap_or(&self.token_id)
            ),
            TokenKind::Agent => format!("agent:{}", self.token_id),
            TokenKind::Admin => format!("admin:{}", self.token_id),
        }
    }

    pub fn audit(&self) -> AuditContext {
        AuditContext {
            actor: self.actor(),
            source_ip: self.source_ip.clone(),
        }
    }
}

/// The source IP of a request: the peer address, or — only when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn source_ip(parts: &Parts, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()?
        .0
        .ip()
        .to_canonical();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut ip = peer;
    for hop in hops.iter().rev() {
        let Ok(parsed) = hop.parse::<IpAddr>() else {
            break;
        };
        ip = parsed.to_canonical();
        if !trusted.contains(&ip) {
            break;
        }
    }
    Some(ip)
}

/// Extractor: a valid (known, unrevoked, unexpired) bearer token.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = source_ip(parts, &state.trusted_proxies).map(|ip| ip.to_string());
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_token",
                    "send the token as `Authorization: Bearer <token>`",
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_token",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        crypto::parse_token(token).map_err(|e| {
            ApiError::unauthorized("invalid_token", format!("the token is not valid: {e}"))
        })?;
        let hash = crypto::hash_token(token.as_bytes());
        let unknown = || ApiError::unauthorized("invalid_token", "the token is not recognised");
        let now = now_ms();
        // Constant-time compared with `hash` inside, cached or not.
        let record = state
            .tokens
            .find(state.store.as_ref(), &hash, now)
            .await?
            .ok_or_else(unknown)?;
        let principal = Principal {
            token_id: record.token_id.clone(),
            kind: record.kind,
            org_id: record.org_id.clone(),
            environment: record.environment.clone(),
            provider_id: record.provider_id.clone(),
            source_ip: ip,
        };
        let refusal = if record.revoked_ms.is_some() {
            Some(("token_revoked", "the token has been revoked"))
        } else if record.expires_ms.is_some_and(|e| e <= now) {
            Some(("token_expired", "the token has expired"))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            let target = DeniedTarget {
                org_id: principal.org_id.clone(),
                environment: principal.environment.clone(),
                secret: None,
            };
            record_denial(state, &principal, target, code).await;
            return Err(ApiError::unauthorized(code, message));
        }
        Ok(Auth(principal))
    }
}

/// What a denial was about, for its audit record.
#[derive(Debug, Clone, Default)]
pub struct DeniedTarget {
    pub org_id: Option<String>,
    pub environment: Option<String>,
    pub secret: Option<String>,
}

/// Appends a `denied` audit record (failures to record are logged, not fatal).
pub async fn record_denial(state: &AppState, p: &Principal, target: DeniedTarget, reason: &str) {
    tracing::info!(token_id = %p.token_id, actor = %p.actor(), reason, "request denied");
    let rec = NewAuditRecord {
        time_ms: now_ms(),
        org_id: target.org_id,
        environment: target.environment,
        secret: target.secret,
        action: "denied".into(),
        actor: p.actor(),
        source_ip: p.source_ip.clone(),
        ..Default::default()
    };
    if let Err(e) = state.store.append_audit(rec).await {
        tracing::warn!(error = %e, "cannot record a denial in the audit trail");
    }
}

/// Scope checks. Each failure is a 403 and a `denied` audit record in the token's own org
/// (never in the org the token reached for, which may not exist).
impl Principal {
    async fn deny(&self, state: &AppState, code: &str, message: impl Into<String>) -> ApiError {
        let target = DeniedTarget {
            org_id: self.org_id.clone(),
            environment: self.environment.clone(),
            secret: None,
        };
        record_denial(state, self, target, code).await;
        ApiError::forbidden(code, message)
    }

    fn kind_message(&self, wanted: &str) -> String {
        format!(
            "this call needs {wanted} token, not a {} token",
            self.kind.as_str()
        )
    }

    /// A provider token of `org` and `provider`.
    pub async fn require_provider(
        &self,
        state: &AppState,
        org: &str,
        provider: &str,
    ) -> Result<(), ApiError> {
        let refusal = if self.kind != TokenKind::Provider {
            Some(("wrong_token_kind", self.kind_message("a provider")))
        } else if self.org_id.as_deref() != Some(org) {
            Some(("wrong_org", "the token belongs to another org".into()))
        } else if self.provider_id.as_deref() != Some(provider) {
            Some((
                "wrong_provider",
                "the token belongs to another provider".into(),
            ))
        } else {
            None
        };
        match refusal {
            Some((code, msg)) => Err(self.deny(state, code, msg).await),
            None => Ok(()),
        }
    }

    /// An agent token of `org` (and of `env` when given).
    pub async fn require_agent(
        &self,
        state: &AppState,
        org: &str,
        env: Option<&str>,
    ) -> Result<(), ApiError> {
        let refusal = if self.kind != TokenKind::Agent {
            Some(("wrong_token_kind", self.kind_message("an agent")))
        } else if self.org_id.as_deref() != Some(org) {
            Some(("wrong_org", "the token belongs to another org".into()))
        } else if env.is_some_and(|e| self.environment.as_deref() != Some(e)) {
            Some((
                "wrong_environment",
                "the agent token belongs to another environment".into(),
            ))
        } else {
            None
        };
        match refusal {
            Some((code, msg)) => Err(self.deny(state, code, msg).await),
            None => Ok(()),
        }
    }

    /// An admin token.
    pub async fn require_admin(&self, state: &AppState) -> Result<(), ApiError> {
        if self.kind != TokenKind::Admin {
            return Err(self
                .deny(state, "admin_only", "this call needs an admin token")
                .await);
        }
        Ok(())
    }

    /// A token allowed to read `org`/`env`'s public key: an admin, a provider of the org, or
    /// the environment's agent.
    pub async fn require_key_reader(
        &self,
        state: &AppState,
        org: &str,
        env: &str,
    ) -> Result<(), ApiError> {
        let ok = match self.kind {
            TokenKind::Admin => true,
            TokenKind::Provider => self.org_id.as_deref() == Some(org),
            TokenKind::Agent => {
                self.org_id.as_deref() == Some(org) && self.environment.as_deref() == Some(env)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(self
                .deny(
                    state,
                    "wrong_org",
                    "the token may not read this environment's key",
                )
                .await)
        }
    }
}
