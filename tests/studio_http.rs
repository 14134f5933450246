//! The studio's server side over real HTTP (issue 15, outcomes 1, 2 and 5): pages served from
//! the binary with a strict CSP; sign-in → an HttpOnly SameSite=Strict session cookie that acts
//! as the admin through the ordinary API handlers; CSRF refusals; sign-out; the admin secret
//! writes with the provider API's input rules; the audit trail naming the admin. The browser
//! half is tests/studio_browser.rs.

mod common;

use common::{ENV, TestVault, assert_error, http, raw, tok};
use fyvault::crypto;
use serde_json::{Value, json};

/// The studio's session: its cookie header and CSRF value.
struct Session {
    cookie: String,
    csrf: String,
    admin: String,
}

/// A request without credentials to `path` of the vault.
async fn anon(
    tv: &TestVault,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = body.map(Value::to_string);
    raw(
        method,
        &format!("{}{path}", tv.url),
        None,
        body.as_deref(),
        &[],
    )
    .await
}

async fn sign_in(tv: &TestVault) -> (Session, reqwest::header::HeaderMap) {
    let body = json!({ "token": tok(&tv.admin_token) });
    let (status, headers, answer) = anon(tv, "POST", "/studio/session", Some(&body)).await;
    assert_eq!(status, 201, "{answer}");
    let set = headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("fyvault_session=fvadmin_"), "{set}");
    let session = Session {
        cookie,
        csrf: answer["csrf"].as_str().unwrap().to_owned(),
        admin: answer["admin"].as_str().unwrap().to_owned(),
    };
    (session, headers)
}

impl Session {
    /// A request with the cookie (and the CSRF header when `csrf`), from the studio's origin.
    async fn call(
        &self,
        tv: &TestVault,
        method: &str,
        path: &str,
        body: Option<&Value>,
        csrf: bool,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let body = body.map(Value::to_string);
        let mut headers = vec![("Cookie", self.cookie.as_str())];
        if csrf {
            headers.push(("X-Fyvault-Csrf", self.csrf.as_str()));
        }
        raw(
            method,
            &format!("{}{path}", tv.url),
            None,
            body.as_deref(),
            &headers,
        )
        .await
    }
}

#[tokio::test]
async fn pages_come_from_the_binary_with_a_strict_policy() {
    let tv = TestVault::start().await;
    for path in ["/studio/", "/connect/fvlink_anything"] {
        let resp = http()
            .get(format!("{}{path}", tv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "script-src 'self'",
            "frame-ancestors 'none'",
            "default-src 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("<script type=\"module\" src=\"/studio/"),
            "{html}"
        );
    }
    for asset in ["app.js", "hpke.js", "secrets.js", "style.css", "connect.js"] {
        let resp = http()
            .get(format!("{}/studio/{asset}", tv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        assert!(resp.headers()["content-security-policy"].to_str().is_ok());
    }
    let hpke = http()
        .get(format!("{}/studio/hpke.js", tv.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(hpke, include_str!("../web/hpke.js"), "served as built in");
    let missing = anon(&tv, "GET", "/studio/nope.js", None).await;
    assert_error(&missing, 404, "no_such_asset");
    let wrong = anon(&tv, "POST", "/studio/app.js", None).await;
    assert_error(&wrong, 405, "method_not_allowed");
    let page_as_asset = anon(&tv, "GET", "/studio/index.html", None).await;
    assert_error(&page_as_asset, 404, "no_such_asset");
}

#[tokio::test]
async fn sign_in_session_csrf_and_sign_out() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let orgs = format!("{}/api/v1/admin/orgs", tv.url);

    // Unauthenticated: 401, on the API and on the session.
    assert_error(
        &raw("GET", &orgs, None, None, &[]).await,
        401,
        "missing_token",
    );
    let none = anon(&tv, "GET", "/studio/session", None).await;
    assert_error(&none, 401, "missing_session");
    let body = json!({"token": "fvadmin_not_a_token"});
    let bad = anon(&tv, "POST", "/studio/session", Some(&body)).await;
    assert_error(&bad, 401, "invalid_token");
    let body = json!({"token": tok(&f.provider_token)});
    let wrong = anon(&tv, "POST", "/studio/session", Some(&body)).await;
    assert_error(&wrong, 401, "invalid_token");

    let (s, headers) = sign_in(&tv).await;
    let set = headers["set-cookie"].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let whoami = tv.admin.whoami().await.unwrap();
    assert_eq!(
        s.admin, whoami.token_id,
        "the session acts as the admin who signed in"
    );

    // Reads need the cookie only; the same handlers answer.
    let listed = s.call(&tv, "GET", "/api/v1/admin/orgs", None, false).await;
    assert_eq!(listed.0, 200, "{}", listed.2);
    assert_eq!(listed.2["orgs"][0]["org_id"], f.org.as_str());

    // A change without the CSRF header, or from another origin: 403, nothing made.
    let new_org = json!({"name": "from-elsewhere"});
    let forged = s
        .call(&tv, "POST", "/api/v1/admin/orgs", Some(&new_org), false)
        .await;
    assert_error(&forged, 403, "csrf_failed");
    let body = new_org.to_string();
    let cross = raw(
        "POST",
        &orgs,
        None,
        Some(&body),
        &[
            ("Cookie", s.cookie.as_str()),
            ("X-Fyvault-Csrf", s.csrf.as_str()),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    )
    .await;
    assert_error(&cross, 403, "csrf_failed");
    let wrong_csrf = raw(
        "POST",
        &orgs,
        None,
        Some(&body),
        &[("Cookie", s.cookie.as_str()), ("X-Fyvault-Csrf", "00")],
    )
    .await;
    assert_error(&wrong_csrf, 403, "csrf_failed");
    assert_eq!(tv.admin.list_orgs().await.unwrap().orgs.len(), 1);

    // With it: made, and the audit trail names the admin.
    let made = s
        .call(&tv, "POST", "/api/v1/admin/orgs", Some(&new_org), true)
        .await;
    assert_eq!(made.0, 201, "{}", made.2);
    let push = json!({"secret_name": "FROM_STUDIO", "value": "studio-value-1"});
    let path = format!("/api/v1/admin/orgs/{}/environments/{ENV}/secrets", f.org);
    let pushed = s.call(&tv, "POST", &path, Some(&push), true).await;
    assert_eq!(pushed.0, 201, "{}", pushed.2);
    let trail = raw(
        "GET",
        &format!("{}/api/v1/orgs/{}/audit?secret=FROM_STUDIO", tv.url, f.org),
        Some(&tok(&tv.admin_token)),
        None,
        &[],
    )
    .await;
    assert_eq!(trail.2["records"][0]["action"], "issued");
    assert_eq!(
        trail.2["records"][0]["actor"],
        format!("admin:{}", s.admin).as_str()
    );

    // The session token is no bearer token.
    let session_token = s.cookie.trim_start_matches("fyvault_session=").to_owned();
    let as_bearer = raw("GET", &orgs, Some(&session_token), None, &[]).await;
    assert_error(&as_bearer, 401, "session_token");
    // Its label prefix is reserved.
    let body = json!({"label": "studio session of tok_someone"}).to_string();
    let reserved = raw(
        "POST",
        &format!("{}/api/v1/admin/tokens", tv.url),
        Some(&tok(&tv.admin_token)),
        Some(&body),
        &[],
    )
    .await;
    assert_error(&reserved, 400, "invalid_label");

    // Sign-out revokes it: the cookie no longer works.
    let out = s.call(&tv, "DELETE", "/studio/session", None, false).await;
    assert_error(&out, 403, "csrf_failed");
    let out = s.call(&tv, "DELETE", "/studio/session", None, true).await;
    assert_eq!(out.0, 204, "{}", out.2);
    assert!(out.1["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = s.call(&tv, "GET", "/api/v1/admin/orgs", None, false).await;
    assert_error(&after, 401, "session_expired");
    let again = s.call(&tv, "GET", "/studio/session", None, false).await;
    assert_error(&again, 401, "session_expired");

    // Revoking the admin token ends its sessions too.
    let (s2, _) = sign_in(&tv).await;
    assert_eq!(
        s2.call(&tv, "GET", "/studio/session", None, false).await.0,
        200
    );
    let (other, _) = tv
        .admin
        .create_admin_token(&Default::default())
        .await
        .map(|t| (t.token, ()))
        .unwrap();
    let revoke = raw(
        "DELETE",
        &format!("{}/api/v1/admin/tokens/{}", tv.url, s2.admin),
        Some(&tok(&other)),
        None,
        &[],
    )
    .await;
    assert_eq!(revoke.0, 200, "{}", revoke.2);
    let gone = s2.call(&tv, "GET", "/studio/session", None, false).await;
    assert_error(&gone, 401, "session_expired");
}

#[tokio::test]
async fn studio_writes_follow_the_provider_rules() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let (s, _) = sign_in(&tv).await;
    let base = format!("/api/v1/admin/orgs/{}/environments/{ENV}/secrets", f.org);
    let pk = tv
        .admin
        .list_environments(&f.org)
        .await
        .unwrap()
        .environments[0]
        .public_key
        .clone();
    let pk = crypto::PublicKey::from_base64(&pk).unwrap();
    let seal = |name: &str, v: &[u8]| pk.seal(v, &crypto::aad(&f.org, ENV, name)).unwrap();

    // Names with HTML in them, empty and oversized values, unknown fields, huge bodies.
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"secret_name": "<b>X</b>", "sealed_value": seal("X", b"v")}),
            400,
            "invalid_secret_name",
        ),
        (
            json!({"secret_name": "<img src=x onerror=alert(1)>", "value": "v"}),
            400,
            "invalid_secret_name",
        ),
        (json!({"secret_name": "A", "value": ""}), 400, "empty_value"),
        (
            json!({"secret_name": "A", "sealed_value": seal("A", &vec![b'x'; 65 * 1024])}),
            400,
            "value_too_large",
        ),
        (
            json!({"secret_name": "A", "sealed_value": "not base64!"}),
            400,
            "invalid_sealed_value",
        ),
        (
            json!({"secret_name": "A", "value": "v", "environment": "x"}),
            400,
            "unknown_field",
        ),
    ];
    for (body, status, code) in cases {
        let got = s.call(&tv, "POST", &base, Some(&body), true).await;
        assert_error(&got, status, code);
    }
    let huge = json!({"secret_name": "A", "sealed_value": "A".repeat(1_100_000)});
    assert_error(
        &s.call(&tv, "POST", &base, Some(&huge), true).await,
        413,
        "body_too_large",
    );
    let bad_env = format!("/api/v1/admin/orgs/{}/environments/<x>/secrets", f.org);
    let got = s
        .call(
            &tv,
            "POST",
            &bad_env,
            Some(&json!({"secret_name": "A", "value": "v"})),
            true,
        )
        .await;
    assert_eq!(got.0, 400, "{}", got.2);
    let trail = tv.admin.audit(&f.org, &Default::default()).await.unwrap();
    assert!(
        trail.records.iter().all(|r| r.action != "issued"),
        "nothing stored"
    );

    // A provider's secret: the studio appends only, but may rotate and revoke it.
    let prov = tv.client(&f.provider_token);
    prov.push(&f.org, &f.provider, &common::write("PROVIDED", "p1", None))
        .await
        .unwrap();
    let again = json!({"secret_name": "PROVIDED", "sealed_value": seal("PROVIDED", b"x"), "only_new": true});
    assert_error(
        &s.call(&tv, "POST", &base, Some(&again), true).await,
        409,
        "secret_exists",
    );
    let rotate = json!({"sealed_value": seal("PROVIDED", b"p2"), "grace_period_seconds": 0});
    let got = s
        .call(
            &tv,
            "PATCH",
            &format!("{base}/PROVIDED"),
            Some(&rotate),
            true,
        )
        .await;
    assert_eq!(got.0, 200, "{}", got.2);
    assert_eq!(got.2["version"], 2);
    let sync = tv
        .client(&f.agent_token)
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap();
    let row = sync.secrets.iter().find(|r| r.name == "PROVIDED").unwrap();
    let opened = f
        .key
        .open(
            row.sealed_value.as_deref().unwrap(),
            &crypto::aad(&f.org, ENV, "PROVIDED"),
        )
        .unwrap();
    assert_eq!(opened.expose(), b"p2");
    let revoke = format!("/api/v1/admin/orgs/{}/secrets/PROVIDED", f.org);
    let got = s.call(&tv, "DELETE", &revoke, None, true).await;
    assert_eq!(got.0, 200, "{}", got.2);
    let trail = tv.admin.audit(&f.org, &Default::default()).await.unwrap();
    let by_admin: Vec<&str> = trail
        .records
        .iter()
        .filter(|r| r.secret.is_some() && r.actor == format!("admin:{}", s.admin))
        .map(|r| r.action.as_str())
        .collect();
    assert_eq!(by_admin, ["rotated", "revoked"], "{:?}", trail.records);

    // A name the studio made belongs to the admins: a provider cannot overwrite it.
    let mine = json!({"secret_name": "STUDIO_MADE", "sealed_value": seal("STUDIO_MADE", b"s"), "only_new": true});
    assert_eq!(s.call(&tv, "POST", &base, Some(&mine), true).await.0, 201);
    let err = prov
        .push(
            &f.org,
            &f.provider,
            &common::write("STUDIO_MADE", "p", None),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not_secret_owner"), "{err}");
    // Without a session: 401 before anything else.
    let anon = raw(
        "POST",
        &format!("{}{base}", tv.url),
        None,
        Some(&mine.to_string()),
        &[],
    )
    .await;
    assert_error(&anon, 401, "missing_token");
}
