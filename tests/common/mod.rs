//! Helpers shared by the vault integration tests: a real server on 127.0.0.1:0 with a temp
//! data dir, fixtures made through the real admin API, and raw HTTP calls for error cases.
#![allow(dead_code)]

// A test file that uses two of the helper modules loads this twice (harmless: no state).
#[allow(clippy::duplicate_mod)]
#[path = "../skip/mod.rs"]
pub mod skip;

pub mod concurrency;
pub mod pg;
pub mod store_suite;

use std::future::Future;
use std::time::Duration;

use fyvault::api::{CreateEnvironmentRequest, CreateProviderRequest, CreateTokenRequest};
use fyvault::client::VaultClient;
use fyvault::crypto::PrivateKey;
use fyvault::secret::Secret;
use fyvault::vault::{self, ServerConfig, ServerHandle};
use serde_json::Value;
use tempfile::TempDir;

pub const ENV: &str = "production";

/// A running vault with an admin token.
pub struct TestVault {
    pub handle: ServerHandle,
    pub url: String,
    pub admin_token: Secret,
    pub admin: VaultClient,
    /// Last, so the server stops before the directory goes.
    pub dir: TempDir,
}

/// An org with one environment (`production`), one provider and one agent token.
pub struct Fixture {
    pub org: String,
    pub key: PrivateKey,
    pub provider: String,
    pub provider_token: Secret,
    pub agent_token: Secret,
}

pub fn loopback0() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

impl TestVault {
    pub async fn start() -> TestVault {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestVault {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path().join("data"), loopback0());
        tweak(&mut config);
        let handle = vault::start(config).await.unwrap();
        Self::around(handle, dir).await
    }

    /// Wraps a started server whose data lives in `dir`.
    pub async fn around(handle: ServerHandle, dir: TempDir) -> TestVault {
        let store = handle.store();
        let issued = vault::bootstrap_admin_token(store.as_ref(), "test", "system:test")
            .await
            .unwrap();
        let url = handle.url();
        let admin = VaultClient::new(&url)
            .unwrap()
            .with_token(issued.token.clone());
        TestVault {
            handle,
            url,
            admin_token: issued.token,
            admin,
            dir,
        }
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub fn client(&self, token: &Secret) -> VaultClient {
        VaultClient::new(&self.url)
            .unwrap()
            .with_token(token.clone())
    }

    /// Org + `production` environment + provider + agent token, through the admin API.
    pub async fn fixture(&self) -> Fixture {
        make_fixture(&self.admin).await
    }

    /// Creates an environment; returns its private key.
    pub async fn env(&self, org: &str, name: &str, grace: Option<u64>) -> PrivateKey {
        let (sk, pk) = PrivateKey::generate();
        self.admin
            .create_environment(
                org,
                &CreateEnvironmentRequest {
                    name: name.into(),
                    public_key: pk.to_base64(),
                    default_grace_seconds: grace,
                },
            )
            .await
            .unwrap();
        sk
    }

    /// A second provider of the same org.
    pub async fn provider(&self, org: &str, name: &str) -> (String, Secret) {
        let p = self
            .admin
            .create_provider(
                org,
                &CreateProviderRequest {
                    name: name.into(),
                    expires_in_seconds: None,
                },
            )
            .await
            .unwrap();
        (p.provider_id, p.token.token)
    }

    pub fn provider_base(&self, f: &Fixture) -> String {
        format!(
            "{}/api/v1/orgs/{}/providers/{}",
            self.url, f.org, f.provider
        )
    }
}

/// Org + `production` environment + provider + agent token, through any vault's admin API.
pub async fn make_fixture(admin: &VaultClient) -> Fixture {
    let org = admin.create_org("acme").await.unwrap().org_id;
    let (key, pk) = PrivateKey::generate();
    admin
        .create_environment(
            &org,
            &CreateEnvironmentRequest {
                name: ENV.into(),
                public_key: pk.to_base64(),
                default_grace_seconds: None,
            },
        )
        .await
        .unwrap();
    let p = admin
        .create_provider(
            &org,
            &CreateProviderRequest {
                name: "payments".into(),
                expires_in_seconds: None,
            },
        )
        .await
        .unwrap();
    let agent = admin
        .create_agent_token(&org, ENV, &CreateTokenRequest::default())
        .await
        .unwrap();
    Fixture {
        org,
        key,
        provider: p.provider_id,
        provider_token: p.token.token,
        agent_token: agent.token,
    }
}

pub fn tok(s: &Secret) -> String {
    String::from_utf8(s.expose().to_vec()).unwrap()
}

/// A plaintext write of `name` in [`ENV`] (push or rotate), with an optional grace.
pub fn write(name: &str, value: &str, grace: Option<u64>) -> fyvault::client::WriteRequest {
    fyvault::client::WriteRequest {
        secret_name: name.into(),
        environment: ENV.into(),
        value: fyvault::client::WriteValue::Plaintext(Secret::copy_from(value.as_bytes())),
        grace_period_seconds: grace,
        idempotency_key: None,
    }
}

/// A raw HTTP client (for bodies the typed client would never send).
pub fn http() -> reqwest::Client {
    fyvault::client::install_crypto_provider();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .build()
        .unwrap()
}

/// Sends a raw request; returns status, headers and the body parsed as JSON (Null if empty).
pub async fn raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = http().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        rb = rb.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let hdrs = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{method} {url} answered {status} with non-JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, hdrs, json)
}

/// Asserts a JSON error answer with this status and code.
pub fn assert_error(got: &(u16, reqwest::header::HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.2);
    assert_eq!(got.2["error"]["code"], code, "body: {}", got.2);
    assert!(
        got.2["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {}",
        got.2
    );
}

/// Polls `check` until it returns Some, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a sealed value for a place.
pub fn open(key: &PrivateKey, org: &str, env: &str, name: &str, sealed: &str) -> Vec<u8> {
    key.open(sealed, &fyvault::crypto::aad(org, env, name))
        .expect("sealed value opens")
        .expose()
        .to_vec()
}
