//! TLS to PostgreSQL: a vault whose URL asks for `sslmode=verify-full` talks to the database
//! only over verified TLS (pool and LISTEN connection alike, checked in `pg_stat_ssl`); a server
//! certificate from another CA is refused with a clear error; without `sslmode` the
//! connections stay plain.
//!
//! Needs `FYVAULT_TEST_POSTGRES` and `FYVAULT_TEST_PG_CA` (the CA of the cluster's TLS
//! certificate), both printed by `scripts/pg-test-setup`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::{TestDb, base_url, env_or_skip};
use common::store_suite;
use fyvault::vault::store::StoreError;
use fyvault::vault::store::postgres::{PgChangeFeed, PgOptions, PgStore};
use fyvault::vault::sync::{ChangeFeed, LocalChangeFeed};

/// The base URL and the CA file, or `None` (after printing why) when the tests are off.
fn pg_tls(test: &str) -> Option<(String, String)> {
    Some((base_url(test)?, env_or_skip("FYVAULT_TEST_PG_CA", test)?))
}

/// `url` with `extra` query parameters.
fn with_params(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

fn encode(path: &str) -> String {
    path.replace('%', "%25")
        .replace('/', "%2F")
        .replace(' ', "%20")
}

/// `(connections, encrypted ones)` whose `application_name` is `app`.
async fn ssl_counts(db: &TestDb, app: &str) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_puts_every_connection_on_verified_tls() {
    let Some((base, ca)) = pg_tls("verify_full_puts_every_connection_on_verified_tls") else {
        return;
    };
    let db = TestDb::create(&base).await;
    let app = "fyvault_tls_on";
    let url = with_params(
        &db.url,
        &format!(
            "application_name={app}&sslmode=verify-full&sslrootcert={}",
            encode(&ca)
        ),
    );
    let a = PgStore::connect(&url)
        .await
        .expect("verified TLS connection");
    let b = PgStore::connect(&url).await.unwrap();
    let local = Arc::new(LocalChangeFeed::new());
    let feed = PgChangeFeed::start(&a, local, Default::default());
    assert!(feed.wait_listening(Duration::from_secs(30)).await);

    // Real work over TLS: migrations ran; a write through B reaches A's LISTEN connection.
    store_suite::seed_for_feed(&b).await;
    let mut rx = feed.subscribe("o1", "prod");
    rx.borrow_and_update();
    let rev = store_suite::push_one(&b, "prod", "K").await;
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("the NOTIFY arrived over TLS")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), rev);

    let (all, encrypted) = ssl_counts(&db, app).await;
    assert!(
        all >= 3,
        "A's and B's pooled connections and A's LISTEN: {all}"
    );
    assert_eq!(encrypted, all, "every fyvault connection is TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sslmode_connections_stay_plain() {
    let Some((base, _)) = pg_tls("without_sslmode_connections_stay_plain") else {
        return;
    };
    let db = TestDb::create(&base).await;
    let app = "fyvault_tls_off";
    let url = with_params(&db.url, &format!("application_name={app}"));
    let store = PgStore::connect(&url).await.unwrap();
    store_suite::seed_for_feed(&store).await;
    let (all, encrypted) = ssl_counts(&db, app).await;
    assert!(all >= 1);
    assert_eq!(
        encrypted, 0,
        "sslmode absent means no TLS (the cluster does offer it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_clearly() {
    let Some((base, _)) = pg_tls("a_certificate_from_another_ca_is_refused_clearly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let opts = PgOptions {
        connect_timeout: Duration::from_secs(5),
        ..PgOptions::default()
    };

    // Another CA: the handshake fails on the certificate, and the start says so.
    let url = with_params(
        &base,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            encode(&other_ca.display().to_string())
        ),
    );
    let err = PgStore::connect_with(&url, opts.clone()).await.unwrap_err();
    let text = err.to_string();
    eprintln!("refused as: {text}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(text.contains("certificate"), "{text}");
    assert!(!text.contains("fyvault-test"), "no password in: {text}");

    // A CA file that is not there: a configuration error before any connection.
    let url = with_params(&base, "sslmode=require&sslrootcert=%2Fnonexistent%2Fca.pem");
    let err = PgStore::connect_with(&url, opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
