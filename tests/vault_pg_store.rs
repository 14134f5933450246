//! The PostgreSQL store: the shared store suite (the very checks SQLite passes), the same
//! checks across two instances on one database, the HTTP concurrency suite with two servers,
//! migrations, cross-instance wake-ups, and the 503 of an unreachable database.
//!
//! Runs only with `FYVAULT_TEST_POSTGRES` set (see `common::pg`); each test on its own database.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::concurrency as http_suite;
use common::pg::{TestDb, base_url};
use common::{ENV, TestVault, assert_error, raw, tok};
use fyvault::vault::store::postgres::{DatabaseUrl, PgChangeFeed, PgOptions, PgStore};
use fyvault::vault::store::{Store, StoreError};
use fyvault::vault::sync::{ChangeFeed, LocalChangeFeed};
use fyvault::vault::token_cache::TokenCache;

macro_rules! pg_or_skip {
    ($name:expr) => {
        match base_url($name) {
            Some(url) => url,
            None => return,
        }
    };
}

async fn pg_vault(db: &TestDb) -> TestVault {
    let url = DatabaseUrl::parse(&db.url).unwrap();
    TestVault::start_with(|c| c.database = Some(url)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_suite() {
    let base = pg_or_skip!("postgres_store_passes_the_suite");
    let dbs = std::sync::Mutex::new(Vec::new());
    let n = AtomicUsize::new(0);
    common::store_suite::run_all(|| {
        n.fetch_add(1, Ordering::SeqCst);
        let base = base.clone();
        let dbs = &dbs;
        async move {
            let db = TestDb::create(&base).await;
            let store = PgStore::connect(&db.url).await.unwrap();
            dbs.lock().unwrap().push(db);
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    assert!(n.load(Ordering::SeqCst) >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_pass_the_shared_checks() {
    let base = pg_or_skip!("two_postgres_instances_pass_the_shared_checks");
    let db = TestDb::create(&base).await;
    let a = Arc::new(PgStore::connect(&db.url).await.unwrap()) as Arc<dyn Store>;
    let b = Arc::new(PgStore::connect(&db.url).await.unwrap()) as Arc<dyn Store>;
    common::store_suite::run_shared(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_concurrency_suite_across_two_instances() {
    let base = pg_or_skip!("http_concurrency_suite_across_two_instances");
    let db = TestDb::create(&base).await;
    let a = pg_vault(&db).await;
    let b = pg_vault(&db).await;
    http_suite::fifty_concurrent_pushes_make_fifty_consecutive_versions(&[&a, &b]).await;
    http_suite::fifty_retries_with_one_idempotency_key_make_one_version(&[&a, &b]).await;
    http_suite::concurrent_duplicate_audit_batches_count_once(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_instances_start_together_and_refuse_newer_schemas() {
    let base = pg_or_skip!("migrations_run_once_when_instances_start_together");
    let db = TestDb::create(&base).await;
    let mut starts = Vec::new();
    for _ in 0..6 {
        let url = db.url.clone();
        starts.push(tokio::spawn(async move { PgStore::connect(&url).await }));
    }
    for s in starts {
        s.await.unwrap().expect("every instance starts");
    }
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=fyvault::vault::store::postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    // A restart migrates nothing and keeps the data.
    let store = PgStore::connect(&db.url).await.unwrap();
    fyvault::vault::bootstrap_admin_token(&store, "t", "system:test")
        .await
        .unwrap();
    let again = PgStore::connect(&db.url).await.unwrap();
    let now = fyvault::vault::clock::now_ms();
    assert_eq!(again.count_live_admin_tokens(now).await.unwrap(), 1);
    // A schema from a newer fyvault is refused, not used.
    c.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from the future')",
        &[],
    )
    .await
    .unwrap();
    let err = PgStore::connect(&db.url).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("newer than this fyvault")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_wakes_the_feed_of_another() {
    let base = pg_or_skip!("a_write_through_one_instance_wakes_the_feed_of_another");
    let db = TestDb::create(&base).await;
    let a = PgStore::connect(&db.url).await.unwrap();
    let b = PgStore::connect(&db.url).await.unwrap();
    let local = Arc::new(LocalChangeFeed::new());
    let feed = PgChangeFeed::start(&a, local.clone(), Arc::new(TokenCache::new()));
    assert!(feed.wait_listening(Duration::from_secs(30)).await);
    common::store_suite::seed_for_feed(&b).await;
    let mut rx = feed.subscribe("o1", "prod");
    let mut other = feed.subscribe("o1", "staging");
    rx.borrow_and_update();
    other.borrow_and_update();
    // Written through B (another pool, as another instance would): A's feed hears of it.
    let rev = common::store_suite::push_one(&b, "prod", "K").await;
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("the NOTIFY reached the other instance")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), rev);
    assert!(
        !other.has_changed().unwrap(),
        "only the changed environment wakes"
    );
}

/// Each instance caches verified tokens; a revocation through one instance reaches the cache
/// of the other through the database's notification, not after the cache's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_instance_is_refused_by_another() {
    let base = pg_or_skip!("a_token_revoked_on_one_instance_is_refused_by_another");
    let db = TestDb::create(&base).await;
    let a = pg_vault(&db).await;
    let b = pg_vault(&db).await;
    let f = a.fixture().await;
    let agent = b
        .admin
        .create_agent_token(&f.org, ENV, &Default::default())
        .await
        .unwrap();
    let sync = format!("{}/api/v1/orgs/{}/environments/{ENV}/sync", a.url, f.org);
    // Used twice on A: verified once, then answered from A's cache.
    for _ in 0..2 {
        let r = raw("GET", &sync, Some(&tok(&agent.token)), None, &[]).await;
        assert_eq!(r.0, 200, "{}", r.2);
    }
    b.admin.revoke_token(&agent.token_id).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = raw("GET", &sync, Some(&tok(&agent.token)), None, &[]).await;
        if r.0 == 401 {
            assert_error(&r, 401, "token_revoked");
            break;
        }
        assert_eq!(r.0, 200, "{}", r.2);
        assert!(
            std::time::Instant::now() < deadline,
            "instance A still accepts a token B revoked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gives_a_fast_503_and_nothing_else() {
    let base = pg_or_skip!("an_unreachable_database_gives_a_fast_503");
    // A port nobody listens on: bind one, learn it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("postgres://fyvault:s3cret-pw@127.0.0.1:{port}/nowhere");
    let err = PgStore::connect_with(&dead, PgOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cret-pw"));
    let url = DatabaseUrl::parse(&dead).unwrap();
    let shown = format!("{url:?} {}", url.describe());
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(
        shown.contains(&format!("fyvault@127.0.0.1:{port}/nowhere")),
        "{shown}"
    );
    assert!(DatabaseUrl::parse("mysql://x@y/z").is_err());

    // A served instance whose database goes away answers 503 JSON, fast, then recovers:
    // covered against a real PostgreSQL restart in vault_pg_outage.rs. Here: the 503 shape.
    let db = TestDb::create(&base).await;
    let tv = pg_vault(&db).await;
    let f = tv.fixture().await;
    drop(db); // DROP DATABASE … WITH (FORCE): every connection of the instance is cut.
    let url = format!("{}/push", tv.provider_base(&f));
    let body = serde_json::json!({"secret_name":"K","value":"v","environment":ENV}).to_string();
    let r = raw(
        "POST",
        &url,
        Some(&tok(&f.provider_token)),
        Some(&body),
        &[],
    )
    .await;
    assert_error(&r, 503, "database_unavailable");
}
