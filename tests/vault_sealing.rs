//! Sealing as DESIGN §3.2: a plaintext canary pushed to the real `fyvault server` binary (trace
//! logging) appears nowhere in the data dir nor the logs; sealed values are bound to their
//! place; a flipped byte fails to open.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{ENV, TestVault, raw, tok};
use fyvault::api::{CreateEnvironmentRequest, CreateTokenRequest};
use fyvault::client::{VaultClient, WriteRequest, WriteValue};
use fyvault::crypto;
use fyvault::secret::Secret;
use serde_json::json;

/// Every form in which a canary could leak: raw, hex, base64 at each alignment.
fn needles(canary: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), canary.to_vec()),
        ("hex".into(), hex::encode(canary).into_bytes()),
        ("HEX".into(), hex::encode_upper(canary).into_bytes()),
    ];
    for pad in 0..3 {
        let mut data = vec![0u8; pad];
        data.extend_from_slice(canary);
        for (name, enc) in [
            ("base64", STANDARD.encode(&data)),
            ("base64url", URL_SAFE_NO_PAD.encode(&data)),
        ] {
            // Drop the characters the padding prefix and the tail influence.
            let skip = (pad * 4).div_ceil(3);
            let core = &enc[skip..enc.len() - 4];
            out.push((format!("{name}@{pad}"), core.as_bytes().to_vec()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts no file under `dir` holds any needle.
fn assert_absent_from_dir(dir: &Path, needles: &[(String, Vec<u8>)]) -> usize {
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files += assert_absent_from_dir(&path, needles);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for (form, n) in needles {
            assert!(
                !contains(&bytes, n),
                "canary ({form}) found in {}",
                path.display()
            );
        }
        files += 1;
    }
    files
}

struct ServerProcess {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    url: String,
}

impl ServerProcess {
    fn start(data: &Path) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fyvault"))
            .args([
                "server",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("FYVAULT_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if let Some(rest) = String::from_utf8_lossy(&line)
                    .trim_end()
                    .strip_prefix("fyvault: vault listening on ")
                {
                    let _ = tx.send(rest.to_string());
                }
                sink.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server did not report its address");
        ServerProcess { child, log, url }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "server exit: {status}");
        // The reader thread sees EOF once the process is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.log) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Only if the test failed before `stop`: end the process we started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_canary_is_nowhere_in_data_dir_or_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = Command::new(env!("CARGO_BIN_EXE_fyvault"))
        .args([
            "server",
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(init.status.success());
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let admin_token = Secret::copy_from(init["token"].as_str().unwrap().as_bytes());

    let server = tokio::task::spawn_blocking({
        let data = data.clone();
        move || ServerProcess::start(&data)
    })
    .await
    .unwrap();
    let admin = VaultClient::new(&server.url)
        .unwrap()
        .with_token(admin_token);
    let common::Fixture {
        org,
        key: sk,
        provider,
        provider_token,
        agent_token,
    } = common::make_fixture(&admin).await;

    let canary = format!("fyv-canary-{}", crypto::random_id("one"));
    let canary2 = format!("fyv-canary-{}", crypto::random_id("two"));
    let base = format!("{}/api/v1/orgs/{org}/providers/{}", server.url, provider);
    let t = tok(&provider_token);
    let requests = [
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"CANARY","value":canary,"environment":ENV}),
            201,
        ),
        // A retry with an Idempotency-Key (the fingerprint must not reveal the value).
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"CANARY2","value":canary2,"environment":ENV}),
            201,
        ),
        (
            "PATCH",
            base.clone(),
            json!({"secret_name":"CANARY","value":canary2,"environment":ENV}),
            200,
        ),
        // Refused requests that carry the canary: never echoed, never logged.
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"CANARY","value":canary,"environment":ENV,"oops":1}),
            400,
        ),
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"bad name","value":canary,"environment":ENV}),
            400,
        ),
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"CANARY","value":canary,"environment":"nope"}),
            404,
        ),
        (
            "POST",
            format!("{base}/push"),
            json!({"secret_name":"CANARY","value":[canary],"environment":ENV}),
            400,
        ),
    ];
    for (i, (method, url, body, status)) in requests.iter().enumerate() {
        let headers: &[(&str, &str)] = if i == 1 {
            &[("Idempotency-Key", "k-1")]
        } else {
            &[]
        };
        for _ in 0..(if i == 1 { 2 } else { 1 }) {
            let r = raw(method, url, Some(&t), Some(&body.to_string()), headers).await;
            assert_eq!(r.0, *status, "{method} {body}: {}", r.2);
            let echoed = r.2.to_string();
            assert!(
                !echoed.contains(&canary) && !echoed.contains(&canary2),
                "{echoed}"
            );
        }
    }
    // The system works: the agent's key opens what the vault stored.
    let s = VaultClient::new(&server.url)
        .unwrap()
        .with_token(agent_token)
        .sync(&org, ENV, 0, 0)
        .await
        .unwrap();
    let c = s.secrets.iter().find(|s| s.name == "CANARY").unwrap();
    assert_eq!(
        common::open(&sk, &org, ENV, "CANARY", c.sealed_value.as_ref().unwrap()),
        canary2.as_bytes()
    );
    let prev = c.previous.as_ref().unwrap();
    assert_eq!(
        common::open(&sk, &org, ENV, "CANARY", &prev.sealed_value),
        canary.as_bytes()
    );

    let mut all = needles(canary.as_bytes());
    all.extend(needles(canary2.as_bytes()));
    // While running (WAL and shared memory present) and after a clean stop.
    let files = assert_absent_from_dir(&data, &all);
    assert!(
        files >= 2,
        "expected the database and its WAL, saw {files} files"
    );
    let log = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert_absent_from_dir(&data, &all);
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("secret written"),
        "logs are not being captured: {text:.2000}"
    );
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "not at trace level"
    );
    for (form, n) in &all {
        assert!(
            !contains(&log, n),
            "canary ({form}) found in the server log"
        );
    }
    // No token in the logs either.
    assert!(!text.contains("fvprov_") && !text.contains("fvagent_") && !text.contains("fvadmin_"));
}

#[tokio::test]
async fn sealed_values_are_bound_to_their_place_and_tamper_evident() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    // A second environment deliberately sharing production's key: only the AAD tells them apart.
    tv.admin
        .create_environment(
            &f.org,
            &CreateEnvironmentRequest {
                name: "mirror".into(),
                public_key: f.key.public_key().to_base64(),
                default_grace_seconds: None,
            },
        )
        .await
        .unwrap();
    let mirror_agent = tv
        .admin
        .create_agent_token(&f.org, "mirror", &CreateTokenRequest::default())
        .await
        .unwrap();
    let prov = tv.client(&f.provider_token);
    let req = |name: &str, env: &str, value: WriteValue| WriteRequest {
        secret_name: name.into(),
        environment: env.into(),
        value,
        grace_period_seconds: None,
        idempotency_key: None,
    };
    prov.push(
        &f.org,
        &f.provider,
        &req(
            "ORIGINAL",
            ENV,
            WriteValue::Plaintext(Secret::copy_from(b"s3cr3t")),
        ),
    )
    .await
    .unwrap();
    let agent = tv.client(&f.agent_token);
    let sealed = agent.sync(&f.org, ENV, 0, 0).await.unwrap().secrets[0]
        .sealed_value
        .clone()
        .unwrap();
    assert_eq!(
        common::open(&f.key, &f.org, ENV, "ORIGINAL", &sealed),
        b"s3cr3t"
    );

    // Copied to another name (same environment) and to another environment (same key):
    // the vault cannot tell, but the agent's open fails.
    prov.push(
        &f.org,
        &f.provider,
        &req("COPY", ENV, WriteValue::Sealed(sealed.clone())),
    )
    .await
    .unwrap();
    prov.push(
        &f.org,
        &f.provider,
        &req("ORIGINAL", "mirror", WriteValue::Sealed(sealed.clone())),
    )
    .await
    .unwrap();
    let copy = agent
        .sync(&f.org, ENV, 0, 0)
        .await
        .unwrap()
        .secrets
        .into_iter()
        .find(|s| s.name == "COPY")
        .unwrap();
    let err = f
        .key
        .open(
            copy.sealed_value.as_ref().unwrap(),
            &crypto::aad(&f.org, ENV, "COPY"),
        )
        .unwrap_err();
    assert_eq!(err, crypto::CryptoError::OpenFailed);
    let moved = tv
        .client(&mirror_agent.token)
        .sync(&f.org, "mirror", 0, 0)
        .await
        .unwrap()
        .secrets
        .remove(0);
    assert!(
        f.key
            .open(
                moved.sealed_value.as_ref().unwrap(),
                &crypto::aad(&f.org, "mirror", "ORIGINAL")
            )
            .is_err()
    );
    // Another org, same names: fails too.
    assert!(
        f.key
            .open(&sealed, &crypto::aad("org_other", ENV, "ORIGINAL"))
            .is_err()
    );

    // A flipped byte anywhere (encapsulated key, ciphertext, tag) fails to open.
    let bytes = STANDARD.decode(&sealed).unwrap();
    for i in [0, 31, 32, bytes.len() / 2, bytes.len() - 1] {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        let t = STANDARD.encode(&tampered);
        assert!(
            f.key
                .open(&t, &crypto::aad(&f.org, ENV, "ORIGINAL"))
                .is_err(),
            "flipped byte {i} still opens"
        );
    }
}
