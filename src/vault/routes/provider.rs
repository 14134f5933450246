//! The provider API (DESIGN §3.1): push, rotate, revoke, and the environment public key.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::{
    self, AuditQueryResponse, MAX_GRACE_SECONDS, MAX_VALUE_BYTES, PublicKeyResponse, PushRequest,
    RevokeResponse, RotateRequest,
};
use crate::crypto::{self, PublicKey};
use crate::secret::Secret;
use crate::vault::AppState;
use crate::vault::auth::{Auth, DeniedTarget, Principal, record_denial};
use crate::vault::clock::{fmt_ms, now_ms};
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, OptJsonBody, P, Q};
use crate::vault::store::{
    AuditFilter, Idempotency, RevokeSecret, StoreError, WriteKind, WriteVersion,
};

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

pub fn check_secret_name(name: &str) -> Result<(), ApiError> {
    if api::valid_secret_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_secret_name",
            "secret_name must match ^[A-Z_][A-Z0-9_]{0,127}$",
        ))
    }
}

pub fn check_user_id(user: &str) -> Result<(), ApiError> {
    if api::valid_user_id(user) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_user_id",
            "user_id must match ^[A-Za-z0-9._@-]{1,128}$",
        ))
    }
}

/// The size and shape rules of a value (plaintext or sealed), the same for every writer.
pub fn check_value(value: Option<&Secret>, sealed_value: Option<&str>) -> Result<(), ApiError> {
    let plain_len = match (value, sealed_value) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "ambiguous_value",
                "send either value or sealed_value, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_value",
                "send value (plaintext, sealed on arrival) or sealed_value",
            ));
        }
        (Some(v), None) => v.len(),
        (None, Some(s)) => crypto::check_sealed_shape(s).map_err(|_| {
            ApiError::bad_request(
                "invalid_sealed_value",
                "sealed_value must be base64 of enc || ciphertext (HPKE, see the public-key endpoint)",
            )
        })?,
    };
    if plain_len == 0 {
        return Err(ApiError::bad_request("empty_value", "the value is empty"));
    }
    if plain_len > MAX_VALUE_BYTES {
        return Err(ApiError::bad_request(
            "value_too_large",
            format!("the value exceeds {MAX_VALUE_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub fn check_environment(env: &str) -> Result<(), ApiError> {
    if api::valid_environment(env) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_environment",
            "environment must match ^[a-z0-9][a-z0-9-]{0,62}$",
        ))
    }
}

/// One write (push or rotate), whatever its wire form.
pub(crate) struct Write {
    pub kind: WriteKind,
    pub secret_name: String,
    pub environment: String,
    pub value: Option<Secret>,
    pub sealed_value: Option<String>,
    pub grace: Option<u64>,
    pub user_id: Option<String>,
}

fn length_prefixed(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_be_bytes());
    h.update(part);
}

/// Lookup key of an `Idempotency-Key`, scoped to the provider (hashed: keys are not stored).
fn idempotency_key_hash(org: &str, provider: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"fyvault-idempotency-key-v1");
    for part in [org, provider, key] {
        length_prefixed(&mut h, part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Fingerprint of a request, keyed by the idempotency key itself, so the stored form reveals
/// nothing about a plaintext value without that key (see DESIGN notes in `vault/mod.rs`).
fn fingerprint(key: &str, w: &Write) -> String {
    let mut h = Sha256::new();
    h.update(b"fyvault-idempotency-request-v1");
    length_prefixed(&mut h, key.as_bytes());
    let kind: &[u8] = match w.kind {
        WriteKind::Push => b"push",
        WriteKind::Rotate => b"rotate",
    };
    length_prefixed(&mut h, kind);
    length_prefixed(&mut h, w.environment.as_bytes());
    length_prefixed(&mut h, w.secret_name.as_bytes());
    length_prefixed(&mut h, &w.grace.map(|g| g + 1).unwrap_or(0).to_be_bytes());
    if let Some(user) = &w.user_id {
        length_prefixed(&mut h, b"user");
        length_prefixed(&mut h, user.as_bytes());
    }
    match (&w.value, &w.sealed_value) {
        (Some(v), _) => {
            length_prefixed(&mut h, b"value");
            length_prefixed(&mut h, v.expose());
        }
        (None, Some(s)) => {
            length_prefixed(&mut h, b"sealed");
            length_prefixed(&mut h, s.as_bytes());
        }
        (None, None) => {}
    }
    hex::encode(h.finalize())
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

async fn write(
    state: &AppState,
    p: &Principal,
    org: &str,
    provider: &str,
    headers: &HeaderMap,
    w: Write,
) -> Result<Response, ApiError> {
    p.require_provider(state, org, provider).await?;
    write_as(state, p, org, provider, headers, w).await
}

/// A write by `p` as `owner` (a provider id, or `admin:<token id>` for the studio), after the
/// caller checked `p` may write as `owner`: every input rule, the sealing, the store, the wake.
pub(crate) async fn write_as(
    state: &AppState,
    p: &Principal,
    org: &str,
    provider: &str,
    headers: &HeaderMap,
    w: Write,
) -> Result<Response, ApiError> {
    check_secret_name(&w.secret_name)?;
    check_environment(&w.environment)?;
    let idem_key = idempotency_header(headers)?;
    if let Some(g) = w.grace
        && g > MAX_GRACE_SECONDS
    {
        return Err(ApiError::bad_request(
            "invalid_grace_period",
            format!("grace_period_seconds must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    if let Some(user) = &w.user_id {
        check_user_id(user)?;
    }
    check_value(w.value.as_ref(), w.sealed_value.as_deref())?;
    let env = state
        .store
        .get_environment(org, &w.environment)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("environment_not_found", "no such environment in this org")
        })?;
    let idempotency = idem_key.as_deref().map(|key| Idempotency {
        key_hash: idempotency_key_hash(org, provider, key),
        fingerprint: fingerprint(key, &w),
    });
    let sealed_value = match (w.value, w.sealed_value) {
        (Some(plain), _) => {
            let pk = PublicKey::from_base64(&env.public_key).map_err(|_| {
                tracing::error!(org, env = %env.name, "stored public key is unusable");
                ApiError::internal()
            })?;
            let sealed = pk
                .seal(
                    plain.expose(),
                    &crypto::aad(org, &w.environment, &w.secret_name),
                )
                .map_err(|e| {
                    tracing::error!(org, env = %env.name, "sealing to the stored key failed: {e}");
                    ApiError::internal()
                })?;
            drop(plain); // zeroized here
            sealed
        }
        (None, Some(sealed)) => sealed,
        (None, None) => unreachable!("checked above"),
    };
    let written = state
        .store
        .write_version(WriteVersion {
            org_id: org.to_string(),
            environment: w.environment.clone(),
            secret_name: w.secret_name.clone(),
            provider_id: provider.to_string(),
            kind: w.kind,
            sealed_value,
            grace_seconds: w.grace,
            idempotency,
            user_id: w.user_id.clone(),
            now_ms: now_ms(),
            audit: p.audit(),
        })
        .await;
    let outcome =
        denied_if_not_owner(state, p, org, Some(&w.environment), &w.secret_name, written).await?;
    if let Some(rev) = outcome.revision {
        state.feed.publish(org, &w.environment, rev);
    }
    tracing::info!(
        org,
        provider,
        env = %w.environment,
        secret = %w.secret_name,
        user = w.user_id.as_deref(),
        version = outcome.response.version,
        replayed = outcome.replayed,
        "secret written"
    );
    let status = match w.kind {
        WriteKind::Push => StatusCode::CREATED,
        WriteKind::Rotate => StatusCode::OK,
    };
    let mut resp = (status, Json(outcome.response)).into_response();
    if outcome.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Records a `denied` audit event when a provider reached for another provider's secret.
async fn denied_if_not_owner<T>(
    state: &AppState,
    p: &Principal,
    org: &str,
    env: Option<&str>,
    secret: &str,
    result: Result<T, StoreError>,
) -> Result<T, ApiError> {
    if matches!(result, Err(StoreError::NotOwner)) {
        let target = DeniedTarget {
            org_id: Some(org.to_string()),
            environment: env.map(str::to_string),
            secret: Some(secret.to_string()),
        };
        record_denial(state, p, target, "not_secret_owner").await;
    }
    result.map_err(ApiError::from)
}

/// `POST …/orgs/:org_id/providers/:id/push`
pub async fn push(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, provider)): P<(String, String)>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PushRequest>,
) -> Result<Response, ApiError> {
    let w = Write {
        kind: WriteKind::Push,
        secret_name: req.secret_name,
        environment: req.environment,
        value: req.value,
        sealed_value: req.sealed_value,
        grace: None,
        user_id: req.user_id,
    };
    write(&state, &p, &org, &provider, &headers, w).await
}

/// `PATCH …/orgs/:org_id/providers/:id`
pub async fn rotate(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, provider)): P<(String, String)>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RotateRequest>,
) -> Result<Response, ApiError> {
    let w = Write {
        kind: WriteKind::Rotate,
        secret_name: req.secret_name,
        environment: req.environment,
        value: req.value,
        sealed_value: req.sealed_value,
        grace: req.grace_period_seconds,
        user_id: req.user_id,
    };
    write(&state, &p, &org, &provider, &headers, w).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeQuery {
    #[serde(default)]
    secret_name: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// The body of a revoke: `secret_name` may be left to `?secret_name=`, so `{}` (what many HTTP
/// clients send with every DELETE) is accepted beside the query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    secret_name: Option<String>,
    /// Only this app user's value of a user-vault secret.
    #[serde(default)]
    user_id: Option<String>,
}

/// `DELETE …/orgs/:org_id/providers/:id` with `{"secret_name"}` or `?secret_name=` (and then
/// no body or `{}`).
pub async fn revoke(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, provider)): P<(String, String)>,
    Q(query): Q<RevokeQuery>,
    OptJsonBody(body): OptJsonBody<RevokeBody>,
) -> Result<Json<RevokeResponse>, ApiError> {
    p.require_provider(&state, &org, &provider).await?;
    let (body_name, body_user) = body.map_or((None, None), |b| (b.secret_name, b.user_id));
    let user_id = match (body_user, query.user_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "ambiguous_user_id",
                "the body and ?user_id= name different users",
            ));
        }
        (Some(a), _) | (None, Some(a)) => Some(a),
        (None, None) => None,
    };
    if let Some(user) = &user_id {
        check_user_id(user)?;
    }
    let name = match (body_name, query.secret_name) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "ambiguous_secret_name",
                "the body and ?secret_name= name different secrets",
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_secret_name",
                "send {\"secret_name\": …} or ?secret_name=",
            ));
        }
    };
    revoke_as(&state, &p, &org, &provider, name, user_id).await
}

/// A revoke by `p` as `owner` (see [`write_as`]), after the caller's scope check.
pub(crate) async fn revoke_as(
    state: &AppState,
    p: &Principal,
    org: &str,
    provider: &str,
    name: String,
    user_id: Option<String>,
) -> Result<Json<RevokeResponse>, ApiError> {
    check_secret_name(&name)?;
    let now = now_ms();
    let revoked = state
        .store
        .revoke_secret(RevokeSecret {
            org_id: org.to_string(),
            secret_name: name.clone(),
            provider_id: provider.to_string(),
            user_id: user_id.clone(),
            now_ms: now,
            audit: p.audit(),
        })
        .await;
    let outcome = denied_if_not_owner(state, p, org, None, &name, revoked).await?;
    for (env, rev) in &outcome.changed {
        state.feed.publish(org, env, *rev);
    }
    tracing::info!(org, provider, secret = %name, user = user_id.as_deref(), environments = ?outcome.environments, "secret revoked");
    Ok(Json(RevokeResponse {
        secret_name: name,
        revoked_environments: outcome.environments,
        revoked_at: fmt_ms(now),
        user_id,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndeliverableQuery {
    secret_name: String,
    #[serde(default)]
    environment: Option<String>,
}

/// Records read per query of [`undeliverable`] (the newest are what matter; a provider that
/// wrote more versions of one secret than this sees the oldest ones).
const UNDELIVERABLE_SCAN: u32 = 10_000;

/// `GET …/orgs/:org_id/providers/:id/undeliverable?secret_name=[&environment=]`: what agents
/// reported they cannot open (`undeliverable` audit records: environment, version, reason, host;
/// never a value), for the versions of that secret this provider wrote.
pub async fn undeliverable(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, provider)): P<(String, String)>,
    Q(q): Q<UndeliverableQuery>,
) -> Result<Json<AuditQueryResponse>, ApiError> {
    p.require_provider(&state, &org, &provider).await?;
    check_secret_name(&q.secret_name)?;
    if let Some(env) = &q.environment {
        check_environment(env)?;
    }
    let filter = |action: &str| AuditFilter {
        org_id: Some(org.clone()),
        secret: Some(q.secret_name.clone()),
        environment: q.environment.clone(),
        action: Some(action.to_owned()),
        since_ms: None,
        until_ms: None,
        limit: UNDELIVERABLE_SCAN,
    };
    let writer = format!("provider:{provider}");
    let mut written = std::collections::HashSet::new();
    for action in ["issued", "rotated"] {
        for r in state.store.query_audit(filter(action)).await? {
            if r.actor == writer {
                written.insert((r.environment, r.version));
            }
        }
    }
    let records = state
        .store
        .query_audit(filter("undeliverable"))
        .await?
        .into_iter()
        .filter(|r| written.contains(&(r.environment.clone(), r.version)))
        .collect();
    Ok(Json(AuditQueryResponse { records }))
}

/// `GET …/orgs/:org_id/environments/:env/public-key`
pub async fn public_key(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
) -> Result<Json<PublicKeyResponse>, ApiError> {
    p.require_key_reader(&state, &org, &env).await?;
    check_environment(&env)?;
    let e = state
        .store
        .get_environment(&org, &env)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("environment_not_found", "no such environment in this org")
        })?;
    Ok(Json(PublicKeyResponse {
        org_id: org,
        environment: env,
        public_key: e.public_key,
        suite: crypto::SUITE.to_string(),
        info: crypto::INFO.to_string(),
        aad_format: crypto::AAD_FORMAT.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(value: &[u8]) -> Write {
        Write {
            kind: WriteKind::Push,
            secret_name: "A".into(),
            environment: "prod".into(),
            value: Some(Secret::copy_from(value)),
            sealed_value: None,
            grace: None,
            user_id: None,
        }
    }

    #[test]
    fn fingerprints_differ_by_value_key_and_kind() {
        let a = fingerprint("k1", &w(b"one"));
        assert_eq!(a, fingerprint("k1", &w(b"one")));
        assert_ne!(a, fingerprint("k1", &w(b"two")));
        assert_ne!(a, fingerprint("k2", &w(b"one")));
        let mut r = w(b"one");
        r.kind = WriteKind::Rotate;
        assert_ne!(a, fingerprint("k1", &r));
        let mut u = w(b"one");
        u.user_id = Some("alice".into());
        assert_ne!(
            a,
            fingerprint("k1", &u),
            "another user's value is another request"
        );
        assert!(!a.contains(&hex::encode(b"one")));
        assert_ne!(
            idempotency_key_hash("o", "p1", "k"),
            idempotency_key_hash("o", "p2", "k")
        );
    }
}
