//! Correctness under concurrency on the embedded SQLite store (the same checks run against
//! PostgreSQL, with two instances, in `vault_pg_store.rs`): see `common::concurrency`.

mod common;

use common::TestVault;
use common::concurrency as suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_pushes_make_fifty_consecutive_versions() {
    let tv = TestVault::start().await;
    suite::fifty_concurrent_pushes_make_fifty_consecutive_versions(&[&tv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_retries_with_one_idempotency_key_make_one_version() {
    let tv = TestVault::start().await;
    suite::fifty_retries_with_one_idempotency_key_make_one_version(&[&tv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_audit_batches_count_once() {
    let tv = TestVault::start().await;
    suite::concurrent_duplicate_audit_batches_count_once(&[&tv]).await;
}
