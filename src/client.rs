//! HTTP client for the vault API (reqwest + rustls), used by the agent and the CLI.
//!
//! One [`VaultClient`] talks to one vault. The bearer token is held in a shared, replaceable
//! slot ([`VaultClient::set_token`]) so the agent can swap it when its token file changes; clones
//! share the slot. Tokens never appear in errors or `Debug` output. Errors are classified by
//! [`ClientError`] so callers can tell "vault unreachable" (retry with backoff) from "token
//! refused" (stop and say so) from "request refused" (show the server's message).

use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::api::{
    AuditBatch, AuditBatchResponse, PublicKeyResponse, PushResponse, RevokeResponse, SyncResponse,
    WhoAmI,
};
use crate::crypto::{self, PublicKey};
use crate::secret::Secret;

mod admin;
mod error;
mod users;

pub use error::{ClientError, MAX_RETRY_AFTER};
use error::{error_from, transport_reason};

/// Timeout of ordinary (non long-poll) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long-poll request is given beyond the `wait` it asks the server for.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options beyond the base URL.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// PEM bundle of CA certificates to trust *instead of* the system roots (a private CA or
    /// a self-signed server certificate).
    pub ca_pem: Option<Vec<u8>>,
}

/// The value of a push or rotation.
#[derive(Debug)]
pub enum WriteValue {
    /// Sent as `value`; the server seals it on arrival.
    Plaintext(Secret),
    /// Sent as `sealed_value` (base64, sealed to the environment key for this exact place).
    Sealed(String),
}

/// A push (`POST …/push`) or rotation (`PATCH …`).
#[derive(Debug)]
pub struct WriteRequest {
    pub secret_name: String,
    pub environment: String,
    pub value: WriteValue,
    /// Only sent on rotations (`push` ignores it: the environment's default grace applies).
    pub grace_period_seconds: Option<u64>,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// Serialization view of a [`WriteRequest`] body (the plaintext leaves [`Secret`] only here,
/// straight into a zeroizing buffer).
#[derive(Serialize)]
struct WriteBody<'a> {
    secret_name: &'a str,
    environment: &'a str,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_plain")]
    value: Option<&'a Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed_value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_period_seconds: Option<u64>,
}

fn ser_plain<S: serde::Serializer>(v: &Option<&Secret>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => match std::str::from_utf8(secret.expose()) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Err(serde::ser::Error::custom(
                "a plaintext value must be UTF-8; seal it client-side instead",
            )),
        },
        None => s.serialize_none(),
    }
}

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process already installed one: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The HTTP client (one connection pool) of a [`VaultClient`].
fn http_client(options: &ClientOptions) -> Result<reqwest::Client, ClientError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("fyvault/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &options.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Setup(format!("CA certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Setup(
                "the CA file holds no PEM certificate".into(),
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))
}

/// Client of one vault.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
    token: Arc<RwLock<Option<Secret>>>,
    options: ClientOptions,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

fn seg(s: &str) -> String {
    // Path segments come from validated names/ids, but never let one break the path.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl VaultClient {
    /// A client for the vault at `base_url` (`http://127.0.0.1:8200`, `https://vault.example`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_options(base_url, ClientOptions::default())
    }

    pub fn with_options(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(base_url).map_err(|e| ClientError::BadUrl {
            url: base_url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ClientError::BadUrl {
                url: base_url.to_string(),
                reason: "expected http://HOST[:PORT] or https://HOST[:PORT]".into(),
            });
        }
        Ok(VaultClient {
            http: http_client(&options)?,
            base: base_url.trim_end_matches('/').to_string(),
            token: Arc::new(RwLock::new(None)),
            options,
        })
    }

    /// A client of the same vault, sharing this one's token slot, on connections of its own:
    /// the agent's long-poll, so that its connection carries nothing else and stays in the
    /// vault's poll lane (docs/vault.md, "The poll lane").
    pub fn with_own_connections(&self) -> Result<VaultClient, ClientError> {
        Ok(VaultClient {
            http: http_client(&self.options)?,
            base: self.base.clone(),
            token: self.token.clone(),
            options: self.options.clone(),
        })
    }

    /// Sets the bearer token (builder style).
    pub fn with_token(self, token: Secret) -> Self {
        self.set_token(token);
        self
    }

    /// Replaces the bearer token used by this client and all its clones.
    pub fn set_token(&self, token: Secret) {
        let mut slot = self.token.write().unwrap_or_else(|p| p.into_inner());
        *slot = Some(token);
    }

    /// The base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn auth_header(&self) -> Result<HeaderValue, ClientError> {
        let slot = self.token.read().unwrap_or_else(|p| p.into_inner());
        let token = slot.as_ref().ok_or(ClientError::NoToken)?;
        let mut raw = Zeroizing::new(Vec::with_capacity(7 + token.len()));
        raw.extend_from_slice(b"Bearer ");
        raw.extend_from_slice(token.expose());
        let mut value = HeaderValue::from_bytes(&raw).map_err(|_| ClientError::Unauthorized {
            code: "malformed_token".into(),
            message: "the token holds characters not allowed in a header".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T), ClientError> {
        let req = req.header(AUTHORIZATION, self.auth_header()?);
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(transport_reason(&e)))?;
        let status = resp.status();
        let retry_after = error::retry_after(resp.headers());
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable(transport_reason(&e)))?;
        if !status.is_success() {
            return Err(error_from(status, retry_after, &body));
        }
        let parsed = serde_json::from_slice(&body)
            .map_err(|e| ClientError::BadResponse(format!("{status}: {e}")))?;
        Ok((status, parsed))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self
            .send(self.http.get(self.url(path)).timeout(REQUEST_TIMEOUT))
            .await?
            .1)
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self
            .http
            .request(method, self.url(path))
            .timeout(REQUEST_TIMEOUT)
            .json(body);
        Ok(self.send(req).await?.1)
    }

    // -----------------------------------------------------------------------------------------
    // Any token

    /// `GET /api/v1/whoami`: the presented token's id and scope.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/api/v1/whoami").await
    }

    /// `GET /api/v1/orgs/:org/environments/:env/public-key` (provider, agent or admin token).
    pub async fn public_key(&self, org: &str, env: &str) -> Result<PublicKeyResponse, ClientError> {
        self.get(&format!(
            "/api/v1/orgs/{}/environments/{}/public-key",
            seg(org),
            seg(env)
        ))
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Agent token

    /// Long-poll sync (DESIGN §3.4): answers at once if the environment changed after `since`,
    /// else after at most `wait_secs` (capped by the server at `api::MAX_WAIT_SECONDS`).
    pub async fn sync(
        &self,
        org: &str,
        env: &str,
        since: u64,
        wait_secs: u64,
    ) -> Result<SyncResponse, ClientError> {
        let wait = wait_secs.min(crate::api::MAX_WAIT_SECONDS);
        let req = self
            .http
            .get(self.url(&format!(
                "/api/v1/orgs/{}/environments/{}/sync",
                seg(org),
                seg(env)
            )))
            .query(&[("since", since), ("wait", wait)])
            .timeout(Duration::from_secs(wait) + LONG_POLL_MARGIN);
        Ok(self.send(req).await?.1)
    }

    /// Ships a batch of access events; the server de-duplicates on `(agent_id, seq)`.
    pub async fn post_audit(
        &self,
        org: &str,
        batch: &AuditBatch,
    ) -> Result<AuditBatchResponse, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/v1/orgs/{}/audit/events", seg(org)),
            batch,
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Provider token

    async fn write(
        &self,
        method: Method,
        path: String,
        req: &WriteRequest,
    ) -> Result<PushResponse, ClientError> {
        let rotation = method == Method::PATCH;
        let (value, sealed_value) = match &req.value {
            WriteValue::Plaintext(s) => (Some(s), None),
            WriteValue::Sealed(s) => (None, Some(s.as_str())),
        };
        let body = WriteBody {
            secret_name: &req.secret_name,
            environment: &req.environment,
            value,
            sealed_value,
            // The push route does not take a grace period (the environment's default applies).
            grace_period_seconds: req.grace_period_seconds.filter(|_| rotation),
        };
        let mut buf = Zeroizing::new(Vec::new());
        serde_json::to_writer(&mut *buf, &body)
            .map_err(|e| ClientError::Setup(format!("cannot encode the request: {e}")))?;
        let mut rb = self
            .http
            .request(method, self.url(&path))
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes::Bytes::from_owner(ZeroizingBuf(buf)));
        if let Some(key) = &req.idempotency_key {
            rb = rb.header("Idempotency-Key", key);
        }
        Ok(self.send(rb).await?.1)
    }

    /// `POST /api/v1/orgs/:org/providers/:provider/push` (201).
    pub async fn push(
        &self,
        org: &str,
        provider: &str,
        req: &WriteRequest,
    ) -> Result<PushResponse, ClientError> {
        let path = format!("/api/v1/orgs/{}/providers/{}/push", seg(org), seg(provider));
        self.write(Method::POST, path, req).await
    }

    /// `PATCH /api/v1/orgs/:org/providers/:provider` (rotation, 200).
    pub async fn rotate(
        &self,
        org: &str,
        provider: &str,
        req: &WriteRequest,
    ) -> Result<PushResponse, ClientError> {
        let path = format!("/api/v1/orgs/{}/providers/{}", seg(org), seg(provider));
        self.write(Method::PATCH, path, req).await
    }

    /// `DELETE /api/v1/orgs/:org/providers/:provider` with `{"secret_name"}`: revokes the
    /// secret in every environment of the org.
    pub async fn revoke(
        &self,
        org: &str,
        provider: &str,
        secret_name: &str,
    ) -> Result<RevokeResponse, ClientError> {
        let path = format!("/api/v1/orgs/{}/providers/{}", seg(org), seg(provider));
        self.json(
            Method::DELETE,
            &path,
            &crate::api::RevokeRequest {
                secret_name: secret_name.to_string(),
                user_id: None,
            },
        )
        .await
    }

    /// Fetches the environment's public key and seals `value` for `(org, env, name)`.
    pub async fn seal_for(
        &self,
        org: &str,
        env: &str,
        secret_name: &str,
        value: &Secret,
    ) -> Result<String, ClientError> {
        let pk = self.public_key(org, env).await?;
        let key = PublicKey::from_base64(&pk.public_key)?;
        Ok(key.seal(value.expose(), &crypto::aad(org, env, secret_name))?)
    }
}

/// Owner of a request body that zeroizes it when the body is dropped.
struct ZeroizingBuf(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_token_and_urls_are_checked() {
        let c = VaultClient::new("http://127.0.0.1:1/")
            .unwrap()
            .with_token(Secret::copy_from(b"fvadmin_supersecret"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert_eq!(c.base_url(), "http://127.0.0.1:1");
        assert!(VaultClient::new("ftp://x").is_err());
        assert!(VaultClient::new("not a url").is_err());
    }

    #[tokio::test]
    async fn unreachable_is_classified() {
        // Bind then drop a listener: the port is (very likely) closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = VaultClient::new(&format!("http://{addr}"))
            .unwrap()
            .with_token(Secret::copy_from(b"fvagent_x"));
        let e = c.whoami().await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        let c = VaultClient::new(&format!("http://{addr}")).unwrap();
        assert!(matches!(c.whoami().await, Err(ClientError::NoToken)));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("org_abc-1"), "org_abc-1");
        assert_eq!(seg("a/b"), "a%2Fb");
    }
}
