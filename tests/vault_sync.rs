//! The agent sync feed (DESIGN §3.4) over real HTTP: full state, incremental changes, long-poll
//! wake-ups and timeouts, grace, revocation, scoping, shutdown during a long-poll.

mod common;

use std::time::{Duration, Instant};

use common::{ENV, TestVault, assert_error, open, raw, tok, write};
use fyvault::api::{CreateTokenRequest, SecretState};
use fyvault::client::ClientError;

#[tokio::test]
async fn full_then_incremental_with_grace_and_revocation() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let agent = tv.client(&f.agent_token);

    // An empty environment at revision 0: `since=0` is "up to date", so the request is held
    // (an agent never spins on an empty environment), then answers the (empty) full state.
    let started = Instant::now();
    let empty = agent.sync(&f.org, ENV, 0, 1).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950), "not held");
    assert!(empty.full);
    assert_eq!(empty.revision, 0);
    assert!(empty.secrets.is_empty());

    prov.push(&f.org, &f.provider, &write("A", "a1", None))
        .await
        .unwrap();
    prov.push(&f.org, &f.provider, &write("B", "b1", None))
        .await
        .unwrap();
    let full = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    assert!(full.full);
    assert_eq!(full.secrets.len(), 2);
    for s in &full.secrets {
        assert_eq!(s.state, SecretState::Active);
        assert!(s.previous.is_none());
        let want = if s.name == "A" { b"a1" } else { b"b1" };
        assert_eq!(
            open(
                &f.key,
                &f.org,
                ENV,
                &s.name,
                s.sealed_value.as_ref().unwrap()
            ),
            want
        );
    }

    // Rotation with grace: only A changes; its previous version rides along.
    prov.rotate(&f.org, &f.provider, &write("A", "a2", Some(600)))
        .await
        .unwrap();
    let inc = agent.sync(&f.org, ENV, full.revision, 0).await.unwrap();
    assert!(!inc.full);
    assert!(inc.revision > full.revision);
    assert_eq!(inc.secrets.len(), 1);
    let a = &inc.secrets[0];
    assert_eq!((a.name.as_str(), a.version), ("A", 2));
    let prev = a.previous.as_ref().unwrap();
    assert_eq!(prev.version, 1);
    assert!(prev.grace_remaining_ms > 0 && prev.grace_remaining_ms <= 600_000);
    assert_eq!(open(&f.key, &f.org, ENV, "A", &prev.sealed_value), b"a1");

    // Rotation without grace: no previous.
    prov.rotate(&f.org, &f.provider, &write("A", "a3", Some(0)))
        .await
        .unwrap();
    let inc2 = agent.sync(&f.org, ENV, inc.revision, 0).await.unwrap();
    assert!(inc2.secrets[0].previous.is_none());

    // Revocation is reported as such, without a value, incrementally and in the full state.
    prov.revoke(&f.org, &f.provider, "B").await.unwrap();
    let inc3 = agent.sync(&f.org, ENV, inc2.revision, 0).await.unwrap();
    assert_eq!(inc3.secrets.len(), 1);
    let b = &inc3.secrets[0];
    assert_eq!((b.name.as_str(), b.state), ("B", SecretState::Revoked));
    assert!(b.sealed_value.is_none() && b.previous.is_none());
    let full2 = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
    let b = full2.secrets.iter().find(|s| s.name == "B").unwrap();
    assert_eq!(b.state, SecretState::Revoked);

    // A revision the server never issued (restored backup…) gets the full state.
    let ahead = agent
        .sync(&f.org, ENV, full2.revision + 1000, 0)
        .await
        .unwrap();
    assert!(ahead.full);
    assert_eq!(ahead.secrets.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_change_and_times_out_at_wait() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let agent = tv.client(&f.agent_token);
    prov.push(&f.org, &f.provider, &write("A", "a1", None))
        .await
        .unwrap();
    let rev = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;

    // No change: the request is held for `wait`, then answers "nothing new".
    let started = Instant::now();
    let idle = agent.sync(&f.org, ENV, rev, 1).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "answered before wait"
    );
    assert_eq!(tv.handle.held_long_polls(&f.org, ENV), 0);
    assert_eq!(idle.revision, rev);
    assert!(!idle.full && idle.secrets.is_empty());

    // A change while the request is held answers it with the change (a 300 s wait would
    // exceed the test's deadline if the wake-up did not happen).
    let waiter = {
        let agent = agent.clone();
        let org = f.org.clone();
        tokio::spawn(async move { agent.sync(&org, ENV, rev, 300).await })
    };
    common::eventually(30, "the long-poll to be held", || async {
        (tv.handle.held_long_polls(&f.org, ENV) == 1).then_some(())
    })
    .await;
    prov.rotate(&f.org, &f.provider, &write("A", "a2", None))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the long-poll was not woken by the change")
        .unwrap()
        .unwrap();
    assert!(woke.revision > rev);
    assert_eq!(woke.secrets[0].version, 2);

    // A change in another environment does not wake this one (only a timeout ends it).
    tv.env(&f.org, "staging", None).await;
    let rev2 = woke.revision;
    let waiter = {
        let agent = agent.clone();
        let org = f.org.clone();
        tokio::spawn(async move { agent.sync(&org, ENV, rev2, 2).await })
    };
    let mut staging = write("S", "s", None);
    staging.environment = "staging".into();
    prov.push(&f.org, &f.provider, &staging).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.revision, rev2);
    assert!(r.secrets.is_empty());

    // `wait` above the cap is accepted (capped), not an error.
    prov.rotate(&f.org, &f.provider, &write("A", "a3", None))
        .await
        .unwrap();
    let r = agent.sync(&f.org, ENV, rev2, 1_000_000).await.unwrap();
    assert_eq!(r.secrets[0].version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_held_long_polls() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let agent = tv.client(&f.agent_token);
    let rev = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;
    let url = format!(
        "{}/api/v1/orgs/{}/environments/{ENV}/sync?since={rev}&wait=300",
        tv.url, f.org
    );
    let token = tok(&f.agent_token);
    let waiter = tokio::spawn(async move { raw("GET", &url, Some(&token), None, &[]).await });
    // Make sure the request is being held before stopping the server.
    common::eventually(30, "the long-poll to be held", || async {
        (tv.handle.held_long_polls(&f.org, ENV) == 1).then_some(())
    })
    .await;
    let TestVault { handle, dir, .. } = tv;
    tokio::time::timeout(Duration::from_secs(60), handle.shutdown())
        .await
        .expect("shutdown did not finish");
    let r = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the held long-poll was not released")
        .unwrap();
    assert_eq!(r.0, 200);
    assert_eq!(r.2["revision"], rev);
    drop(dir);
}

#[tokio::test]
async fn agent_tokens_see_only_their_environment() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    tv.env(&f.org, "staging", None).await;
    let agent = tv.client(&f.agent_token);
    let e = agent.sync(&f.org, "staging", 0, 0).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Forbidden { ref code, .. } if code == "wrong_environment"),
        "{e}"
    );
    let e = agent.sync("org_other", ENV, 0, 0).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Forbidden { ref code, .. } if code == "wrong_org"),
        "{e}"
    );
    // Provider and admin tokens do not sync.
    for t in [&f.provider_token, &tv.admin_token] {
        let e = tv.client(t).sync(&f.org, ENV, 0, 0).await.unwrap_err();
        assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
    }
    // A staging agent token syncs staging only.
    let st = tv
        .admin
        .create_agent_token(&f.org, "staging", &CreateTokenRequest::default())
        .await
        .unwrap();
    tv.client(&st.token)
        .sync(&f.org, "staging", 0, 0)
        .await
        .unwrap();
    assert!(tv.client(&st.token).sync(&f.org, ENV, 0, 0).await.is_err());
    // Bad query parameters are JSON 400s.
    let base = format!("{}/api/v1/orgs/{}/environments/{ENV}/sync", tv.url, f.org);
    let t = tok(&f.agent_token);
    for q in ["since=abc", "wait=-1", "foo=1"] {
        let r = raw("GET", &format!("{base}?{q}"), Some(&t), None, &[]).await;
        assert_error(&r, 400, "invalid_query");
    }
}
