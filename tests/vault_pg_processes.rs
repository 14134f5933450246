//! Two real `fyvault server` processes on one PostgreSQL: an agent long-polling instance A
//! gets a rotation pushed through instance B (LISTEN/NOTIFY fan-out), and the other way round.
//!
//! Runs only with `FYVAULT_TEST_POSTGRES` set (see `common::pg`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::pg::{TestDb, base_url};
use common::{ENV, eventually, make_fixture, open};
use fyvault::api::MAX_WAIT_SECONDS;
use fyvault::client::{VaultClient, WriteRequest, WriteValue};
use fyvault::secret::Secret;

const BIN: &str = env!("CARGO_BIN_EXE_fyvault");

/// A `fyvault server` child process; killed (by its pid) and reaped when dropped.
struct Instance {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    async fn start(db_url: &str, dir: &std::path::Path) -> Instance {
        let mut child = Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            // The URL (with its password) goes through the environment, never argv.
            .env("FYVAULT_DATABASE", db_url)
            .env("FYVAULT_LOG", "info,fyvault::vault::store::postgres=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fyvault server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut instance = Instance {
            child,
            url: String::new(),
            log,
        };
        let url = eventually(60, "the server to listen", || {
            let found = instance.lines().iter().find_map(|l| {
                l.split("vault listening on ")
                    .nth(1)
                    .map(|u| u.trim().to_string())
            });
            let exited = found.is_none() && !matches!(instance.child.try_wait(), Ok(None));
            assert!(!exited, "the server exited: {:?}", instance.lines());
            async move { found }
        })
        .await;
        instance.url = url;
        instance
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many sync requests have subscribed to the change feed so far.
    fn subscriptions(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.contains("change feed: subscribed"))
            .count()
    }

    fn client(&self, token: &Secret) -> VaultClient {
        VaultClient::new(&self.url)
            .unwrap()
            .with_token(token.clone())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(name: &str, value: &str) -> WriteRequest {
    WriteRequest {
        secret_name: name.into(),
        environment: ENV.into(),
        value: WriteValue::Plaintext(Secret::copy_from(value.as_bytes())),
        grace_period_seconds: Some(60),
        idempotency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_one_instance_gets_a_rotation_pushed_through_another() {
    let Some(base) = base_url("agent_on_one_instance_gets_a_rotation_pushed_through_another")
    else {
        return;
    };
    let db = TestDb::create(&base).await;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("admin.token");
    let init = Command::new(BIN)
        .args(["server", "init", "--token-out"])
        .arg(&token_file)
        .env("FYVAULT_DATABASE", &db.url)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let admin_token = Secret::copy_from(
        std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .as_bytes(),
    );

    // Both start together (their migrations find the schema in place).
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a, b) = tokio::join!(
        Instance::start(&db.url, &dir_a),
        Instance::start(&db.url, &dir_b)
    );
    // Migrations that find the schema in place log no driver NOTICE ("already exists").
    for lines in [a.lines(), b.lines()] {
        assert!(!lines.iter().any(|l| l.contains("NOTICE")), "{lines:?}");
        // `fyvault server` opens its whole pool before it listens.
        assert!(
            lines
                .iter()
                .any(|l| l.contains("database pool open") && l.contains("connections=16")),
            "{lines:?}"
        );
    }
    let pg = db.client().await;
    let connections: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        connections >= 2 * 17,
        "16 pooled and 1 LISTEN connection per instance, open from the start: {connections}"
    );
    let f = make_fixture(&a.client(&admin_token)).await;
    // Both instances see what one of them wrote.
    let from_b = b.client(&admin_token).list_orgs().await.unwrap();
    assert!(from_b.orgs.iter().any(|o| o.org_id == f.org));

    for (round, (poll_on, push_on)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let agent = poll_on.client(&f.agent_token);
        let since = agent.sync(&f.org, ENV, 0, 0).await.unwrap().revision;
        let held_before = poll_on.subscriptions();
        let (org, agent2) = (f.org.clone(), agent.clone());
        let poll =
            tokio::spawn(async move { agent2.sync(&org, ENV, since, MAX_WAIT_SECONDS).await });
        // The long-poll is registered on its instance before anything is pushed elsewhere.
        eventually(30, "the long-poll to be held", || {
            let held = poll_on.subscriptions() > held_before;
            async move { held.then_some(()) }
        })
        .await;
        let value = format!("rotated-{round}");
        let pushed = push_on
            .client(&f.provider_token)
            .push(&f.org, &f.provider, &write("STRIPE_SK", &value))
            .await
            .unwrap();
        // Without fan-out the poll would answer "no change" only after MAX_WAIT_SECONDS.
        let got = poll.await.unwrap().unwrap();
        assert!(
            got.revision > since,
            "the long-poll returned without the change"
        );
        let s = got
            .secrets
            .iter()
            .find(|s| s.name == "STRIPE_SK")
            .expect("the pushed secret");
        assert_eq!(s.version, pushed.version);
        assert_eq!(
            open(
                &f.key,
                &f.org,
                ENV,
                "STRIPE_SK",
                s.sealed_value.as_ref().unwrap()
            ),
            value.as_bytes()
        );
    }
    // Each instance's log shows a LISTEN connection, and neither leaks the database password.
    for i in [&a, &b] {
        let log = i.lines().join("\n");
        assert!(log.contains("listening for changes"), "{log}");
        let config: tokio_postgres::Config = db.url.parse().unwrap();
        if let Some(pw) = config.get_password() {
            assert!(
                !log.contains(std::str::from_utf8(pw).unwrap()),
                "the password appears in the log"
            );
        }
    }
}
