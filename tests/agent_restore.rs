//! Real processes: accepting a deliberate vault restore with `fyvault agent accept-restore` —
//! on a running agent (through its socket, root only: one secret at a time or all), and on a
//! stopped one (its offline cache). Without it the agent refuses the restored older versions
//! (tests/agent_offline.rs); with it, it takes them, and the vault's audit trail says who
//! accepted what.

mod agent_support;

use agent_support::agent_bin::*;
use agent_support::vault::{Log, World};
use agent_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_restore_on_a_running_and_on_a_stopped_agent() {
    let log = Log::default();
    let mut w = World::new("info", &log).await;
    let port = w.vault.port;
    w.push("ALPHA", b"alpha-1").await;
    w.push("BETA", b"beta-1").await;
    let cfg = w.agent_config("");
    let cfg_s = cfg.to_str().unwrap();
    let sock = w.socket();
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;

    // A backup with version 1 of both; then both rotate to version 2.
    w.vault.stop();
    let backup = w.dir.path().join("vault-backup");
    copy_dir(&w.data_dir, &backup);
    w.vault = start_vault(&w.data_dir, port, &log).await;
    w.rotate("ALPHA", b"alpha-2", 0).await;
    w.rotate("BETA", b"beta-2", 0).await;
    eventually("the rotations to arrive", || async {
        (value(&sock, "ALPHA").await.1 == b"alpha-2" && value(&sock, "BETA").await.1 == b"beta-2")
            .then_some(())
    })
    .await;

    // The vault is restored on purpose: the agent refuses both older versions.
    w.vault.stop();
    restore_dir(&backup, &w.data_dir);
    w.vault = start_vault(&w.data_dir, port, &log).await;
    wait_health(&sock, "the agent to refuse the restored versions", |h| {
        h["reason"].as_str().is_some_and(|r| {
            r.contains("ALPHA (offered v1, serving v2)") && r.contains("BETA (offered v1")
        })
    })
    .await;
    assert_eq!(value(&sock, "ALPHA").await, (200, b"alpha-2".to_vec()));

    // Not for anyone but root: the socket answers 403 and changes nothing, and the command
    // says so before reading anything.
    let sock_s = sock.to_str().unwrap();
    if let Some(out) = as_nobody(
        std::path::Path::new("/usr/bin/curl"),
        &[
            "-sS",
            "-X",
            "POST",
            "--unix-socket",
            sock_s,
            "http://fyvault/v1/accept-restore",
        ],
        &[],
    ) {
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("\"forbidden\"") && body.contains("root only"),
            "{body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(value(&sock, "ALPHA").await, (200, b"alpha-2".to_vec()));
    }
    if let Some(out) = as_nobody(
        &fyvault(),
        &["agent", "accept-restore", "--config", cfg_s],
        &[],
    ) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("root"), "{err}");
    }

    // The running agent, one secret: ALPHA is taken as restored, BETA still refused.
    let (ok, out, err) = run_cli(
        &[
            "agent",
            "accept-restore",
            "--config",
            cfg_s,
            "--secret",
            "ALPHA",
        ],
        &[],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("restore accepted for ALPHA (running agent)")
            && out.contains("no longer refusing: ALPHA"),
        "{out}"
    );
    eventually("the restored ALPHA to be served", || async {
        (value(&sock, "ALPHA").await == (200, b"alpha-1".to_vec())).then_some(())
    })
    .await;
    wait_health(&sock, "the status to name BETA only", |h| {
        let reason = h["reason"].as_str().unwrap_or_default();
        reason.contains("BETA (offered v1") && !reason.contains("ALPHA")
    })
    .await;
    assert_eq!(value(&sock, "BETA").await, (200, b"beta-2".to_vec()));
    // The agent logged who did it, and the vault's audit trail has it.
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .contains("restore accepted by uid 0"),
        "{}",
        agent.log.lock().unwrap()
    );
    let query = fyvault::api::AuditQuery {
        action: Some("restore_accepted".into()),
        ..Default::default()
    };
    eventually(
        "the acceptance to reach the vault's audit trail",
        || async {
            let records = w.admin.audit(&w.org, &query).await.ok()?.records;
            records
                .iter()
                .any(|r| r.secret.as_deref() == Some("ALPHA") && r.uid == Some(0))
                .then_some(())
        },
    )
    .await;

    // The stopped agent, every secret: its cache forgets the floor, and the next start takes
    // the restored BETA too.
    agent.stop();
    let (ok, out, err) = run_cli(&["agent", "accept-restore", "--config", cfg_s], &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("restore accepted for every secret") && out.contains("cache"),
        "{out}"
    );
    let agent = AgentBin::start(&cfg);
    wait_health(&sock, "the agent to be ready", |h| h["status"] == "ready").await;
    assert_eq!(value(&sock, "BETA").await, (200, b"beta-1".to_vec()));
    assert_eq!(value(&sock, "ALPHA").await, (200, b"alpha-1".to_vec()));
    // That start recorded the offline acceptance (every secret: no secret named) once.
    eventually(
        "the offline acceptance to reach the audit trail",
        || async {
            let records = w.admin.audit(&w.org, &query).await.ok()?.records;
            records
                .iter()
                .any(|r| r.secret.is_none() && r.uid == Some(0))
                .then_some(())
        },
    )
    .await;
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .contains("restore accepted while the agent was stopped"),
        "{}",
        agent.log.lock().unwrap()
    );
    agent.stop();
}
