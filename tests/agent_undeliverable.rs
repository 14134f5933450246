//! A sealed value the agent cannot open does not vanish (docs/vault.md, "Sealing a value
//! yourself"; docs/agent.md): sealed by pyhpke right and wrong (the library's default info, a
//! wrong AAD) and pushed to a real vault, the agent serves the right ones, keeps what it held for
//! the wrong ones, shows them in its health and `fyvault status`, and reports each once to the
//! vault as an `undeliverable` event (secret, version, reason; no value bytes) that the audit
//! trail and the provider (`GET …/providers/:id/undeliverable`) both show.

mod agent_support;
mod common_interop;

use std::process::Command;

use agent_support::vault::{Log, World};
use agent_support::{eventually, fyvault, get, ship_all};
use common_interop::sealing::{Mistake, seal_python};
use fyvault::api::{AuditQuery, AuditQueryResponse, CreateTokenRequest};
use fyvault::client::{WriteRequest, WriteValue};

fn sealed(w: &World, name: &str, sealed_value: String) -> WriteRequest {
    WriteRequest {
        secret_name: name.into(),
        environment: w.env.clone(),
        value: WriteValue::Sealed(sealed_value),
        grace_period_seconds: Some(0),
        idempotency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_seals_are_reported_not_lost() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    let agent = w.start_agent("").await;
    let sock = w.socket();
    let pk = w
        .provider
        .public_key(&w.org, &w.env)
        .await
        .unwrap()
        .public_key;
    let seal = |name: &str, value: &[u8], mistake| {
        seal_python(&pk, (w.org.as_str(), w.env.as_str(), name), value, mistake)
    };
    let (org, prov) = (w.org.clone(), w.provider_id.clone());

    // GOOD v1 right; BAD v1 with the library's default info; GOOD v2 with a wrong AAD.
    let good_v1 = seal("GOOD", b"good-one", Mistake::None);
    w.provider
        .push(&org, &prov, &sealed(&w, "GOOD", good_v1))
        .await
        .unwrap();
    let bad = seal("BAD", b"bad-value-bytes", Mistake::DefaultInfo);
    w.provider
        .push(&org, &prov, &sealed(&w, "BAD", bad))
        .await
        .unwrap();
    let good_v2 = seal("GOOD", b"good-two-wrong-aad", Mistake::WrongAad);
    w.provider
        .rotate(&org, &prov, &sealed(&w, "GOOD", good_v2))
        .await
        .unwrap();

    // The agent's health lists both, and it still serves GOOD v1.
    let h = eventually("both to show as undeliverable", || async {
        let h = get(&sock, "/v1/health").await.json();
        (h["undeliverable"].as_array().map(Vec::len) == Some(2)).then_some(h)
    })
    .await;
    let list = h["undeliverable"].as_array().unwrap();
    assert_eq!(
        (&list[0]["secret"], &list[0]["version"], &list[0]["reason"]),
        (&"BAD".into(), &1.into(), &"cannot_open".into()),
        "{h}"
    );
    assert_eq!(
        (&list[1]["secret"], &list[1]["version"]),
        (&"GOOD".into(), &2.into())
    );
    let got = Command::new(fyvault())
        .args(["get", "GOOD", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(got.stdout, b"good-one", "the agent keeps what it held");
    let status = Command::new(fyvault())
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("undeliverable: BAD version 1 (cannot_open)")
            && status.contains("undeliverable: GOOD version 2 (cannot_open)"),
        "{status}"
    );

    // Shipped to the vault: the audit trail has one record each, without value bytes.
    ship_all(&agent).await;
    let query = AuditQuery {
        action: Some("undeliverable".into()),
        ..AuditQuery::default()
    };
    let trail = w.admin.audit(&org, &query).await.unwrap();
    let seen: Vec<(Option<&str>, Option<u64>, Option<&str>)> = trail
        .records
        .iter()
        .map(|r| (r.secret.as_deref(), r.version, r.reason.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("BAD"), Some(1), Some("cannot_open")),
            (Some("GOOD"), Some(2), Some("cannot_open"))
        ]
    );
    let text = serde_json::to_string(&trail).unwrap();
    assert!(
        !text.contains("bad-value") && !text.contains("good-two"),
        "{text}"
    );
    assert!(trail.records.iter().all(|r| r.actor.starts_with("agent:")));

    // The provider sees them for its own versions (with a token of its own).
    let token = w
        .admin
        .create_provider_token(&org, &prov, &CreateTokenRequest::default())
        .await
        .unwrap()
        .token;
    let url = format!(
        "{}/api/v1/orgs/{org}/providers/{prov}/undeliverable",
        w.vault.url
    );
    let http = reqwest::Client::new();
    let answer: AuditQueryResponse = http
        .get(&url)
        .query(&[("secret_name", "BAD")])
        .bearer_auth(String::from_utf8(token.expose().to_vec()).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer.records.len(), 1, "{answer:?}");
    assert_eq!(answer.records[0].reason.as_deref(), Some("cannot_open"));
    assert_eq!(answer.records[0].version, Some(1));

    // Sealed right, BAD is delivered and leaves the list; nothing is reported twice.
    let fixed = seal("BAD", b"bad-fixed", Mistake::None);
    w.provider
        .push(&org, &prov, &sealed(&w, "BAD", fixed))
        .await
        .unwrap();
    eventually("BAD to be delivered", || async {
        let h = get(&sock, "/v1/health").await.json();
        (h["undeliverable"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    ship_all(&agent).await;
    let again = w.admin.audit(&org, &query).await.unwrap();
    assert_eq!(again.records.len(), 2, "each reported once: {again:?}");
    agent.shutdown().await.unwrap();
}
