//! The admin API and the bootstrap commands: `fyvault server init` and `fyvault admin …`.

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ENV, TestVault, assert_error, loopback0, raw, tok};
use fyvault::api::{
    CreateProviderRequest, CreateTokenRequest, TokenListQuery, UpdateEnvironmentRequest,
};
use fyvault::client::VaultClient;
use fyvault::crypto::{self, PrivateKey, TokenKind};
use fyvault::secret::Secret;
use fyvault::vault::{self, ServerConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn admin_api_success_paths() {
    let tv = TestVault::start().await;
    let org = tv.admin.create_org("Acme Inc").await.unwrap();
    assert!(org.org_id.starts_with("org_"));
    assert_eq!(tv.admin.list_orgs().await.unwrap().orgs, vec![org.clone()]);
    let key = tv.env(&org.org_id, ENV, Some(60)).await;
    let envs = tv.admin.list_environments(&org.org_id).await.unwrap();
    assert_eq!(envs.environments.len(), 1);
    let e = &envs.environments[0];
    assert_eq!((e.environment.as_str(), e.default_grace_seconds), (ENV, 60));
    assert_eq!(e.public_key, key.public_key().to_base64());
    let e = tv
        .admin
        .update_environment(
            &org.org_id,
            ENV,
            &UpdateEnvironmentRequest {
                default_grace_seconds: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(e.default_grace_seconds, 5);

    let p = tv
        .admin
        .create_provider(
            &org.org_id,
            &CreateProviderRequest {
                name: "Stripe".into(),
                expires_in_seconds: Some(3600),
            },
        )
        .await
        .unwrap();
    assert!(p.provider_id.starts_with("prov_"));
    let pt = std::str::from_utf8(p.token.token.expose()).unwrap();
    assert_eq!(crypto::parse_token(pt), Ok(TokenKind::Provider));
    assert!(p.token.expires_at.is_some());
    assert_eq!(
        tv.admin
            .list_providers(&org.org_id)
            .await
            .unwrap()
            .providers
            .len(),
        1
    );
    let p2 = tv
        .admin
        .create_provider_token(&org.org_id, &p.provider_id, &CreateTokenRequest::default())
        .await
        .unwrap();
    let agent = tv
        .admin
        .create_agent_token(
            &org.org_id,
            ENV,
            &CreateTokenRequest {
                label: Some("web-1".into()),
                expires_in_seconds: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(agent.kind, TokenKind::Agent);
    assert_eq!(agent.environment.as_deref(), Some(ENV));
    let admin2 = tv
        .admin
        .create_admin_token(&CreateTokenRequest::default())
        .await
        .unwrap();

    for (t, kind) in [
        (&p.token.token, TokenKind::Provider),
        (&p2.token, TokenKind::Provider),
        (&agent.token, TokenKind::Agent),
        (&admin2.token, TokenKind::Admin),
    ] {
        let who = tv.client(t).whoami().await.unwrap();
        assert_eq!(who.kind, kind);
    }
    let who = tv.client(&agent.token).whoami().await.unwrap();
    assert_eq!(who.token_id, agent.token_id);
    assert_eq!(who.org_id.as_deref(), Some(org.org_id.as_str()));

    // Lists carry ids and scopes, never tokens or hashes.
    let r = raw(
        "GET",
        &format!("{}/api/v1/admin/tokens?include_revoked=true", tv.url),
        Some(&tok(&tv.admin_token)),
        None,
        &[],
    )
    .await;
    assert_eq!(r.0, 200);
    let text = r.2.to_string();
    for t in [
        &p.token.token,
        &p2.token,
        &agent.token,
        &admin2.token,
        &tv.admin_token,
    ] {
        assert!(!text.contains(&tok(t)));
        assert!(!text.contains(&crypto::hash_token(t.expose())));
    }
    assert_eq!(r.2["tokens"].as_array().unwrap().len(), 5);
    let agents = tv
        .admin
        .list_tokens(&TokenListQuery {
            org_id: Some(org.org_id.clone()),
            kind: Some(TokenKind::Agent),
            include_revoked: None,
        })
        .await
        .unwrap();
    assert_eq!(agents.tokens.len(), 1);
    assert_eq!(agents.tokens[0].label.as_deref(), Some("web-1"));

    let rv = tv.admin.revoke_token(&agent.token_id).await.unwrap();
    assert_eq!(rv.token_id, agent.token_id);
    let e = tv.client(&agent.token).whoami().await.unwrap_err();
    assert_eq!(e.code(), Some("token_revoked"));
    let listed = tv
        .admin
        .list_tokens(&TokenListQuery::default())
        .await
        .unwrap();
    assert!(listed.tokens.iter().all(|t| t.token_id != agent.token_id));

    let health = raw("GET", &format!("{}/api/v1/health", tv.url), None, None, &[]).await;
    assert_eq!((health.0, health.2["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn admin_api_errors() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let a = tok(&tv.admin_token);
    let u = |p: &str| format!("{}/api/v1/admin{p}", tv.url);
    let pk = PrivateKey::generate().1.to_base64();
    let org = &f.org;
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            u("/orgs"),
            Some(json!({"name":""})),
            400,
            "invalid_name",
        ),
        (
            "POST",
            u("/orgs"),
            Some(json!({"name":"a","x":1})),
            400,
            "unknown_field",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":"Bad","public_key":pk})),
            400,
            "invalid_environment",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":"qa","public_key":"short"})),
            400,
            "invalid_public_key",
        ),
        // Low-order X25519 points: all zeros, one, and the order-8 point; each would make every
        // later push fail. Refused at registration, naming the field.
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":"qa","public_key":B64.encode([0u8; 32])})),
            400,
            "invalid_public_key",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(
                json!({"name":"qa","public_key":B64.encode({ let mut k = [0u8; 32]; k[0] = 1; k })}),
            ),
            400,
            "invalid_public_key",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":"qa","public_key":"4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA="})),
            400,
            "invalid_public_key",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":"qa","public_key":pk,"default_grace_seconds":99999999})),
            400,
            "invalid_grace_period",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments")),
            Some(json!({"name":ENV,"public_key":pk})),
            409,
            "environment_exists",
        ),
        (
            "POST",
            u("/orgs/org_nope/environments"),
            Some(json!({"name":"qa","public_key":pk})),
            404,
            "org_not_found",
        ),
        (
            "GET",
            u("/orgs/org_nope/environments"),
            None,
            404,
            "org_not_found",
        ),
        (
            "PATCH",
            u(&format!("/orgs/{org}/environments/nope")),
            Some(json!({"default_grace_seconds":1})),
            404,
            "environment_not_found",
        ),
        (
            "POST",
            u("/orgs/org_nope/providers"),
            Some(json!({"name":"p"})),
            404,
            "org_not_found",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/providers/prov_nope/tokens")),
            Some(json!({})),
            404,
            "provider_not_found",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments/nope/agent-tokens")),
            Some(json!({})),
            404,
            "environment_not_found",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments/{ENV}/agent-tokens")),
            Some(json!({"expires_in_seconds":0})),
            400,
            "invalid_expiry",
        ),
        (
            "POST",
            u(&format!("/orgs/{org}/environments/{ENV}/agent-tokens")),
            Some(json!({"label":"a\u{7}b"})),
            400,
            "invalid_label",
        ),
        (
            "DELETE",
            u("/tokens/tok_nope"),
            None,
            404,
            "token_not_found",
        ),
        ("GET", u("/tokens?kind=root"), None, 400, "invalid_query"),
    ];
    for (method, url, body, status, code) in &cases {
        let b = body.as_ref().map(|b| b.to_string());
        let r = raw(method, url, Some(&a), b.as_deref(), &[]).await;
        assert_eq!(r.0, *status, "{method} {url}: {}", r.2);
        assert_eq!(r.2["error"]["code"], *code, "{method} {url}: {}", r.2);
        if *code == "invalid_public_key" {
            let msg = r.2["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("public_key"), "the field is named: {msg}");
        }
    }
    // None of the refused keys left an environment behind.
    let r = raw(
        "GET",
        &u(&format!("/orgs/{org}/environments")),
        Some(&a),
        None,
        &[],
    )
    .await;
    assert!(!r.2.to_string().contains("\"qa\""), "{}", r.2);
    // Provider and agent tokens may not administer.
    for t in [&f.provider_token, &f.agent_token] {
        let r = raw("GET", &u("/orgs"), Some(&tok(t)), None, &[]).await;
        assert_error(&r, 403, "admin_only");
        let r = raw("POST", &u("/tokens"), Some(&tok(t)), Some("{}"), &[]).await;
        assert_error(&r, 403, "admin_only");
    }
    let r = raw("GET", &u("/orgs"), None, None, &[]).await;
    assert_error(&r, 401, "missing_token");
}

async fn fyvault(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyvault"));
    cmd.args(args)
        .env_remove("FYVAULT_ADMIN_TOKEN")
        .env_remove("FYVAULT_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn ok_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_init_and_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let first = ok_json(&fyvault(&["server", "init", "--data-dir", d, "--json"], &[]).await);
    let admin_token = first["token"].as_str().unwrap().to_string();
    assert_eq!(crypto::parse_token(&admin_token), Ok(TokenKind::Admin));
    // Once is enough: a second init refuses, unless forced.
    let again = fyvault(&["server", "init", "--data-dir", d], &[]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has"));
    let forced = fyvault(&["server", "init", "--data-dir", d, "--force"], &[]).await;
    assert!(forced.status.success());
    let text = String::from_utf8(forced.stdout).unwrap();
    assert!(text.contains("fvadmin_"), "{text}");

    let handle = vault::start(ServerConfig::new(&data, loopback0()))
        .await
        .unwrap();
    let url = handle.url();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{admin_token}\n")).unwrap();
    let tf = token_file.to_str().unwrap();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--url", url.as_str(), "--token-file", tf, "--json"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            fyvault(&refs, &[]).await
        }
    };
    let org = ok_json(&admin(&["org", "create", "--name", "acme"]).await);
    let org_id = org["org_id"].as_str().unwrap().to_string();
    let key_out = dir.path().join("production.key");
    let ko = key_out.to_str().unwrap();
    let env = ok_json(
        &admin(&[
            "env",
            "create",
            "--org",
            &org_id,
            "--name",
            ENV,
            "--key-out",
            ko,
            "--grace",
            "30",
        ])
        .await,
    );
    assert_eq!(env["default_grace_seconds"], 30);
    assert_eq!(
        std::fs::metadata(&key_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sk = PrivateKey::from_file_contents(&std::fs::read(&key_out).unwrap()).unwrap();
    assert_eq!(env["public_key"], sk.public_key().to_base64());
    // The private key is nowhere on the server side.
    let listed = ok_json(&admin(&["env", "list", "--org", &org_id]).await);
    assert!(
        !listed.to_string().contains(
            std::str::from_utf8(sk.to_file_contents().expose())
                .unwrap()
                .trim()
        )
    );
    // An existing key file is never overwritten; the failed call creates nothing.
    let clash = admin(&[
        "env",
        "create",
        "--org",
        &org_id,
        "--name",
        "qa",
        "--key-out",
        ko,
    ])
    .await;
    assert!(!clash.status.success());
    assert_eq!(
        PrivateKey::from_file_contents(&std::fs::read(&key_out).unwrap())
            .unwrap()
            .public_key(),
        sk.public_key()
    );
    // A refused upload leaves no orphan key file.
    let orphan = dir.path().join("orphan.key");
    let refused = admin(&[
        "env",
        "create",
        "--org",
        "org_nope",
        "--name",
        "qa",
        "--key-out",
        orphan.to_str().unwrap(),
    ])
    .await;
    assert!(!refused.status.success());
    assert!(!orphan.exists());

    let prov_file = dir.path().join("prov.token");
    let p = ok_json(
        &admin(&[
            "provider",
            "create",
            "--org",
            &org_id,
            "--name",
            "stripe",
            "--token-out",
            prov_file.to_str().unwrap(),
        ])
        .await,
    );
    assert!(
        p["token"].get("token").is_none(),
        "token printed despite --token-out"
    );
    let prov_token = std::fs::read_to_string(&prov_file).unwrap();
    assert_eq!(
        crypto::parse_token(prov_token.trim()),
        Ok(TokenKind::Provider)
    );
    assert_eq!(
        std::fs::metadata(&prov_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let agent = ok_json(
        &admin(&[
            "token",
            "agent",
            "--org",
            &org_id,
            "--environment",
            ENV,
            "--label",
            "web-1",
        ])
        .await,
    );
    let agent_token = agent["token"].as_str().unwrap().to_string();
    let agent_id = agent["token_id"].as_str().unwrap().to_string();
    let client = VaultClient::new(&url)
        .unwrap()
        .with_token(Secret::copy_from(agent_token.as_bytes()));
    client.sync(&org_id, ENV, 0, 0).await.unwrap();
    let list = ok_json(&admin(&["token", "list", "--org", &org_id]).await);
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2);
    ok_json(&admin(&["token", "revoke", &agent_id]).await);
    let e = client.sync(&org_id, ENV, 0, 0).await.unwrap_err();
    assert_eq!(e.status(), Some(401));

    // The admin token from the environment works too; text output is readable.
    let out = fyvault(
        &["admin", "--url", &url, "org", "list"],
        &[("FYVAULT_ADMIN_TOKEN", &admin_token)],
    )
    .await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&org_id));
    // A bad token is a clear error.
    let out = fyvault(
        &["admin", "--url", &url, "org", "list"],
        &[("FYVAULT_ADMIN_TOKEN", "fvadmin_nope")],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && !err.contains("fvadmin_nope"),
        "{err}"
    );
    handle.shutdown().await;
}
