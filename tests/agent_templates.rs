//! Templates on the socket and in the config's life cycle (docs/delivery.md), against a real
//! vault and agent: `GET /v1/templates/NAME` renders through the gate (re-rendered after a
//! rotation); a template that does not parse stops the agent binary at start with one line
//! naming the file and the line, and is refused on reload while the old set keeps serving. A
//! read of an absent name is a `missing` event in the vault's trail.

mod agent_support;

use std::process::Command;

use agent_support::vault::{Log, World};
use agent_support::{eventually, fyvault, get, ship_all};
use fyvault::api::{AccessVia, AuditQuery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_on_the_socket_and_across_reloads() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("DB_USER", b"app").await;
    w.push("DB_PASS", b"p@ss word'").await;
    let src = w.dir.path().join("dsn.j2");
    std::fs::write(
        &src,
        "postgres://{{ DB_USER }}:{{ DB_PASS | url }}@db/app\nexport PGPASSWORD={{ DB_PASS | shell }}\n",
    )
    .unwrap();
    let extra = format!(
        "[[template]]\nname = \"dsn.conf\"\nsource = \"{}\"\nmode = 0o400\n",
        src.display()
    );
    let agent = w.start_agent(&extra).await;
    let sock = w.socket();

    let a = get(&sock, "/v1/templates/dsn.conf").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.text(),
        "postgres://app:p%40ss%20word%27@db/app\nexport PGPASSWORD='p@ss word'\\'''\n"
    );
    // A rotation: the next rendering has the new value.
    w.rotate("DB_USER", b"app2", 60).await;
    eventually("the rotation to render", || async {
        let t = get(&sock, "/v1/templates/dsn.conf").await.text();
        t.starts_with("postgres://app2:").then_some(())
    })
    .await;
    assert_eq!(
        get(&sock, "/v1/templates/nope.conf").await.error_code(),
        "not_found"
    );
    assert_eq!(
        get(&sock, "/v1/templates/NOPE").await.error_code(),
        "invalid_name"
    );

    // A template that no longer parses: the reload is refused, naming the file and line, and
    // the old set keeps serving.
    std::fs::write(&src, "fine\n{{ DB_USER \n").unwrap();
    let err = agent.reload().unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}: line 2: ", src.display())),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    assert!(
        get(&sock, "/v1/templates/dsn.conf")
            .await
            .text()
            .starts_with("postgres://app2:")
    );
    // A template that parses again is taken by the next reload.
    std::fs::write(&src, "user={{ DB_USER }}\n").unwrap();
    let report = agent.reload().unwrap();
    assert!(!report.delivery_changes.is_empty(), "{report:?}");
    assert_eq!(
        get(&sock, "/v1/templates/dsn.conf").await.text(),
        "user=app2\n"
    );
    // A read of a name that does not exist (root is allowed every name): 404 and a `missing`
    // event in the vault's trail, with the process and no version.
    assert_eq!(
        get(&sock, "/v1/secrets/NOT_PUSHED").await.error_code(),
        "not_found"
    );
    ship_all(&agent).await;
    let recs = w
        .admin
        .audit(
            &w.org,
            &AuditQuery {
                action: Some("missing".into()),
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap()
        .records;
    assert!(
        recs.iter()
            .any(|r| r.secret.as_deref() == Some("NOT_PUSHED")
                && r.version.is_none()
                && r.via == Some(AccessVia::Socket)
                && r.pid == Some(std::process::id())),
        "{recs:?}"
    );
    agent.shutdown().await.unwrap();

    // At start, the same mistake stops the binary with one line.
    std::fs::write(&src, "{% if %}\n").unwrap();
    let cfg = w.agent_config(&extra);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(fyvault())
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .env("FYVAULT_LOG", "error")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("{}: line 1: ", src.display())),
        "{stderr}"
    );
}
