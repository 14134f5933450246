//! The provider API (DESIGN §3.1) over real HTTP: every success path and every error class.

mod common;

use common::{ENV, TestVault, assert_error, open, raw, tok};
use fyvault::api::{CreateTokenRequest, MAX_VALUE_BYTES, SecretState};
use fyvault::client::{ClientError, WriteRequest, WriteValue};
use fyvault::secret::Secret;
use serde_json::{Value, json};

fn body(v: Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn push_rotate_revoke_success_paths() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let base = tv.provider_base(&f);
    let t = tok(&f.provider_token);

    let r = raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&body(
            json!({"secret_name":"STRIPE_SK","value":"sk_1","environment":ENV}),
        )),
        &[],
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.2);
    assert_eq!(r.2["secret_name"], "STRIPE_SK");
    assert_eq!(r.2["environment"], ENV);
    assert_eq!(r.2["version"], 1);
    assert!(r.2["created_at"].as_str().unwrap().ends_with('Z'));

    // Rotate with an explicit grace; the /v1 alias serves the same API.
    let alias = format!("{}/v1/orgs/{}/providers/{}", tv.url, f.org, f.provider);
    let r = raw(
        "PATCH",
        &alias,
        Some(&t),
        Some(&body(json!({"secret_name":"STRIPE_SK","value":"sk_2","environment":ENV,"grace_period_seconds":120}))),
        &[],
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(r.2["version"], 2);
    assert!(r.2["previous_version_expires_at"].is_string());

    let agent = tv.client(&f.agent_token);
    let s = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    let k = &s.secrets[0];
    assert_eq!(k.version, 2);
    assert_eq!(
        open(
            &f.key,
            &f.org,
            ENV,
            "STRIPE_SK",
            k.sealed_value.as_ref().unwrap()
        ),
        b"sk_2"
    );
    let prev = k.previous.as_ref().unwrap();
    assert_eq!(prev.version, 1);
    assert!(prev.grace_remaining_ms > 0 && prev.grace_remaining_ms <= 120_000);
    assert_eq!(
        open(&f.key, &f.org, ENV, "STRIPE_SK", &prev.sealed_value),
        b"sk_1"
    );

    // Revoke with a body.
    let r = raw(
        "DELETE",
        &base,
        Some(&t),
        Some(&body(json!({"secret_name":"STRIPE_SK"}))),
        &[],
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(r.2["revoked_environments"], json!([ENV]));
    let s = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    assert_eq!(s.secrets[0].state, SecretState::Revoked);

    // Revoke with ?secret_name= under /v1.
    raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&body(
            json!({"secret_name":"OTHER","value":"o","environment":ENV}),
        )),
        &[],
    )
    .await;
    let r = raw(
        "DELETE",
        &format!("{alias}?secret_name=OTHER"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(r.2["secret_name"], "OTHER");
    // …and with `{}` as the body beside the query (many HTTP clients send one).
    raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&body(
            json!({"secret_name":"THIRD","value":"o","environment":ENV}),
        )),
        &[],
    )
    .await;
    let r = raw(
        "DELETE",
        &format!("{alias}?secret_name=THIRD"),
        Some(&t),
        Some("{}"),
        &[],
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(r.2["secret_name"], "THIRD");
}

#[tokio::test]
async fn push_over_existing_keeps_previous_for_default_grace_and_revoke_hits_every_env() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let staging_key = tv.env(&f.org, "staging", Some(60)).await;
    let prov = tv.client(&f.provider_token);
    let push = |env: &str, v: &str| WriteRequest {
        secret_name: "API_KEY".into(),
        environment: env.into(),
        value: WriteValue::Plaintext(Secret::copy_from(v.as_bytes())),
        grace_period_seconds: None,
        idempotency_key: None,
    };
    prov.push(&f.org, &f.provider, &push(ENV, "a"))
        .await
        .unwrap();
    let r = prov
        .push(&f.org, &f.provider, &push(ENV, "b"))
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    assert!(
        r.previous_version_expires_at.is_some(),
        "default grace 300 s"
    );
    prov.push(&f.org, &f.provider, &push("staging", "s"))
        .await
        .unwrap();
    let agent = tv.client(&f.agent_token);
    let prev = agent.sync(&f.org, ENV, 0, 0).await.unwrap().secrets[0]
        .previous
        .clone()
        .unwrap();
    assert!(prev.grace_remaining_ms > 120_000 && prev.grace_remaining_ms <= 300_000);

    let r = prov.revoke(&f.org, &f.provider, "API_KEY").await.unwrap();
    assert_eq!(
        r.revoked_environments,
        vec![ENV.to_string(), "staging".into()]
    );
    let staging_agent = tv
        .admin
        .create_agent_token(&f.org, "staging", &CreateTokenRequest::default())
        .await
        .unwrap();
    let s = tv
        .client(&staging_agent.token)
        .sync(&f.org, "staging", 0, 0)
        .await
        .unwrap();
    assert_eq!(s.secrets[0].state, SecretState::Revoked);
    assert!(s.secrets[0].sealed_value.is_none());
    drop(staging_key);

    // Missing secrets: rotate and revoke are 404.
    let mut rot = push(ENV, "x");
    rot.secret_name = "NEVER_PUSHED".into();
    let e = prov.rotate(&f.org, &f.provider, &rot).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("secret_not_found"))
    );
    let e = prov
        .revoke(&f.org, &f.provider, "NEVER_PUSHED")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("secret_not_found"))
    );
    // Rotating a revoked secret is refused; pushing re-issues it.
    let e = prov
        .rotate(&f.org, &f.provider, &push(ENV, "c"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("secret_revoked")));
    let r = prov
        .push(&f.org, &f.provider, &push(ENV, "c"))
        .await
        .unwrap();
    assert_eq!(r.version, 3);
}

#[tokio::test]
async fn sealed_value_is_stored_as_sent_and_public_key_is_served() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let pk = prov.public_key(&f.org, ENV).await.unwrap();
    assert_eq!(pk.public_key, f.key.public_key().to_base64());
    assert_eq!(pk.suite, fyvault::crypto::SUITE);
    assert_eq!(pk.aad_format, fyvault::crypto::AAD_FORMAT);
    // Agents of the environment and admins may read it too.
    tv.client(&f.agent_token)
        .public_key(&f.org, ENV)
        .await
        .unwrap();
    tv.admin.public_key(&f.org, ENV).await.unwrap();
    let e = prov.public_key(&f.org, "nope").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    let e = prov.public_key("org_other", ENV).await.unwrap_err();
    assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");

    let value = Secret::copy_from(b"whsec_client_sealed");
    let sealed = prov.seal_for(&f.org, ENV, "WEBHOOK", &value).await.unwrap();
    let req = WriteRequest {
        secret_name: "WEBHOOK".into(),
        environment: ENV.into(),
        value: WriteValue::Sealed(sealed.clone()),
        grace_period_seconds: None,
        idempotency_key: None,
    };
    prov.push(&f.org, &f.provider, &req).await.unwrap();
    let s = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    assert_eq!(s.secrets[0].sealed_value.as_deref(), Some(sealed.as_str()));
    assert_eq!(
        open(&f.key, &f.org, ENV, "WEBHOOK", &sealed),
        b"whsec_client_sealed"
    );
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_a_different_body() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let base = tv.provider_base(&f);
    let t = tok(&f.provider_token);
    let b1 = body(json!({"secret_name":"K","value":"v1","environment":ENV}));
    let first = raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&b1),
        &[("Idempotency-Key", "abc-1")],
    )
    .await;
    assert_eq!(first.0, 201);
    assert!(first.1.get("idempotent-replayed").is_none());
    let again = raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&b1),
        &[("Idempotency-Key", "abc-1")],
    )
    .await;
    assert_eq!(again.0, 201);
    assert_eq!(again.2, first.2);
    assert_eq!(again.1["idempotent-replayed"], "true");
    // Same key, different value: refused, nothing stored.
    let b2 = body(json!({"secret_name":"K","value":"v2","environment":ENV}));
    let clash = raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&b2),
        &[("Idempotency-Key", "abc-1")],
    )
    .await;
    assert_error(&clash, 422, "idempotency_key_reused");
    // Same key on another operation: refused too.
    let clash = raw(
        "PATCH",
        &base,
        Some(&t),
        Some(&b1),
        &[("Idempotency-Key", "abc-1")],
    )
    .await;
    assert_error(&clash, 422, "idempotency_key_reused");
    let s = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    assert_eq!(s.secrets[0].version, 1);
    // Keys are per provider: another provider's identical key is its own.
    let (p2, t2) = tv.provider(&f.org, "other").await;
    let b3 = body(json!({"secret_name":"K2","value":"v1","environment":ENV}));
    let other = raw(
        "POST",
        &format!("{}/api/v1/orgs/{}/providers/{p2}/push", tv.url, f.org),
        Some(&tok(&t2)),
        Some(&b3),
        &[("Idempotency-Key", "abc-1")],
    )
    .await;
    assert_eq!(other.0, 201, "{}", other.2);
    assert!(other.1.get("idempotent-replayed").is_none());
    let bad = raw(
        "POST",
        &format!("{base}/push"),
        Some(&t),
        Some(&b1),
        &[("Idempotency-Key", "")],
    )
    .await;
    assert_error(&bad, 400, "invalid_idempotency_key");
}

#[tokio::test]
async fn every_input_error_is_a_clear_json_4xx_and_stores_nothing() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let base = tv.provider_base(&f);
    let push = format!("{base}/push");
    let t = tok(&f.provider_token);
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    let huge = format!(
        r#"{{"secret_name":"K","value":"{}","environment":"{ENV}"}}"#,
        "y".repeat(fyvault::api::MAX_BODY_BYTES)
    );
    let (sk, pk) = fyvault::crypto::PrivateKey::generate();
    drop(sk);
    let empty_sealed = pk
        .seal(b"", &fyvault::crypto::aad(&f.org, ENV, "K"))
        .unwrap();
    let ambiguous = format!("{base}?secret_name=A");
    let bogus = format!("{base}?bogus=1");
    let v2 = format!("{}/api/v2/nothing", tv.url);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", &push, "{not json".into(), 400, "invalid_json"),
        ("POST", &push, "".into(), 400, "invalid_json"),
        ("POST", &push, "[1,2]".into(), 400, "invalid_body"),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"v","environment":ENV,"extra":1})),
            400,
            "unknown_field",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":5,"environment":ENV})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            &push,
            body(json!({"value":"v","environment":ENV})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"lower","value":"v","environment":ENV})),
            400,
            "invalid_secret_name",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"../ETC","value":"v","environment":ENV})),
            400,
            "invalid_secret_name",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"v","environment":"Prod!"})),
            400,
            "invalid_environment",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"v","environment":"nope"})),
            404,
            "environment_not_found",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"","environment":ENV})),
            400,
            "empty_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":big,"environment":ENV})),
            400,
            "value_too_large",
        ),
        ("POST", &push, huge, 413, "body_too_large"),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","environment":ENV})),
            400,
            "missing_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"v","sealed_value":"AAAA","environment":ENV})),
            400,
            "ambiguous_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","sealed_value":"not base64!","environment":ENV})),
            400,
            "invalid_sealed_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","sealed_value":"AAAA","environment":ENV})),
            400,
            "invalid_sealed_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","sealed_value":empty_sealed,"environment":ENV})),
            400,
            "empty_value",
        ),
        (
            "POST",
            &push,
            body(json!({"secret_name":"K","value":"v","environment":ENV,"grace_period_seconds":5})),
            400,
            "unknown_field",
        ),
        (
            "PATCH",
            &base,
            body(
                json!({"secret_name":"K","value":"v","environment":ENV,"grace_period_seconds":u64::MAX}),
            ),
            400,
            "invalid_grace_period",
        ),
        (
            "PATCH",
            &base,
            body(
                json!({"secret_name":"K","value":"v","environment":ENV,"grace_period_seconds":-1}),
            ),
            400,
            "invalid_body",
        ),
        (
            "PATCH",
            &base,
            body(json!({"secret_name":"K","value":"v","environment":ENV})),
            404,
            "secret_not_found",
        ),
        ("DELETE", &base, "".into(), 400, "missing_secret_name"),
        ("DELETE", &base, "{}".into(), 400, "missing_secret_name"),
        (
            "DELETE",
            &base,
            body(json!({"secret_name":"bad name"})),
            400,
            "invalid_secret_name",
        ),
        (
            "DELETE",
            &base,
            body(json!({"secret_name":"K","x":1})),
            400,
            "unknown_field",
        ),
        (
            "DELETE",
            &base,
            body(json!({"secret_name":"K"})),
            404,
            "secret_not_found",
        ),
        (
            "DELETE",
            &ambiguous,
            body(json!({"secret_name":"B"})),
            400,
            "ambiguous_secret_name",
        ),
        ("DELETE", &bogus, "".into(), 400, "invalid_query"),
        ("PUT", &base, "{}".into(), 405, "method_not_allowed"),
        ("GET", &v2, "".into(), 404, "no_such_route"),
    ];
    for (method, url, b, status, code) in &cases {
        let body = if b.is_empty() { None } else { Some(b.as_str()) };
        let r = raw(method, url, Some(&t), body, &[]).await;
        assert_eq!(r.0, *status, "{method} {b:.80}: {}", r.2);
        assert_eq!(r.2["error"]["code"], *code, "{method} {b:.80}: {}", r.2);
        assert!(
            r.2["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let s = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    assert!(s.secrets.is_empty(), "nothing stored: {:?}", s.secrets);
    assert_eq!(s.revision, 0);
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let base = tv.provider_base(&f);
    let push = format!("{base}/push");
    let ok = body(json!({"secret_name":"K","value":"v","environment":ENV}));
    let t = tok(&f.provider_token);

    assert_error(
        &raw("POST", &push, None, Some(&ok), &[]).await,
        401,
        "missing_token",
    );
    assert_error(
        &raw("POST", &push, Some("fvprov_garbage"), Some(&ok), &[]).await,
        401,
        "invalid_token",
    );
    let mut flipped = t.clone().into_bytes();
    let i = 10;
    flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_error(
        &raw("POST", &push, Some(&flipped), Some(&ok), &[]).await,
        401,
        "invalid_token",
    );
    // Well formed but unknown.
    let unknown = tok(&fyvault::crypto::generate_token(
        fyvault::crypto::TokenKind::Provider,
    ));
    assert_error(
        &raw("POST", &push, Some(&unknown), Some(&ok), &[]).await,
        401,
        "invalid_token",
    );
    // Basic auth is not bearer.
    let r = raw(
        "POST",
        &push,
        None,
        Some(&ok),
        &[("Authorization", "Basic Zm9vOmJhcg==")],
    )
    .await;
    assert_error(&r, 401, "invalid_token");

    // Wrong org / wrong provider / wrong kind of token: 403.
    let other_org = format!(
        "{}/api/v1/orgs/org_someoneelse/providers/{}/push",
        tv.url, f.provider
    );
    assert_error(
        &raw("POST", &other_org, Some(&t), Some(&ok), &[]).await,
        403,
        "wrong_org",
    );
    let (p2, t2) = tv.provider(&f.org, "second").await;
    let as_p2 = format!("{}/api/v1/orgs/{}/providers/{p2}/push", tv.url, f.org);
    assert_error(
        &raw("POST", &as_p2, Some(&t), Some(&ok), &[]).await,
        403,
        "wrong_provider",
    );
    assert_error(
        &raw("POST", &push, Some(&tok(&f.agent_token)), Some(&ok), &[]).await,
        403,
        "wrong_token_kind",
    );
    assert_error(
        &raw("POST", &push, Some(&tok(&tv.admin_token)), Some(&ok), &[]).await,
        403,
        "wrong_token_kind",
    );
    // The secret belongs to the provider that pushed it first.
    assert_eq!(raw("POST", &push, Some(&t), Some(&ok), &[]).await.0, 201);
    let r = raw("POST", &as_p2, Some(&tok(&t2)), Some(&ok), &[]).await;
    assert_error(&r, 403, "not_secret_owner");
    let r = raw(
        "DELETE",
        &format!(
            "{}/api/v1/orgs/{}/providers/{p2}?secret_name=K",
            tv.url, f.org
        ),
        Some(&tok(&t2)),
        None,
        &[],
    )
    .await;
    assert_error(&r, 403, "not_secret_owner");

    // Revoked token: refused on its next request.
    let list = tv
        .admin
        .list_tokens(&fyvault::api::TokenListQuery {
            org_id: Some(f.org.clone()),
            kind: Some(fyvault::crypto::TokenKind::Provider),
            include_revoked: None,
        })
        .await
        .unwrap();
    let first = list
        .tokens
        .iter()
        .find(|x| x.provider_id.as_deref() == Some(f.provider.as_str()))
        .unwrap();
    tv.admin.revoke_token(&first.token_id).await.unwrap();
    assert_error(
        &raw("POST", &push, Some(&t), Some(&ok), &[]).await,
        401,
        "token_revoked",
    );

    // Expired token: refused once its time has passed.
    let short = tv
        .admin
        .create_provider_token(
            &f.org,
            &f.provider,
            &CreateTokenRequest {
                label: Some("short".into()),
                expires_in_seconds: Some(1),
            },
        )
        .await
        .unwrap();
    let short = tok(&short.token);
    let r = common::eventually(30, "the token to expire", || {
        let (push, short, ok) = (push.clone(), short.clone(), ok.clone());
        async move {
            let r = raw("POST", &push, Some(&short), Some(&ok), &[]).await;
            (r.0 == 401).then_some(r)
        }
    })
    .await;
    assert_error(&r, 401, "token_expired");
}
