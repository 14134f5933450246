//! The store conformance suite: one generic set of checks every `Store` implementation must
//! pass. Call [`run_all`] with a factory that returns a fresh, empty store each time, and
//! [`run_shared`] with two handles on one fresh database (two instances of the vault). SQLite
//! (`vault_store.rs`) and PostgreSQL (`vault_pg_store.rs`) run the very same checks.

use std::future::Future;
use std::sync::Arc;

use fyvault::api::{AccessAction, AccessEvent, AccessVia, SecretState};
use fyvault::crypto::TokenKind;
use fyvault::vault::store::{
    AgentBatch, AuditContext, AuditFilter, Environment, IDEMPOTENCY_RETENTION_MS, Idempotency,
    NewAuditRecord, Org, Provider, RevokeSecret, Store, StoreError, TokenFilter, TokenRecord,
    WriteKind, WriteVersion,
};

mod concurrent;
mod floors;
mod users;

pub use concurrent::{concurrent_audit_batches, concurrent_idempotent_retries, concurrent_writes};
use concurrent::{
    concurrent_audit_batches_on, concurrent_idempotent_retries_on, concurrent_writes_on,
    mixed_writers_never_deadlock,
};

const T0: i64 = 1_700_000_000_000;

fn ctx(actor: &str) -> AuditContext {
    AuditContext {
        actor: actor.into(),
        source_ip: Some("192.0.2.1".into()),
    }
}

fn token(id: &str, kind: TokenKind, org: Option<&str>) -> TokenRecord {
    TokenRecord {
        token_id: id.into(),
        kind,
        hash: format!("hash-{id}"),
        org_id: org.map(str::to_string),
        environment: None,
        provider_id: None,
        label: None,
        created_ms: T0,
        expires_ms: None,
        revoked_ms: None,
    }
}

/// org `o1` with environments `prod` (grace 300) and `staging` (grace 0), providers `p1`, `p2`.
pub async fn seed_for_feed(store: &dyn Store) {
    seeded_dyn(store).await;
}

/// Pushes `name` in `env` as `p1`; returns the environment's new revision.
pub async fn push_one(store: &dyn Store, env: &str, name: &str) -> u64 {
    store
        .write_version(write(env, name, "p1", WriteKind::Push, "sealed", T0))
        .await
        .unwrap()
        .revision
        .unwrap()
}

async fn seeded(store: &Arc<dyn Store>) {
    seeded_dyn(store.as_ref()).await;
}

async fn seeded_dyn(store: &dyn Store) {
    store
        .create_org(
            Org {
                org_id: "o1".into(),
                name: "One".into(),
                created_ms: T0,
            },
            ctx("admin:t"),
        )
        .await
        .unwrap();
    for (name, grace) in [("prod", 300), ("staging", 0)] {
        store
            .create_environment(
                Environment {
                    org_id: "o1".into(),
                    name: name.into(),
                    public_key: "pk".into(),
                    default_grace_seconds: grace,
                    revision: 0,
                    created_ms: T0,
                },
                ctx("admin:t"),
            )
            .await
            .unwrap();
    }
    for p in ["p1", "p2"] {
        store
            .create_provider(
                Provider {
                    org_id: "o1".into(),
                    provider_id: p.into(),
                    name: p.into(),
                    created_ms: T0,
                },
                TokenRecord {
                    provider_id: Some(p.into()),
                    ..token(&format!("tok_{p}"), TokenKind::Provider, Some("o1"))
                },
                ctx("admin:t"),
            )
            .await
            .unwrap();
    }
}

fn write(
    env: &str,
    name: &str,
    provider: &str,
    kind: WriteKind,
    sealed: &str,
    now: i64,
) -> WriteVersion {
    WriteVersion {
        org_id: "o1".into(),
        environment: env.into(),
        secret_name: name.into(),
        provider_id: provider.into(),
        kind,
        sealed_value: sealed.into(),
        grace_seconds: None,
        idempotency: None,
        user_id: None,
        now_ms: now,
        audit: ctx(&format!("provider:{provider}")),
    }
}

/// Runs every check, each on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    orgs_environments_providers(factory().await).await;
    tokens(factory().await).await;
    versions_grace_and_ownership(factory().await).await;
    idempotency(factory().await).await;
    revoke_everywhere(factory().await).await;
    sync_feed(factory().await).await;
    audit_trail(factory().await).await;
    floors::version_floors(factory().await).await;
    users::policies(factory().await).await;
    users::user_values(factory().await).await;
    users::connect_links(factory().await).await;
    concurrent_writes(factory().await).await;
    let store = factory().await;
    concurrent_idempotent_retries(&[store.clone(), store]).await;
    let store = factory().await;
    concurrent_audit_batches(&[store.clone(), store]).await;
}

/// The concurrency outcomes across two handles (`a`, `b`) on one fresh, empty database, as two
/// vault instances would use it.
pub async fn run_shared(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    seeded(&a).await;
    concurrent_writes_on(&[a.clone(), b.clone()], "K").await;
    concurrent_idempotent_retries_on(&[a.clone(), b.clone()]).await;
    concurrent_audit_batches_on(&[a.clone(), b.clone()]).await;
    mixed_writers_never_deadlock(&[a, b]).await;
}

pub async fn orgs_environments_providers(store: Arc<dyn Store>) {
    seeded(&store).await;
    let dup = store
        .create_org(
            Org {
                org_id: "o1".into(),
                name: "again".into(),
                created_ms: T0,
            },
            ctx("admin:t"),
        )
        .await;
    assert_eq!(dup.unwrap_err(), StoreError::AlreadyExists("org"));
    assert_eq!(store.get_org("o1").await.unwrap().unwrap().name, "One");
    assert!(store.get_org("nope").await.unwrap().is_none());
    assert_eq!(store.list_orgs().await.unwrap().len(), 1);
    let envs = store.list_environments("o1").await.unwrap();
    assert_eq!(
        envs.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["prod", "staging"]
    );
    let orphan = store
        .create_environment(
            Environment {
                org_id: "nope".into(),
                name: "prod".into(),
                public_key: "pk".into(),
                default_grace_seconds: 1,
                revision: 0,
                created_ms: T0,
            },
            ctx("admin:t"),
        )
        .await;
    assert_eq!(orphan.unwrap_err(), StoreError::NotFound("org"));
    let again = store
        .create_environment(envs[0].clone(), ctx("admin:t"))
        .await;
    assert_eq!(again.unwrap_err(), StoreError::AlreadyExists("environment"));
    let e = store.set_environment_grace("o1", "prod", 42).await.unwrap();
    assert_eq!(e.default_grace_seconds, 42);
    assert_eq!(
        store
            .set_environment_grace("o1", "nope", 1)
            .await
            .unwrap_err(),
        StoreError::NotFound("environment")
    );
    assert!(store.get_provider("o1", "p1").await.unwrap().is_some());
    assert!(store.get_provider("other", "p1").await.unwrap().is_none());
    assert_eq!(store.list_providers("o1").await.unwrap().len(), 2);
}

pub async fn tokens(store: Arc<dyn Store>) {
    seeded(&store).await;
    assert_eq!(store.count_live_admin_tokens(T0).await.unwrap(), 0);
    let mut admin = token("tok_admin", TokenKind::Admin, None);
    admin.expires_ms = Some(T0 + 1000);
    store.create_token(admin, ctx("system")).await.unwrap();
    assert_eq!(store.count_live_admin_tokens(T0).await.unwrap(), 1);
    assert_eq!(store.count_live_admin_tokens(T0 + 1000).await.unwrap(), 0);
    let dup = store
        .create_token(token("tok_admin", TokenKind::Admin, None), ctx("system"))
        .await;
    assert_eq!(dup.unwrap_err(), StoreError::AlreadyExists("token"));
    let no_org = store
        .create_token(
            token("tok_x", TokenKind::Agent, Some("nope")),
            ctx("system"),
        )
        .await;
    assert_eq!(no_org.unwrap_err(), StoreError::NotFound("org"));
    let found = store.find_token("hash-tok_p1").await.unwrap().unwrap();
    assert_eq!(found.kind, TokenKind::Provider);
    assert_eq!(found.provider_id.as_deref(), Some("p1"));
    assert!(store.find_token("hash-unknown").await.unwrap().is_none());
    let r = store
        .revoke_token("tok_p1", T0 + 5, ctx("admin:t"))
        .await
        .unwrap();
    assert_eq!(r.revoked_ms, Some(T0 + 5));
    // Idempotent: the first revocation time stays.
    let r = store
        .revoke_token("tok_p1", T0 + 9, ctx("admin:t"))
        .await
        .unwrap();
    assert_eq!(r.revoked_ms, Some(T0 + 5));
    assert_eq!(
        store
            .revoke_token("tok_nope", T0, ctx("admin:t"))
            .await
            .unwrap_err(),
        StoreError::NotFound("token")
    );
    let live = store
        .list_tokens(TokenFilter {
            org_id: Some("o1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        live.iter().map(|t| t.token_id.as_str()).collect::<Vec<_>>(),
        ["tok_p2"]
    );
    let all = store
        .list_tokens(TokenFilter {
            include_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let admins = store
        .list_tokens(TokenFilter {
            kind: Some(TokenKind::Admin),
            include_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(admins.len(), 1);
    let trail = store
        .query_audit(AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let count = |a: &str| trail.iter().filter(|r| r.action == a).count();
    assert_eq!(count("token_created"), 3);
    assert_eq!(count("token_revoked"), 1);
}

pub async fn versions_grace_and_ownership(store: Arc<dyn Store>) {
    seeded(&store).await;
    let missing = store
        .write_version(write("prod", "K", "p1", WriteKind::Rotate, "s0", T0))
        .await;
    assert_eq!(missing.unwrap_err(), StoreError::NotFound("secret"));
    let no_env = store
        .write_version(write("nope", "K", "p1", WriteKind::Push, "s0", T0))
        .await;
    assert_eq!(no_env.unwrap_err(), StoreError::NotFound("environment"));
    let v1 = store
        .write_version(write("prod", "K", "p1", WriteKind::Push, "s1", T0))
        .await
        .unwrap();
    assert_eq!(v1.response.version, 1);
    assert!(!v1.replayed);
    assert!(v1.response.previous_version_expires_at.is_none());
    let r1 = v1.revision.unwrap();
    // A push over an existing secret is an overwrite with the default grace (300 s).
    let v2 = store
        .write_version(write("prod", "K", "p1", WriteKind::Push, "s2", T0 + 1000))
        .await
        .unwrap();
    assert_eq!(v2.response.version, 2);
    assert!(v2.revision.unwrap() > r1);
    assert_eq!(
        v2.response.previous_version_expires_at.as_deref(),
        Some("2023-11-14T22:18:21Z")
    );
    let mut rot = write("prod", "K", "p1", WriteKind::Rotate, "s3", T0 + 2000);
    rot.grace_seconds = Some(10);
    let v3 = store.write_version(rot).await.unwrap();
    assert_eq!(v3.response.version, 3);
    let s = store.sync("o1", "prod", 0, T0 + 2000).await.unwrap();
    let k = &s.secrets[0];
    assert_eq!((k.version, k.sealed_value.as_deref()), (3, Some("s3")));
    let prev = k.previous.as_ref().unwrap();
    assert_eq!((prev.version, prev.sealed_value.as_str()), (2, "s2"));
    assert_eq!(prev.grace_remaining_ms, 10_000);
    // After the grace, only the current version.
    let s = store.sync("o1", "prod", 0, T0 + 12_000).await.unwrap();
    assert!(s.secrets[0].previous.is_none());
    // Grace 0 (staging default): no previous at all.
    store
        .write_version(write("staging", "K", "p1", WriteKind::Push, "a", T0))
        .await
        .unwrap();
    store
        .write_version(write("staging", "K", "p1", WriteKind::Push, "b", T0))
        .await
        .unwrap();
    let s = store.sync("o1", "staging", 0, T0).await.unwrap();
    assert!(s.secrets[0].previous.is_none());
    // Ownership: the name belongs to p1 in every environment of the org.
    for (env, kind) in [
        ("prod", WriteKind::Push),
        ("prod", WriteKind::Rotate),
        ("staging", WriteKind::Push),
    ] {
        let other = store
            .write_version(write(env, "K", "p2", kind, "x", T0))
            .await;
        assert_eq!(other.unwrap_err(), StoreError::NotOwner);
    }
    // p2 may own other names.
    store
        .write_version(write("prod", "OTHER", "p2", WriteKind::Push, "o", T0))
        .await
        .unwrap();
}

pub async fn idempotency(store: Arc<dyn Store>) {
    seeded(&store).await;
    let with_key = |provider: &str, fp: &str, sealed: &str| {
        let mut w = write("prod", "K", provider, WriteKind::Push, sealed, T0);
        w.idempotency = Some(Idempotency {
            key_hash: format!("key-{provider}"),
            fingerprint: fp.into(),
        });
        w
    };
    let first = store
        .write_version(with_key("p1", "fp1", "s1"))
        .await
        .unwrap();
    let again = store
        .write_version(with_key("p1", "fp1", "s1-resealed"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert!(again.revision.is_none());
    assert_eq!(again.response, first.response);
    let s = store.sync("o1", "prod", 0, T0).await.unwrap();
    assert_eq!(s.secrets[0].version, 1);
    assert_eq!(s.secrets[0].sealed_value.as_deref(), Some("s1"));
    let changed = store.write_version(with_key("p1", "fp2", "s2")).await;
    assert_eq!(changed.unwrap_err(), StoreError::IdempotencyMismatch);
    // After the retention period the key is forgotten: the same key makes a new version.
    let mut late = with_key("p1", "fp2", "s3");
    late.now_ms = T0 + IDEMPOTENCY_RETENTION_MS + 1;
    let late = store.write_version(late).await.unwrap();
    assert!(!late.replayed);
    assert_eq!(late.response.version, 2);
    // Keys are scoped per provider: p2's own key "key-p2" is independent (and p2 does not
    // own K, so it is refused for ownership, not replayed).
    let p2 = store.write_version(with_key("p2", "fp1", "s1")).await;
    assert_eq!(p2.unwrap_err(), StoreError::NotOwner);
}

pub async fn revoke_everywhere(store: Arc<dyn Store>) {
    seeded(&store).await;
    let revoke = |provider: &str, name: &str| RevokeSecret {
        org_id: "o1".into(),
        secret_name: name.into(),
        provider_id: provider.into(),
        user_id: None,
        now_ms: T0 + 10,
        audit: ctx(&format!("provider:{provider}")),
    };
    assert_eq!(
        store.revoke_secret(revoke("p1", "K")).await.unwrap_err(),
        StoreError::NotFound("secret")
    );
    for env in ["prod", "staging"] {
        store
            .write_version(write(env, "K", "p1", WriteKind::Push, "s1", T0))
            .await
            .unwrap();
        store
            .write_version(write(env, "K", "p1", WriteKind::Push, "s2", T0))
            .await
            .unwrap();
    }
    assert_eq!(
        store.revoke_secret(revoke("p2", "K")).await.unwrap_err(),
        StoreError::NotOwner
    );
    let out = store.revoke_secret(revoke("p1", "K")).await.unwrap();
    assert_eq!(out.environments, ["prod", "staging"]);
    assert_eq!(out.changed.len(), 2);
    for env in ["prod", "staging"] {
        let s = store.sync("o1", env, 0, T0 + 10).await.unwrap();
        let k = &s.secrets[0];
        assert_eq!(k.state, SecretState::Revoked);
        assert!(k.sealed_value.is_none());
        assert!(k.previous.is_none(), "no grace after a revoke");
    }
    // Revoking again changes nothing but still answers.
    let again = store.revoke_secret(revoke("p1", "K")).await.unwrap();
    assert!(again.changed.is_empty());
    // A rotation of a revoked secret is refused; a push re-issues it as a new version.
    let rot = store
        .write_version(write("prod", "K", "p1", WriteKind::Rotate, "s3", T0 + 20))
        .await;
    assert_eq!(rot.unwrap_err(), StoreError::Revoked);
    let v = store
        .write_version(write("prod", "K", "p1", WriteKind::Push, "s3", T0 + 20))
        .await
        .unwrap();
    assert_eq!(v.response.version, 3);
    assert!(v.response.previous_version_expires_at.is_none());
    let s = store.sync("o1", "prod", 0, T0 + 20).await.unwrap();
    assert_eq!(s.secrets[0].state, SecretState::Active);
    assert!(s.secrets[0].previous.is_none());
}

pub async fn sync_feed(store: Arc<dyn Store>) {
    seeded(&store).await;
    assert_eq!(
        store.sync("o1", "nope", 0, T0).await.unwrap_err(),
        StoreError::NotFound("environment")
    );
    let empty = store.sync("o1", "prod", 0, T0).await.unwrap();
    assert_eq!(
        (empty.revision, empty.full, empty.secrets.len()),
        (0, true, 0)
    );
    store
        .write_version(write("prod", "A", "p1", WriteKind::Push, "a1", T0))
        .await
        .unwrap();
    let r = store
        .write_version(write("prod", "B", "p1", WriteKind::Push, "b1", T0))
        .await
        .unwrap()
        .revision
        .unwrap();
    // Another environment's changes do not show here.
    store
        .write_version(write("staging", "C", "p1", WriteKind::Push, "c1", T0))
        .await
        .unwrap();
    let full = store.sync("o1", "prod", 0, T0).await.unwrap();
    assert!(full.full);
    assert_eq!(full.revision, r);
    assert_eq!(
        full.secrets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["A", "B"]
    );
    let none = store.sync("o1", "prod", r, T0).await.unwrap();
    assert!(!none.full && none.secrets.is_empty());
    assert_eq!(none.revision, r);
    let r2 = store
        .write_version(write("prod", "A", "p1", WriteKind::Push, "a2", T0))
        .await
        .unwrap()
        .revision
        .unwrap();
    let inc = store.sync("o1", "prod", r, T0).await.unwrap();
    assert!(!inc.full);
    assert_eq!(inc.revision, r2);
    assert_eq!(inc.secrets.len(), 1);
    assert_eq!(inc.secrets[0].name, "A");
    assert_eq!(inc.secrets[0].version, 2);
    // A revision from the future (restored database…) gets the full state.
    let ahead = store.sync("o1", "prod", r2 + 100, T0).await.unwrap();
    assert!(ahead.full);
    assert_eq!(ahead.secrets.len(), 2);
}

fn event(seq: u64, action: AccessAction) -> (i64, AccessEvent) {
    (
        T0 + seq as i64,
        AccessEvent {
            seq,
            time: String::new(),
            action,
            secret: Some("K".into()),
            version: Some(1),
            via: Some(AccessVia::Fuse),
            pid: Some(100),
            uid: Some(1000),
            gid: Some(1000),
            exe: Some("/usr/bin/app".into()),
            unit: Some("app.service".into()),
            count: 3,
            reason: None,
            user_id: None,
        },
    )
}

pub async fn audit_trail(store: Arc<dyn Store>) {
    seeded(&store).await;
    store
        .write_version(write("prod", "K", "p1", WriteKind::Push, "s1", T0 + 100))
        .await
        .unwrap();
    store
        .write_version(write("prod", "K", "p1", WriteKind::Rotate, "s2", T0 + 200))
        .await
        .unwrap();
    store
        .revoke_secret(RevokeSecret {
            org_id: "o1".into(),
            secret_name: "K".into(),
            provider_id: "p1".into(),
            user_id: None,
            now_ms: T0 + 300,
            audit: ctx("provider:p1"),
        })
        .await
        .unwrap();
    let filter = |action: Option<&str>| AuditFilter {
        org_id: Some("o1".into()),
        secret: Some("K".into()),
        action: action.map(str::to_string),
        limit: 100,
        ..Default::default()
    };
    let recs = store.query_audit(filter(None)).await.unwrap();
    assert_eq!(
        recs.iter()
            .map(|r| (r.action.as_str(), r.version))
            .collect::<Vec<_>>(),
        [
            ("issued", Some(1)),
            ("rotated", Some(2)),
            ("revoked", Some(2))
        ]
    );
    assert!(recs.iter().all(|r| r.actor == "provider:p1"
        && r.source_ip.as_deref() == Some("192.0.2.1")
        && r.environment.as_deref() == Some("prod")));
    let batch = |seqs: &[u64]| AgentBatch {
        org_id: "o1".into(),
        environment: "prod".into(),
        agent_id: "agent-1".into(),
        host: Some("web-1".into()),
        actor: "agent:tok_a".into(),
        source_ip: Some("198.51.100.7".into()),
        events: seqs
            .iter()
            .map(|s| event(*s, AccessAction::Accessed))
            .collect(),
    };
    let r = store.ingest_agent_batch(batch(&[1, 2, 3])).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (3, 0));
    let r = store.ingest_agent_batch(batch(&[1, 2, 3])).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 3));
    let r = store.ingest_agent_batch(batch(&[3, 4])).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (1, 1));
    // The same seq from another agent is another event.
    let mut other = batch(&[1]);
    other.agent_id = "agent-2".into();
    assert_eq!(store.ingest_agent_batch(other).await.unwrap().accepted, 1);
    let accessed = store.query_audit(filter(Some("accessed"))).await.unwrap();
    assert_eq!(accessed.len(), 5);
    let a = &accessed[0];
    assert_eq!(a.host.as_deref(), Some("web-1"));
    assert_eq!(a.exe.as_deref(), Some("/usr/bin/app"));
    assert_eq!(a.unit.as_deref(), Some("app.service"));
    assert_eq!((a.pid, a.uid, a.count), (Some(100), Some(1000), Some(3)));
    assert_eq!(a.via, Some(AccessVia::Fuse));
    assert_eq!(a.actor, "agent:tok_a");
    assert_eq!(a.reason, None);
    // An `undeliverable` report keeps its reason (schema version 2).
    let mut report = batch(&[]);
    let (t, mut e) = event(9, AccessAction::Undeliverable);
    (e.via, e.pid, e.uid, e.gid, e.exe, e.unit) = (None, None, None, None, None, None);
    e.reason = Some("cannot_open".into());
    report.events = vec![(t, e)];
    assert_eq!(store.ingest_agent_batch(report).await.unwrap().accepted, 1);
    let u = store
        .query_audit(filter(Some("undeliverable")))
        .await
        .unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].version, u[0].reason.as_deref(), u[0].pid),
        (Some(1), Some("cannot_open"), None)
    );
    // Time window and limit.
    let window = store
        .query_audit(AuditFilter {
            since_ms: Some(T0 + 150),
            until_ms: Some(T0 + 250),
            ..filter(None)
        })
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["rotated"]
    );
    let limited = store
        .query_audit(AuditFilter {
            limit: 2,
            ..filter(None)
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    let staging = store
        .query_audit(AuditFilter {
            environment: Some("staging".into()),
            ..filter(None)
        })
        .await
        .unwrap();
    assert!(staging.is_empty());
    store
        .append_audit(NewAuditRecord {
            time_ms: T0,
            org_id: None,
            action: "denied".into(),
            actor: "admin:x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let global = store
        .query_audit(AuditFilter {
            action: Some("denied".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(global.len(), 1);
    assert_eq!(global[0].org_id, "");
}
