//! TLS: HTTPS with a certificate (rcgen, self-signed), and plain HTTP refused off loopback.

mod common;

use common::TestVault;
use fyvault::client::{ClientError, ClientOptions, VaultClient};
use fyvault::vault::{self, ServerConfig, TlsFiles, VaultError};

struct Certs {
    dir: tempfile::TempDir,
    cert_pem: String,
}

fn certs() -> Certs {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Certs { dir, cert_pem }
}

fn tls_files(c: &Certs) -> TlsFiles {
    TlsFiles {
        cert: c.dir.path().join("cert.pem"),
        key: c.dir.path().join("key.pem"),
    }
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let c = certs();
    // TLS makes a non-loopback listen address acceptable.
    let tv = TestVault::start_with(|cfg| {
        cfg.listen = "0.0.0.0:0".parse().unwrap();
        cfg.tls = Some(tls_files(&c));
    })
    .await;
    let port = tv.handle.local_addr().port();
    assert!(tv.url.starts_with("https://"));
    for host in ["localhost", "127.0.0.1"] {
        let client = VaultClient::with_options(
            &format!("https://{host}:{port}"),
            ClientOptions {
                ca_pem: Some(c.cert_pem.clone().into_bytes()),
            },
        )
        .unwrap()
        .with_token(tv.admin_token.clone());
        let who = client.whoami().await.unwrap();
        assert_eq!(who.kind, fyvault::crypto::TokenKind::Admin);
        // The whole API works over TLS.
        client.create_org("over-tls").await.unwrap();
    }
    // A client that does not trust the certificate refuses to talk.
    let untrusting = VaultClient::new(&format!("https://localhost:{port}"))
        .unwrap()
        .with_token(tv.admin_token.clone());
    let e = untrusting.whoami().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
    // Plain HTTP to the TLS port gets no API answer.
    let plain = VaultClient::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_token(tv.admin_token.clone());
    assert!(plain.whoami().await.is_err());
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback_and_bad_tls_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = vault::start(ServerConfig::new(&data, "0.0.0.0:0".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::PlainHttpNotLoopback(_)), "{err}");
    assert!(!data.exists(), "nothing is created before the refusal");
    // IPv6 loopback is loopback.
    let ok = vault::start(ServerConfig::new(&data, "[::1]:0".parse().unwrap())).await;
    if let Ok(h) = ok {
        h.shutdown().await;
    }
    let mut cfg = ServerConfig::new(&data, "127.0.0.1:0".parse().unwrap());
    cfg.tls = Some(TlsFiles {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
    });
    let err = vault::start(cfg).await.unwrap_err();
    assert!(matches!(err, VaultError::Tls(_)), "{err}");
}

#[test]
fn the_binary_refuses_plain_http_off_loopback_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fyvault"))
        .args([
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .env("FYVAULT_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("refusing plain HTTP") && err.contains("--tls-cert"),
        "{err}"
    );
    assert!(!data.exists());
}

#[tokio::test]
async fn the_studio_session_cookie_is_secure_over_tls() {
    let c = certs();
    let tv = TestVault::start_with(|cfg| cfg.tls = Some(tls_files(&c))).await;
    let port = tv.handle.local_addr().port();
    fyvault::client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tls_backend_rustls()
        .add_root_certificate(reqwest::Certificate::from_pem(c.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let token = String::from_utf8(tv.admin_token.expose().to_vec()).unwrap();
    let resp = http
        .post(format!("https://localhost:{port}/studio/session"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    for part in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(part), "{cookie}");
    }
}
