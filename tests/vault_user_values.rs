//! Issue 14 on the vault's HTTP API: the policy route, the secret listing, per-user pushes,
//! rotations and revocations, and the connect link flow driven through the same HTTP calls the
//! connect page makes (the page's browser part is tested by the studio's browser tests).

mod common;

use common::{TestVault, assert_error, open, raw, tok};
use fyvault::crypto::{PublicKey, aad};
use serde_json::{Value, json};

const E: &str = common::ENV;

struct T {
    v: TestVault,
    f: common::Fixture,
}

impl T {
    async fn new() -> T {
        let v = TestVault::start().await;
        let f = v.fixture().await;
        T { v, f }
    }

    fn env_url(&self, rest: &str) -> String {
        format!(
            "{}/api/v1/orgs/{}/environments/{E}{rest}",
            self.v.url, self.f.org
        )
    }

    async fn admin(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|b| b.to_string());
        let (s, _, j) = raw(
            method,
            url,
            Some(&tok(&self.v.admin_token)),
            b.as_deref(),
            &[],
        )
        .await;
        (s, j)
    }

    async fn policy(&self, name: &str, policy: &str) -> (u16, Value) {
        self.admin(
            "PUT",
            &self.env_url(&format!("/secrets/{name}/policy")),
            Some(json!({ "policy": policy })),
        )
        .await
    }

    async fn provider(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (s, _, j) = raw(
            method,
            &format!("{}{path}", self.v.provider_base(&self.f)),
            Some(&tok(&self.f.provider_token)),
            Some(&body.to_string()),
            &[],
        )
        .await;
        (s, j)
    }

    async fn mint(&self, name: &str, user: &str) -> (u16, Value) {
        let (s, _, j) = raw(
            "POST",
            &self.env_url("/connect-links"),
            Some(&tok(&self.f.agent_token)),
            Some(&json!({"secret_name": name, "user_id": user}).to_string()),
            &[],
        )
        .await;
        (s, j)
    }

    async fn sync(&self) -> fyvault::api::SyncResponse {
        self.v
            .client(&self.f.agent_token)
            .sync(&self.f.org, E, 0, 0)
            .await
            .unwrap()
    }

    /// The value the agent would open for `user`.
    async fn user_value(&self, name: &str, user: &str) -> Option<(u64, Vec<u8>)> {
        let s = self.sync().await;
        s.user_values
            .iter()
            .find(|u| u.user_id == user && u.secret.name == name)
            .and_then(|u| {
                u.secret.sealed_value.as_ref().map(|sealed| {
                    (
                        u.secret.version,
                        open(&self.f.key, &self.f.org, E, name, sealed),
                    )
                })
            })
    }
}

#[tokio::test]
async fn policy_route_listing_and_per_user_values() {
    let t = T::new().await;
    // The policy route: admin only, checked input, declares a name.
    let (s, j) = t.policy("OPENAI_KEY", "user").await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        j,
        json!({"secret_name":"OPENAI_KEY","environment":E,"policy":"user"})
    );
    let got = t.policy("OPENAI_KEY", "both").await;
    assert_eq!(got.0, 400);
    assert_eq!(t.policy("bad-name", "user").await.0, 400);
    let (s, _, j) = raw(
        "PUT",
        &t.env_url("/secrets/OPENAI_KEY/policy"),
        Some(&tok(&t.f.provider_token)),
        Some(r#"{"policy":"creator"}"#),
        &[],
    )
    .await;
    assert_eq!((s, j["error"]["code"].as_str()), (403, Some("admin_only")));
    let (s, j) = t
        .admin(
            "PUT",
            &format!(
                "{}/api/v1/orgs/{}/environments/nope/secrets/A/policy",
                t.v.url, t.f.org
            ),
            Some(json!({"policy":"user"})),
        )
        .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (404, Some("environment_not_found"))
    );

    // Per-user pushes, rotations, revokes: same routes, user_id in the body.
    let push = |user: &str, value: &str| json!({"secret_name":"OPENAI_KEY","environment":E,"value":value,"user_id":user});
    let (s, j) = t
        .provider("POST", "/push", push("alice", "sk-alice-1"))
        .await;
    assert_eq!(
        (s, j["version"].as_u64(), j["user_id"].as_str()),
        (201, Some(1), Some("alice")),
        "{j}"
    );
    let (s, j) = t.provider("POST", "/push", push("bob", "sk-bob-1")).await;
    assert_eq!(
        (s, j["version"].as_u64()),
        (201, Some(1)),
        "versions are per user"
    );
    let bad = t.provider("POST", "/push", push("al ice", "x")).await;
    assert_eq!(
        (bad.0, bad.1["error"]["code"].as_str()),
        (400, Some("invalid_user_id"))
    );
    let creator = t
        .provider(
            "POST",
            "/push",
            json!({"secret_name":"OPENAI_KEY","environment":E,"value":"shared"}),
        )
        .await;
    assert_eq!(
        (creator.0, creator.1["error"]["code"].as_str()),
        (409, Some("user_vault_secret"))
    );
    let wrong = t
        .provider(
            "POST",
            "/push",
            json!({"secret_name":"SHARED","environment":E,"value":"v","user_id":"alice"}),
        )
        .await;
    assert_eq!(
        (wrong.0, wrong.1["error"]["code"].as_str()),
        (409, Some("creator_vault_secret"))
    );
    let (s, j) = t
        .provider(
            "PATCH",
            "",
            json!({"secret_name":"OPENAI_KEY","environment":E,"value":"sk-alice-2","user_id":"alice","grace_period_seconds":60}),
        )
        .await;
    assert_eq!((s, j["version"].as_u64()), (200, Some(2)), "{j}");
    assert!(j["previous_version_expires_at"].is_string());
    assert_eq!(
        t.user_value("OPENAI_KEY", "alice").await,
        Some((2, b"sk-alice-2".to_vec()))
    );
    let s = t.sync().await;
    let alice = s.user_values.iter().find(|u| u.user_id == "alice").unwrap();
    assert_eq!(
        alice.secret.previous.as_ref().map(|p| p.version),
        Some(1),
        "alice's v1 in grace"
    );
    // Revoke bob only.
    let (st, j) = t
        .provider(
            "DELETE",
            "",
            json!({"secret_name":"OPENAI_KEY","user_id":"bob"}),
        )
        .await;
    assert_eq!((st, j["user_id"].as_str()), (200, Some("bob")), "{j}");
    assert_eq!(t.user_value("OPENAI_KEY", "bob").await, None);
    assert!(t.user_value("OPENAI_KEY", "alice").await.is_some());

    // The listing: exactly the contract's fields, never a value.
    t.v.client(&t.f.provider_token)
        .push(
            &t.f.org,
            &t.f.provider,
            &common::write("SHARED", "creator-value", None),
        )
        .await
        .unwrap();
    let (s, j) = t.admin("GET", &t.env_url("/secrets"), None).await;
    assert_eq!(s, 200, "{j}");
    let text = j.to_string();
    for v in ["sk-alice", "sk-bob", "creator-value"] {
        assert!(!text.contains(v));
    }
    let rows = j["secrets"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["secret_name"], "OPENAI_KEY");
    assert_eq!(rows[0]["policy"], "user");
    assert_eq!(rows[0]["users"], json!({"with_value": 1, "read_7d": 0}));
    assert_eq!(rows[1]["secret_name"], "SHARED");
    assert_eq!(rows[1]["policy"], "creator");
    assert_eq!(rows[1]["version"], 1);
    assert_eq!(rows[1]["state"], "active");
    assert_eq!(rows[1]["provider_id"], t.f.provider.as_str());
    assert!(rows[1]["updated_at"].is_string());
    assert_eq!(rows[1]["users"], Value::Null);
    for key in [
        "secret_name",
        "policy",
        "version",
        "state",
        "provider_id",
        "updated_at",
        "users",
    ] {
        assert!(rows[0].get(key).is_some(), "{key} present (null allowed)");
    }
    let (s, _) = t
        .admin(
            "GET",
            &format!(
                "{}/api/v1/orgs/{}/environments/nope/secrets",
                t.v.url, t.f.org
            ),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // The policy change is an audit event; the sync feed carries the policy.
    let audit =
        t.v.admin
            .audit(
                &t.f.org,
                &fyvault::api::AuditQuery {
                    action: Some("policy_changed".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    assert_eq!(audit.records.len(), 1);
    assert_eq!(audit.records[0].secret.as_deref(), Some("OPENAI_KEY"));
    let feed = t.sync().await;
    assert!(
        feed.policies
            .iter()
            .any(|p| p.name == "OPENAI_KEY" && p.policy == fyvault::api::SecretPolicy::User)
    );

    // A revoke without user_id drops the secret for everyone.
    let (st, _) = t
        .provider("DELETE", "", json!({"secret_name":"OPENAI_KEY"}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(t.user_value("OPENAI_KEY", "alice").await, None);
}

#[tokio::test]
async fn connect_links_are_single_use_scoped_and_expire() {
    let t = T::new().await;
    assert_eq!(t.policy("OPENAI_KEY", "user").await.0, 200);
    // Only the environment's agent mints links.
    for token in [&t.f.provider_token, &t.v.admin_token] {
        let (s, _, j) = raw(
            "POST",
            &t.env_url("/connect-links"),
            Some(&tok(token)),
            Some(r#"{"secret_name":"OPENAI_KEY","user_id":"alice"}"#),
            &[],
        )
        .await;
        assert_eq!(s, 403, "{j}");
    }
    let bad = t.mint("OPENAI_KEY", "a/b").await;
    assert_eq!(bad.0, 400);
    let (s, link) = t.mint("OPENAI_KEY", "alice").await;
    assert_eq!(s, 200, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/connect/fvlink_", t.v.url)),
        "{url}"
    );
    assert!(link["expires_at"].is_string());
    let token = url.rsplit('/').next().unwrap();
    let api = format!("{}/api/v1/connect/{token}", t.v.url);

    // What the page reads first.
    let (s, _, info) = raw("GET", &api, None, None, &[]).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["org_id"], t.f.org.as_str());
    assert_eq!(info["environment"], E);
    assert_eq!(info["secret_name"], "OPENAI_KEY");
    assert_eq!(info["user_id"], "alice");
    assert_eq!(info["expires_at"], link["expires_at"]);
    // The page seals in the browser to this key (here: the same HPKE in Rust).
    let pk = PublicKey::from_base64(info["public_key"].as_str().unwrap()).unwrap();
    let sealed = pk
        .seal(b"sk-alice-own", &aad(&t.f.org, E, "OPENAI_KEY"))
        .unwrap();
    // Garbage is refused and leaves the link usable.
    let (s, _, j) = raw(
        "POST",
        &api,
        None,
        Some(r#"{"sealed_value":"not base64!"}"#),
        &[],
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("invalid_sealed_value"))
    );
    let (s, _, j) = raw("POST", &api, None, Some(r#"{"value":"plain"}"#), &[]).await;
    assert_eq!(s, 400, "plaintext is never accepted here: {j}");
    let body = json!({ "sealed_value": sealed }).to_string();
    let (s, _, stored) = raw("POST", &api, None, Some(&body), &[]).await;
    assert_eq!(s, 200, "{stored}");
    assert_eq!(
        stored,
        json!({"secret_name":"OPENAI_KEY","user_id":"alice","version":1})
    );
    assert_eq!(
        t.user_value("OPENAI_KEY", "alice").await,
        Some((1, b"sk-alice-own".to_vec()))
    );
    // Single use: both calls say so.
    let again = raw("POST", &api, None, Some(&body), &[]).await;
    assert_error(&again, 410, "link_used");
    let again = raw("GET", &api, None, None, &[]).await;
    assert_error(&again, 410, "link_used");
    // Unknown and malformed tokens.
    let unknown = raw(
        "GET",
        &format!("{}/api/v1/connect/fvlink_nothing", t.v.url),
        None,
        None,
        &[],
    )
    .await;
    assert_error(&unknown, 404, "link_unknown");

    // A link for bob cannot set alice's value: the user comes from the link only.
    let (_, bob) = t.mint("OPENAI_KEY", "bob").await;
    let bob_api = format!(
        "{}/api/v1/connect/{}",
        t.v.url,
        bob["url"].as_str().unwrap().rsplit('/').next().unwrap()
    );
    let sealed = pk
        .seal(b"sk-from-bob-link", &aad(&t.f.org, E, "OPENAI_KEY"))
        .unwrap();
    let sneaky = json!({"sealed_value": sealed, "user_id": "alice"}).to_string();
    let (s, _, _) = raw("POST", &bob_api, None, Some(&sneaky), &[]).await;
    assert_eq!(s, 400, "no user_id field is accepted");
    let ok = json!({ "sealed_value": sealed }).to_string();
    let (s, _, j) = raw("POST", &bob_api, None, Some(&ok), &[]).await;
    assert_eq!((s, j["user_id"].as_str()), (200, Some("bob")));
    assert_eq!(
        t.user_value("OPENAI_KEY", "alice").await,
        Some((1, b"sk-alice-own".to_vec())),
        "alice's value is untouched"
    );

    // Expiry: a link past its hour says so (the clock moved by rewriting the stored expiry).
    let (_, carol) = t.mint("OPENAI_KEY", "carol").await;
    let carol_token = carol["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    {
        let db =
            rusqlite::Connection::open(t.v.data_dir().join(fyvault::vault::store::sqlite::DB_FILE))
                .unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let hash = fyvault::crypto::hash_token(carol_token.as_bytes());
        let n = db
            .execute(
                "UPDATE connect_links SET expires_ms = 1 WHERE hash = ?1",
                [hash],
            )
            .unwrap();
        assert_eq!(n, 1, "the link is stored by its hash, not its token");
        let plain: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM connect_links WHERE hash = ?1",
                [&carol_token],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(plain, 0);
    }
    let carol_api = format!("{}/api/v1/connect/{carol_token}", t.v.url);
    assert_error(
        &raw("GET", &carol_api, None, None, &[]).await,
        410,
        "link_expired",
    );
    assert_error(
        &raw("POST", &carol_api, None, Some(&ok), &[]).await,
        410,
        "link_expired",
    );

    // Audit: the link's creation and the value it wrote, by user, never the token.
    let audit =
        t.v.admin
            .audit(&t.f.org, &fyvault::api::AuditQuery::default())
            .await
            .unwrap();
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(token) && !text.contains(&carol_token));
    assert!(
        audit
            .records
            .iter()
            .any(|r| r.action == "link_created" && r.user_id.as_deref() == Some("alice"))
    );
    assert!(audit.records.iter().any(|r| r.action == "issued"
        && r.user_id.as_deref() == Some("alice")
        && r.actor.starts_with("connect:")));
}
