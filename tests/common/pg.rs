//! PostgreSQL test databases.
//!
//! Tests that need PostgreSQL run only when `FYVAULT_TEST_POSTGRES` holds a connection URL
//! (e.g. `postgres://fyvault:…@127.0.0.1/fyvault_test`, see `scripts/pg-test-setup`); without
//! it they print a skip line, unless `FYVAULT_REQUIRE_POSTGRES=1`, where they fail. Each test
//! gets its own database (random name, created by the test role, dropped afterwards), so tests
//! run in parallel.

use std::str::FromStr;

/// The base URL, or `None` (after printing why) when PostgreSQL tests are off.
pub fn base_url(test: &str) -> Option<String> {
    env_or_skip("FYVAULT_TEST_POSTGRES", test)
}

/// The value of `var` (set by `scripts/pg-test-setup`), or `None` after printing a skip line;
/// with `FYVAULT_REQUIRE_POSTGRES=1` a missing value fails the test instead.
pub fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            assert!(
                std::env::var("FYVAULT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: FYVAULT_REQUIRE_POSTGRES=1 but {var} is not set \
                 (eval \"$(scripts/pg-test-setup)\")"
            );
            super::skip::skip(
                test,
                &format!("set {var} to run it (eval \"$(scripts/pg-test-setup)\")"),
            );
            None
        }
    }
}

/// `url` with its database name replaced (URL form `postgres://…/DB?…`).
pub fn with_dbname(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).expect("a postgres:// URL");
    let rest = &url[scheme_end..];
    let query_at = rest.find('?').unwrap_or(rest.len());
    let path_at = rest[..query_at].find('/').unwrap_or(query_at);
    format!(
        "{}{}/{db}{}",
        &url[..scheme_end],
        &rest[..path_at],
        &rest[query_at..]
    )
}

async fn admin_client(base: &str) -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(base).expect("FYVAULT_TEST_POSTGRES parses");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to FYVAULT_TEST_POSTGRES");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh, empty database, dropped (connections and all) when this goes.
pub struct TestDb {
    pub url: String,
    pub name: String,
    base: String,
}

impl TestDb {
    pub async fn create(base: &str) -> TestDb {
        let name = format!("fyvault_t_{:016x}", rand::random::<u64>());
        admin_client(base)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE (the test role needs CREATEDB)");
        TestDb {
            url: with_dbname(base, &name),
            name,
            base: base.to_string(),
        }
    }

    /// A plain client on this database (for checks the store does not offer).
    pub async fn client(&self) -> tokio_postgres::Client {
        admin_client(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside a runtime: drop the database from a thread with its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = admin_client(&base).await;
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}
