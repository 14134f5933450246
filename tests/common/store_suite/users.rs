//! Policy per secret and environment, per-user values and connect links (issue 14): the same
//! checks on every store.

use std::sync::Arc;

use fyvault::api::{AccessAction, SecretPolicy, SecretState};
use fyvault::vault::store::{
    AgentBatch, Idempotency, LinkRecord, RevokeSecret, SetPolicy, Store, StoreError, WriteKind,
    WriteVersion,
};

use super::{T0, ctx, event, seeded, write};

fn set(env: &str, name: &str, policy: SecretPolicy, now: i64) -> SetPolicy {
    SetPolicy {
        org_id: "o1".into(),
        environment: env.into(),
        secret_name: name.into(),
        policy,
        now_ms: now,
        audit: ctx("admin:t"),
    }
}

fn user_write(name: &str, user: &str, kind: WriteKind, sealed: &str, now: i64) -> WriteVersion {
    WriteVersion {
        user_id: Some(user.into()),
        ..write("prod", name, "p1", kind, sealed, now)
    }
}

fn revoke(name: &str, user: Option<&str>, now: i64) -> RevokeSecret {
    RevokeSecret {
        org_id: "o1".into(),
        secret_name: name.into(),
        provider_id: "p1".into(),
        user_id: user.map(str::to_string),
        now_ms: now,
        audit: ctx("provider:p1"),
    }
}

pub async fn policies(store: Arc<dyn Store>) {
    seeded(&store).await;
    assert_eq!(
        store
            .set_policy(set("nope", "K", SecretPolicy::User, T0))
            .await
            .unwrap_err(),
        StoreError::NotFound("environment")
    );
    // A creator secret, then switched to user: the feed carries the policy and no longer the
    // creator value (presented as revoked), and a policy declares a name nothing was pushed to.
    store
        .write_version(write("prod", "K", "p1", WriteKind::Push, "c1", T0))
        .await
        .unwrap();
    let r1 = store.sync("o1", "prod", 0, T0).await.unwrap().revision;
    let rev = store
        .set_policy(set("prod", "K", SecretPolicy::User, T0 + 1))
        .await
        .unwrap()
        .revision
        .expect("a change bumps the revision");
    assert_eq!(
        store
            .set_policy(set("prod", "K", SecretPolicy::User, T0 + 2))
            .await
            .unwrap()
            .revision,
        None,
        "setting the same policy again changes nothing"
    );
    store
        .set_policy(set("prod", "DECLARED", SecretPolicy::User, T0 + 3))
        .await
        .unwrap();
    let inc = store.sync("o1", "prod", r1, T0 + 4).await.unwrap();
    assert!(inc.revision > rev);
    let policies: Vec<_> = inc
        .policies
        .iter()
        .map(|p| (p.name.as_str(), p.policy))
        .collect();
    assert_eq!(
        policies,
        [("DECLARED", SecretPolicy::User), ("K", SecretPolicy::User)]
    );
    assert_eq!(inc.secrets.len(), 1);
    assert_eq!(inc.secrets[0].state, SecretState::Revoked);
    assert!(inc.secrets[0].sealed_value.is_none());
    // Writes must fit the policy.
    assert_eq!(
        store
            .write_version(write("prod", "K", "p1", WriteKind::Push, "c2", T0 + 5))
            .await
            .unwrap_err(),
        StoreError::PolicyMismatch(SecretPolicy::User)
    );
    assert_eq!(
        store
            .write_version(WriteVersion {
                user_id: Some("alice".into()),
                ..write("staging", "K", "p1", WriteKind::Push, "u", T0 + 5)
            })
            .await
            .unwrap_err(),
        StoreError::PolicyMismatch(SecretPolicy::Creator),
        "the policy is per environment: K is creator in staging"
    );
    // Back to creator: the creator value is served again.
    store
        .set_policy(set("prod", "K", SecretPolicy::Creator, T0 + 6))
        .await
        .unwrap();
    let back = store.sync("o1", "prod", 0, T0 + 7).await.unwrap();
    let k = back.secrets.iter().find(|s| s.name == "K").unwrap();
    assert_eq!(
        (k.state, k.sealed_value.as_deref()),
        (SecretState::Active, Some("c1"))
    );
    let audit = store
        .query_audit(fyvault::vault::store::AuditFilter {
            org_id: Some("o1".into()),
            action: Some("policy_changed".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let changes: Vec<_> = audit
        .iter()
        .map(|r| (r.secret.as_deref(), r.reason.as_deref()))
        .collect();
    assert_eq!(
        changes,
        [
            (Some("K"), Some("user")),
            (Some("DECLARED"), Some("user")),
            (Some("K"), Some("creator"))
        ]
    );
    // The listing: every name, its policy, creator fields only where there is a value.
    let list = store.list_secrets("o1", "prod", 0).await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|s| (s.name.as_str(), s.policy, s.creator.as_ref().map(|c| c.0)))
        .collect();
    assert_eq!(
        names,
        [
            ("DECLARED", SecretPolicy::User, None),
            ("K", SecretPolicy::Creator, Some(1))
        ]
    );
}

pub async fn user_values(store: Arc<dyn Store>) {
    seeded(&store).await;
    store
        .set_policy(set("prod", "AI", SecretPolicy::User, T0))
        .await
        .unwrap();
    let base = store.sync("o1", "prod", 0, T0).await.unwrap().revision;
    // Versions are per user.
    let a1 = store
        .write_version(user_write("AI", "alice", WriteKind::Push, "a1", T0 + 1))
        .await
        .unwrap();
    assert_eq!(a1.response.version, 1);
    assert_eq!(a1.response.user_id.as_deref(), Some("alice"));
    let b1 = store
        .write_version(user_write("AI", "bob", WriteKind::Push, "b1", T0 + 2))
        .await
        .unwrap();
    assert_eq!(b1.response.version, 1, "bob's first version");
    assert_eq!(
        store
            .write_version(user_write("AI", "carol", WriteKind::Rotate, "c", T0 + 3))
            .await
            .unwrap_err(),
        StoreError::NotFound("secret"),
        "a rotation needs that user's value"
    );
    // Another provider may not write the name's user values.
    assert_eq!(
        store
            .write_version(WriteVersion {
                provider_id: "p2".into(),
                ..user_write("AI", "dave", WriteKind::Push, "d", T0 + 3)
            })
            .await
            .unwrap_err(),
        StoreError::NotOwner
    );
    // Idempotency per user: the same key for another user is another request.
    let idem = |fp: &str| Idempotency {
        key_hash: "k1".into(),
        fingerprint: fp.into(),
    };
    let first = store
        .write_version(WriteVersion {
            idempotency: Some(idem("fp-alice")),
            ..user_write("AI", "alice", WriteKind::Rotate, "a2", T0 + 10)
        })
        .await
        .unwrap();
    let again = store
        .write_version(WriteVersion {
            idempotency: Some(idem("fp-alice")),
            ..user_write("AI", "alice", WriteKind::Rotate, "a2", T0 + 11)
        })
        .await
        .unwrap();
    assert!(again.replayed && again.response == first.response);
    assert_eq!(first.response.version, 2);
    assert!(first.response.previous_version_expires_at.is_some());
    // One user's rotation is one small change: only alice's value, with her previous version
    // in grace.
    let after_b = b1.revision.unwrap();
    let inc = store.sync("o1", "prod", after_b, T0 + 12).await.unwrap();
    assert!(inc.secrets.is_empty() && inc.policies.is_empty());
    assert_eq!(inc.user_values.len(), 1);
    let a = &inc.user_values[0];
    assert_eq!(
        (a.user_id.as_str(), a.secret.version),
        ("alice", 2),
        "only the rotated user's value"
    );
    let prev = a.secret.previous.as_ref().expect("grace for alice's v1");
    assert_eq!((prev.version, prev.sealed_value.as_str()), (1, "a1"));
    let full = store.sync("o1", "prod", 0, T0 + 12).await.unwrap();
    let users: Vec<_> = full
        .user_values
        .iter()
        .map(|u| (u.user_id.as_str(), u.secret.version))
        .collect();
    assert_eq!(users, [("alice", 2), ("bob", 1)]);
    assert!(full.revision > base);
    // Revoke one user: only that user's value goes, at once.
    let out = store
        .revoke_secret(revoke("AI", Some("alice"), T0 + 20))
        .await
        .unwrap();
    assert_eq!(out.environments, ["prod"]);
    let inc = store
        .sync("o1", "prod", full.revision, T0 + 21)
        .await
        .unwrap();
    assert_eq!(inc.user_values.len(), 1);
    assert_eq!(inc.user_values[0].user_id, "alice");
    assert_eq!(inc.user_values[0].secret.state, SecretState::Revoked);
    assert!(inc.user_values[0].secret.previous.is_none(), "no grace");
    assert_eq!(
        store
            .revoke_secret(revoke("AI", Some("nobody"), T0 + 22))
            .await
            .unwrap_err(),
        StoreError::NotFound("secret")
    );
    // Access events carry the user; the listing counts users with a value and users read.
    let mut e1 = event(1, AccessAction::Accessed);
    e1.1.secret = Some("AI".into());
    e1.1.user_id = Some("bob".into());
    let mut e2 = event(2, AccessAction::Accessed);
    e2.1.secret = Some("AI".into());
    e2.1.user_id = Some("bob".into());
    let mut e3 = event(3, AccessAction::Accessed);
    e3.1.secret = Some("AI".into());
    e3.1.user_id = Some("alice".into());
    store
        .ingest_agent_batch(AgentBatch {
            org_id: "o1".into(),
            environment: "prod".into(),
            agent_id: "a1".into(),
            host: None,
            actor: "agent:t".into(),
            source_ip: None,
            events: vec![e1, e2, e3],
        })
        .await
        .unwrap();
    let list = store.list_secrets("o1", "prod", T0).await.unwrap();
    let ai = list.iter().find(|s| s.name == "AI").unwrap();
    assert_eq!(
        (ai.users_with_value, ai.users_read),
        (1, 2),
        "bob holds a value; bob and alice were read"
    );
    assert!(ai.creator.is_none());
    let later = store.list_secrets("o1", "prod", T0 + 1_000).await.unwrap();
    assert_eq!(
        later[0].users_read, 0,
        "reads before the window do not count"
    );
    let records = store
        .query_audit(fyvault::vault::store::AuditFilter {
            org_id: Some("o1".into()),
            secret: Some("AI".into()),
            action: Some("accessed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records[0].user_id.as_deref(), Some("bob"));
    // Revoke for everyone: every remaining user's value goes.
    store
        .revoke_secret(revoke("AI", None, T0 + 30))
        .await
        .unwrap();
    let full = store.sync("o1", "prod", 0, T0 + 31).await.unwrap();
    assert!(
        full.user_values
            .iter()
            .all(|u| u.secret.state == SecretState::Revoked && u.secret.sealed_value.is_none())
    );
    let list = store.list_secrets("o1", "prod", T0).await.unwrap();
    assert_eq!(list[0].users_with_value, 0);
}

fn link(hash: &str, user: &str, expires: i64) -> LinkRecord {
    LinkRecord {
        hash: hash.into(),
        link_id: format!("link_{hash}"),
        org_id: "o1".into(),
        environment: "prod".into(),
        secret_name: "AI".into(),
        user_id: user.into(),
        created_ms: T0,
        expires_ms: expires,
        used_ms: None,
    }
}

pub async fn connect_links(store: Arc<dyn Store>) {
    seeded(&store).await;
    store
        .set_policy(set("prod", "AI", SecretPolicy::User, T0))
        .await
        .unwrap();
    store
        .create_link(link("h1", "alice", T0 + 3_600_000), ctx("agent:t"))
        .await
        .unwrap();
    store
        .create_link(link("h2", "bob", T0 + 10), ctx("agent:t"))
        .await
        .unwrap();
    assert_eq!(
        store
            .create_link(
                LinkRecord {
                    environment: "nope".into(),
                    ..link("h3", "x", T0 + 10)
                },
                ctx("agent:t")
            )
            .await
            .unwrap_err(),
        StoreError::NotFound("environment")
    );
    let found = store.find_link("h1").await.unwrap().unwrap();
    assert_eq!((found.user_id.as_str(), found.used_ms), ("alice", None));
    assert!(store.find_link("nope").await.unwrap().is_none());
    let w = |user: &str, now: i64| WriteVersion {
        provider_id: String::new(),
        audit: ctx("connect:link_h1"),
        ..user_write("AI", user, WriteKind::Push, "sealed-by-browser", now)
    };
    // A link writes only its own user's value.
    assert_eq!(
        store.use_link("h1", w("bob", T0 + 1)).await.unwrap_err(),
        StoreError::NotFound("link")
    );
    let used = store.use_link("h1", w("alice", T0 + 1)).await.unwrap();
    assert_eq!(used.response.version, 1);
    assert_eq!(
        store.use_link("h1", w("alice", T0 + 2)).await.unwrap_err(),
        StoreError::LinkUsed,
        "single use"
    );
    assert_eq!(
        store.find_link("h1").await.unwrap().unwrap().used_ms,
        Some(T0 + 1)
    );
    assert_eq!(
        store.use_link("h2", w("bob", T0 + 10)).await.unwrap_err(),
        StoreError::LinkExpired
    );
    let full = store.sync("o1", "prod", 0, T0 + 3).await.unwrap();
    assert_eq!(full.user_values.len(), 1);
    assert_eq!(full.user_values[0].user_id, "alice");
    assert_eq!(
        full.user_values[0].secret.sealed_value.as_deref(),
        Some("sealed-by-browser")
    );
    // A link never overrides the owner rule of provider writes: the name stays p1's to write
    // once p1 wrote it, and a link-written value leaves the name unowned.
    store
        .write_version(user_write("AI", "carol", WriteKind::Push, "c", T0 + 4))
        .await
        .unwrap();
}
