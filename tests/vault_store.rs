//! The store conformance suite against the SQLite store (each check on a fresh database).

mod common;

use std::sync::Arc;

use fyvault::vault::store::Store;
use fyvault::vault::store::sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_suite() {
    let root = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    common::store_suite::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = root.path().join(format!("db{n}"));
        async move { Arc::new(SqliteStore::open(&dir).unwrap()) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_handles_on_one_file_pass_the_shared_checks() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    let a = Arc::new(SqliteStore::open(&dir).unwrap()) as Arc<dyn Store>;
    let b = Arc::new(SqliteStore::open(&dir).unwrap()) as Arc<dyn Store>;
    common::store_suite::run_shared(a, b).await;
}

#[tokio::test]
async fn sqlite_files_are_private_and_state_survives_reopen() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    {
        let store = SqliteStore::open(&dir).unwrap();
        fyvault::vault::bootstrap_admin_token(&store, "t", "system:test")
            .await
            .unwrap();
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "group/other access");
    }
    let store = SqliteStore::open(&dir).unwrap();
    let now = fyvault::vault::clock::now_ms();
    assert_eq!(store.count_live_admin_tokens(now).await.unwrap(), 1);
}

/// A database of schema version 1 (before `undeliverable` reasons and user values) is migrated
/// on open.
#[test]
fn a_version_1_database_is_migrated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    drop(SqliteStore::open(&dir).unwrap());
    let file = dir.join(fyvault::vault::store::sqlite::DB_FILE);
    {
        // Back to version 1: the audit table without `reason` (2) nor `user_id` (3), no
        // policy, user-value or link tables.
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch(
            "DROP INDEX audit_user_reads; ALTER TABLE audit DROP COLUMN user_id;
             ALTER TABLE audit DROP COLUMN reason; DROP TABLE secret_policies;
             DROP TABLE user_secrets; DROP TABLE user_secret_versions; DROP TABLE connect_links;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    drop(SqliteStore::open(&dir).unwrap());
    let c = rusqlite::Connection::open(&file).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    c.execute_batch(
        "SELECT reason, user_id FROM audit LIMIT 1; SELECT policy FROM secret_policies LIMIT 1;",
    )
    .unwrap();
    // Opening again changes nothing (no second ALTER).
    drop(c);
    drop(SqliteStore::open(&dir).unwrap());
}
