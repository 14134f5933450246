//! The audit trail (DESIGN §3.5): server-side records with actor and source IP, idempotent
//! agent batches, filtered queries, trusted proxies, and `fyvault audit`.

mod common;

use common::{ENV, TestVault, assert_error, raw, tok};
use fyvault::api::{
    AccessAction, AccessEvent, AccessVia, AuditBatch, AuditQuery, CreateTokenRequest,
};
use fyvault::client::{WriteRequest, WriteValue};
use fyvault::secret::Secret;
use serde_json::json;

fn write(name: &str, value: &str) -> WriteRequest {
    WriteRequest {
        secret_name: name.into(),
        environment: ENV.into(),
        value: WriteValue::Plaintext(Secret::copy_from(value.as_bytes())),
        grace_period_seconds: None,
        idempotency_key: None,
    }
}

fn q() -> AuditQuery {
    AuditQuery::default()
}

fn event(seq: u64, secret: &str) -> AccessEvent {
    AccessEvent {
        seq,
        time: "2025-03-01T10:00:00Z".into(),
        action: AccessAction::Accessed,
        secret: Some(secret.into()),
        version: Some(1),
        via: Some(AccessVia::Socket),
        pid: Some(4242),
        uid: Some(1001),
        gid: Some(1001),
        exe: Some("/usr/bin/python3".into()),
        unit: Some("billing.service".into()),
        count: 2,
        reason: None,
        user_id: None,
    }
}

#[tokio::test]
async fn server_records_writes_token_events_and_denials_without_tokens() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    prov.push(&f.org, &f.provider, &write("K", "v1"))
        .await
        .unwrap();
    prov.rotate(&f.org, &f.provider, &write("K", "v2"))
        .await
        .unwrap();
    prov.revoke(&f.org, &f.provider, "K").await.unwrap();
    let extra = tv
        .admin
        .create_agent_token(&f.org, ENV, &CreateTokenRequest::default())
        .await
        .unwrap();
    tv.admin.revoke_token(&extra.token_id).await.unwrap();
    // A denial: the provider reaches for another org.
    let e = prov
        .push("org_elsewhere", &f.provider, &write("K", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    // A denial: another provider reaches for K.
    let (p2, t2) = tv.provider(&f.org, "intruder").await;
    let e = tv
        .client(&t2)
        .push(&f.org, &p2, &write("K", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_secret_owner"));
    // A revoked token used again.
    assert!(
        tv.client(&extra.token)
            .sync(&f.org, ENV, 0, 0)
            .await
            .is_err()
    );

    let recs = tv.admin.audit(&f.org, &q()).await.unwrap().records;
    let find = |action: &str| {
        recs.iter()
            .filter(|r| r.action == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let provider_actor = format!("provider:{}", f.provider);
    for (action, version) in [("issued", 1), ("rotated", 2), ("revoked", 2)] {
        let r = &find(action)[0];
        assert_eq!(r.secret.as_deref(), Some("K"));
        assert_eq!(r.version, Some(version));
        assert_eq!(r.environment.as_deref(), Some(ENV));
        assert_eq!(r.actor, provider_actor);
        assert_eq!(r.source_ip.as_deref(), Some("127.0.0.1"));
    }
    let created = find("token_created");
    assert!(created.iter().any(|r| r.actor.starts_with("admin:tok_")));
    let revoked = find("token_revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].source_ip.as_deref(), Some("127.0.0.1"));
    let denied = find("denied");
    assert!(
        denied.iter().any(|r| r.actor == provider_actor),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r.actor == format!("agent:{}", extra.token_id)),
        "{denied:?}"
    );
    // No token, in any form, in the trail.
    let all = serde_json::to_string(&recs).unwrap();
    for t in [
        &f.provider_token,
        &f.agent_token,
        &extra.token,
        &tv.admin_token,
    ] {
        assert!(!all.contains(&tok(t)));
        assert!(!all.contains(&fyvault::crypto::hash_token(t.expose())));
    }
    for prefix in ["fvprov_", "fvagent_", "fvadmin_"] {
        assert!(!all.contains(prefix));
    }
}

#[tokio::test]
async fn agent_batches_are_ingested_once_and_validated() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let agent = tv.client(&f.agent_token);
    let batch = AuditBatch {
        agent_id: "web-1:9f2c".into(),
        host: Some("web-1".into()),
        events: vec![
            event(1, "STRIPE_SK"),
            event(2, "STRIPE_SK"),
            event(3, "OTHER"),
        ],
    };
    let r = agent.post_audit(&f.org, &batch).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (3, 0));
    let r = agent.post_audit(&f.org, &batch).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 3));
    let mut more = batch.clone();
    more.events = vec![event(3, "OTHER"), event(4, "OTHER")];
    let r = agent.post_audit(&f.org, &more).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (1, 1));

    let recs = tv
        .admin
        .audit(
            &f.org,
            &AuditQuery {
                action: Some("accessed".into()),
                ..q()
            },
        )
        .await
        .unwrap()
        .records;
    assert_eq!(recs.len(), 4);
    let r = &recs[0];
    assert_eq!(r.time, "2025-03-01T10:00:00Z");
    assert_eq!(r.host.as_deref(), Some("web-1"));
    assert_eq!(r.environment.as_deref(), Some(ENV));
    assert_eq!(
        (r.pid, r.uid, r.gid, r.count),
        (Some(4242), Some(1001), Some(1001), Some(2))
    );
    assert_eq!(r.exe.as_deref(), Some("/usr/bin/python3"));
    assert_eq!(r.unit.as_deref(), Some("billing.service"));
    assert_eq!(r.via, Some(AccessVia::Socket));
    assert!(r.actor.starts_with("agent:tok_"));
    assert_eq!(r.source_ip.as_deref(), Some("127.0.0.1"));

    // `missing` (a read of a name that does not exist; no version) and `via: systemd` are
    // stored and queried like every other event.
    let mut missing = event(5, "NOT_PUSHED");
    missing.action = AccessAction::Missing;
    missing.version = None;
    missing.via = Some(AccessVia::Systemd);
    let mut more = batch.clone();
    more.events = vec![missing];
    let r = agent.post_audit(&f.org, &more).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (1, 0));
    let recs = tv
        .admin
        .audit(
            &f.org,
            &AuditQuery {
                action: Some("missing".into()),
                ..q()
            },
        )
        .await
        .unwrap()
        .records;
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].secret.as_deref(), recs[0].version, recs[0].via),
        (Some("NOT_PUSHED"), None, Some(AccessVia::Systemd))
    );

    let url = format!("{}/api/v1/orgs/{}/audit/events", tv.url, f.org);
    let t = tok(&f.agent_token);
    let ev = serde_json::to_value(event(9, "K")).unwrap();
    let mut missing_with_version = ev.clone();
    missing_with_version["action"] = json!("missing");
    let mut missing_without_secret = missing_with_version.clone();
    missing_without_secret["version"] = json!(null);
    missing_without_secret["secret"] = json!(null);
    let mut bad_time = ev.clone();
    bad_time["time"] = json!("yesterday");
    let mut bad_secret = ev.clone();
    bad_secret["secret"] = json!("../etc/passwd");
    let mut extra_field = ev.clone();
    extra_field["surprise"] = json!(1);
    let mut reason_on_read = ev.clone();
    reason_on_read["reason"] = json!("cannot_open");
    let mut undeliverable = ev.clone();
    undeliverable["action"] = json!("undeliverable");
    let mut unknown_reason = undeliverable.clone();
    unknown_reason["reason"] = json!("the value was sk_live_…");
    let mut no_version = undeliverable.clone();
    no_version["reason"] = json!("cannot_open");
    no_version["version"] = json!(null);
    let cases = [
        (
            json!({"agent_id":"a","events":[reason_on_read]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[undeliverable]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[unknown_reason]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[no_version]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[missing_with_version]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[missing_without_secret]}),
            "invalid_event",
        ),
        (json!({"agent_id":"","events":[ev]}), "invalid_agent_id"),
        (json!({"agent_id":"a b","events":[ev]}), "invalid_agent_id"),
        (
            json!({"agent_id":"a","host":"x\ny","events":[ev]}),
            "invalid_host",
        ),
        (json!({"agent_id":"a","events":[bad_time]}), "invalid_event"),
        (
            json!({"agent_id":"a","events":[bad_secret]}),
            "invalid_event",
        ),
        (
            json!({"agent_id":"a","events":[extra_field]}),
            "unknown_field",
        ),
        (json!({"agent_id":"a"}), "invalid_body"),
    ];
    for (body, code) in cases {
        let r = raw("POST", &url, Some(&t), Some(&body.to_string()), &[]).await;
        assert_error(&r, 400, code);
    }
    let good = json!({"agent_id":"a","events":[ev]}).to_string();
    let r = raw(
        "POST",
        &url,
        Some(&tok(&f.provider_token)),
        Some(&good),
        &[],
    )
    .await;
    assert_error(&r, 403, "wrong_token_kind");
    let other = format!("{}/api/v1/orgs/org_other/audit/events", tv.url);
    assert_error(
        &raw("POST", &other, Some(&t), Some(&good), &[]).await,
        403,
        "wrong_org",
    );
}

#[tokio::test]
async fn queries_filter_and_refuse_bad_input() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    tv.env(&f.org, "staging", None).await;
    let prov = tv.client(&f.provider_token);
    prov.push(&f.org, &f.provider, &write("A", "1"))
        .await
        .unwrap();
    prov.push(&f.org, &f.provider, &write("B", "1"))
        .await
        .unwrap();
    let mut st = write("A", "1");
    st.environment = "staging".into();
    prov.push(&f.org, &f.provider, &st).await.unwrap();
    prov.rotate(&f.org, &f.provider, &write("A", "2"))
        .await
        .unwrap();

    let get = |query: AuditQuery| {
        let admin = tv.admin.clone();
        let org = f.org.clone();
        async move { admin.audit(&org, &query).await.unwrap().records }
    };
    let a = get(AuditQuery {
        secret: Some("A".into()),
        ..q()
    })
    .await;
    assert_eq!(a.len(), 3);
    let a_prod = get(AuditQuery {
        secret: Some("A".into()),
        environment: Some(ENV.into()),
        ..q()
    })
    .await;
    assert_eq!(
        a_prod.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["issued", "rotated"]
    );
    let rotated = get(AuditQuery {
        action: Some("rotated".into()),
        ..q()
    })
    .await;
    assert_eq!(rotated.len(), 1);
    let limited = get(AuditQuery {
        limit: Some(2),
        ..q()
    })
    .await;
    assert_eq!(limited.len(), 2);
    let future = get(AuditQuery {
        since: Some("2999-01-01T00:00:00Z".into()),
        ..q()
    })
    .await;
    assert!(future.is_empty());
    let past = get(AuditQuery {
        until: Some("2000-01-01T00:00:00Z".into()),
        ..q()
    })
    .await;
    assert!(past.is_empty());
    let window = get(AuditQuery {
        since: Some(a_prod[0].time.clone()),
        until: Some(a_prod[1].time.clone()),
        secret: Some("A".into()),
        environment: Some(ENV.into()),
        ..q()
    })
    .await;
    assert_eq!(window.len(), 2);

    let base = format!("{}/api/v1/orgs/{}/audit", tv.url, f.org);
    let admin = tok(&tv.admin_token);
    for (query, code) in [
        ("since=yesterday", "invalid_time"),
        ("secret=lower", "invalid_secret_name"),
        ("environment=Bad_Env", "invalid_environment"),
        ("action=DROP%20TABLE", "invalid_action"),
        ("limit=0", "invalid_limit"),
        ("limit=abc", "invalid_query"),
        ("unknown=1", "invalid_query"),
    ] {
        let r = raw("GET", &format!("{base}?{query}"), Some(&admin), None, &[]).await;
        assert_error(&r, 400, code);
    }
    let r = raw("GET", &base, Some(&tok(&f.provider_token)), None, &[]).await;
    assert_error(&r, 403, "admin_only");
    let r = raw(
        "GET",
        &format!("{}/api/v1/orgs/org_nope/audit", tv.url),
        Some(&admin),
        None,
        &[],
    )
    .await;
    assert_error(&r, 404, "org_not_found");
    // The global view has org-less records (admin tokens made at bootstrap).
    let all = tv.admin.audit_all(&q()).await.unwrap().records;
    assert!(
        all.iter()
            .any(|r| r.org_id.is_empty() && r.action == "token_created")
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    for (trusted, want) in [(true, "203.0.113.9"), (false, "127.0.0.1")] {
        let tv = TestVault::start_with(|c| {
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        })
        .await;
        let f = tv.fixture().await;
        let body = json!({"secret_name":"K","value":"v","environment":ENV}).to_string();
        let r = raw(
            "POST",
            &format!("{}/push", tv.provider_base(&f)),
            Some(&tok(&f.provider_token)),
            Some(&body),
            // The left-most entry is client-supplied junk; the proxy appended the real client.
            &[("X-Forwarded-For", "10.6.6.6, 203.0.113.9")],
        )
        .await;
        assert_eq!(r.0, 201);
        let recs = tv
            .admin
            .audit(
                &f.org,
                &AuditQuery {
                    action: Some("issued".into()),
                    ..q()
                },
            )
            .await
            .unwrap()
            .records;
        assert_eq!(
            recs[0].source_ip.as_deref(),
            Some(want),
            "trusted={trusted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_command_prints_a_table_and_json() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    tv.client(&f.provider_token)
        .push(&f.org, &f.provider, &write("STRIPE_SK", "v"))
        .await
        .unwrap();
    tv.client(&f.agent_token)
        .post_audit(
            &f.org,
            &AuditBatch {
                agent_id: "a1".into(),
                host: Some("web-7".into()),
                events: vec![event(1, "STRIPE_SK")],
            },
        )
        .await
        .unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyvault"));
        cmd.args([
            "audit",
            "--url",
            &tv.url,
            "--org",
            &f.org,
            "--secret",
            "STRIPE_SK",
        ])
        .args(extra)
        .env("FYVAULT_ADMIN_TOKEN", tok(&tv.admin_token))
        .env_remove("FYVAULT_URL");
        async move { cmd.output().await.unwrap() }
    };
    let out = run(&[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for col in [
        "TIME",
        "ACTION",
        "SECRET",
        "VERSION",
        "ENV",
        "ACTOR",
        "SOURCE IP",
        "HOST",
        "PID",
        "UID",
        "EXE",
        "UNIT",
        "COUNT",
    ] {
        assert!(lines[0].contains(col), "{col} missing: {}", lines[0]);
    }
    assert_eq!(lines.len(), 3, "{text}");
    // Oldest first: the access event carries the agent's (earlier) time.
    let issued = lines
        .iter()
        .find(|l| l.contains("issued"))
        .expect("issued row");
    assert!(
        issued.contains("127.0.0.1") && issued.contains("provider:"),
        "{text}"
    );
    let access = lines
        .iter()
        .find(|l| l.contains("accessed (socket)"))
        .expect("access row");
    assert!(
        access.contains("web-7") && access.contains("/usr/bin/python3"),
        "{text}"
    );
    assert!(
        access.contains("billing.service") && access.contains("4242"),
        "{text}"
    );
    // Columns line up with the header.
    assert_eq!(lines[0].find("ACTOR"), access.find("agent:tok_"), "{text}");

    let out = run(&["--json", "--action", "accessed"]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["records"][0]["host"], "web-7");

    // No token: a clear one-line error, non-zero exit.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyvault"))
        .args(["audit", "--url", &tv.url])
        .env_remove("FYVAULT_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FYVAULT_ADMIN_TOKEN"), "{err}");
}
