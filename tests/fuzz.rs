//! Fuzz targets for every parser of untrusted input (harness and corpus: `fuzz_support`).
//!
//! | target | input | must hold |
//! |---|---|---|
//! | `vault_api` | any method, route, path segments, query, token kind, body (provider, admin, agent APIs; `sealed_value` envelopes) | never a 500; every 4xx is `{"error":{"code","message"}}` |
//! | `sealed_envelope` | any string as a `sealed_value` (and mutated real ones) | `open` refuses it (or returns the sealed plaintext) |
//! | `sync_feed` | any sync answer, structured or raw, served by a fake vault to the agent's real sync round | no panic; the view only ever holds values that opened, at their version |
//! | `socket_request` | any request line (method, path, query) and `Accept` on the agent's real socket | 200/400/403/404/405/414 or a refused request line, never a 500; the socket keeps answering |
//! | `dotenv` | values of any bytes | python-dotenv reads back exactly each value, or the value is one left out (not UTF-8, NUL) |
//! | `agent_toml` | mutated real configs and any text | `config::parse` answers Ok or an error, never panics |
//! | `spool_frames` | segment files of framed and raw bytes, any `ack`/`seq` files | frame reading ends; the spool opens (or refuses) and reads without panicking |
//! | `cache_file` | the offline cache file: mutated real files (a byte changed, cut short) and any bytes | refused whole, or read back with exactly the content written |

mod common;
mod fuzz_support;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::{ENV, TestVault, tok};
use fuzz_support::{body, fuzz, nasty_string};
use fyvault::agent::access::Policy;
use fyvault::agent::audit::Auditor;
use fyvault::agent::socket::{self, Ctx, RunInfo};
use fyvault::agent::state::AgentState;
use fyvault::agent::sync::{SyncTiming, Syncer};
use fyvault::agent::view::{Update, UpdateState, Which};
use fyvault::client::VaultClient;
use fyvault::crypto::{self, PrivateKey, TokenKind};
use fyvault::secret::Secret;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `s` percent-encoded, cut to 2,000 characters first (a URL's whole length is bounded by the
/// HTTP stack long before any handler sees it).
fn pct(s: &str) -> String {
    let s: String = s.chars().take(2000).collect();
    percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------------
// The vault's HTTP API

const ROUTES: &[&str] = &[
    "/orgs/{org}/providers/{id}/push",
    "/orgs/{org}/providers/{id}",
    "/orgs/{org}/environments/{env}/public-key",
    "/orgs/{org}/environments/{env}/sync",
    "/orgs/{org}/audit/events",
    "/orgs/{org}/audit",
    "/admin/orgs",
    "/admin/orgs/{org}/environments",
    "/admin/orgs/{org}/environments/{env}",
    "/admin/orgs/{org}/environments/{env}/agent-tokens",
    "/admin/orgs/{org}/providers",
    "/admin/orgs/{org}/providers/{id}/tokens",
    "/admin/tokens",
    "/admin/tokens/{id}",
    "/admin/audit",
    "/health",
    "/whoami",
];

const FIELDS: &[&str] = &[
    "secret_name",
    "value",
    "sealed_value",
    "environment",
    "grace_period_seconds",
    "kind",
    "name",
    "public_key",
    "default_grace_seconds",
    "expires_in_seconds",
    "label",
    "agent_id",
    "host",
    "events",
    "seq",
    "time",
    "action",
    "secret",
    "version",
    "via",
    "pid",
    "uid",
    "gid",
    "exe",
    "unit",
    "count",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiInput {
    method: u8,
    route: u8,
    /// Path segments: `$org`, `$id`, `$env` stand for the fixture's real ones.
    segs: Vec<String>,
    /// 0 none, 1 admin, 2 provider, 3 agent, 4 a well-formed unknown token, 5 garbage.
    token: u8,
    query: Vec<(String, String)>,
    body: Vec<u8>,
    json_type: bool,
}

fn api_input() -> impl Strategy<Value = ApiInput> {
    let seg = prop_oneof![
        2 => prop::sample::select(vec!["$org", "$id", "$env"]).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    let qkey = prop_oneof![
        prop::sample::select(vec![
            "since",
            "wait",
            "secret",
            "environment",
            "action",
            "until",
            "limit",
            "kind",
            "secret_name"
        ])
        .prop_map(str::to_owned),
        nasty_string(),
    ];
    (
        0u8..6,
        0..ROUTES.len() as u8,
        prop::collection::vec(seg, 3),
        0u8..6,
        prop::collection::vec((qkey, nasty_string()), 0..3),
        body(FIELDS),
        any::<bool>(),
    )
        .prop_map(
            |(method, route, segs, token, query, body, json_type)| ApiInput {
                method,
                route,
                segs,
                token,
                query,
                body,
                json_type,
            },
        )
}

#[test]
fn fuzz_vault_api() {
    let rt = runtime();
    let (tv, f) = rt.block_on(async {
        let tv = TestVault::start().await;
        let f = tv.fixture().await;
        (tv, f)
    });
    // A new connection per request: a server may close a connection after an early error
    // answer, and a pooled client would then fail the next request on it (not the vault's
    // fault, and not what this target looks for).
    fyvault::client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tls_backend_rustls()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let tokens = [
        None,
        Some(tok(&tv.admin_token)),
        Some(tok(&f.provider_token)),
        Some(tok(&f.agent_token)),
        Some(tok(&crypto::generate_token(TokenKind::Admin))),
        Some("not a token".to_owned()),
    ];
    let n = fuzz("vault_api", api_input(), |inp: &ApiInput| {
        let method = ["GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"][inp.method as usize % 6];
        let mut segs = inp.segs.iter().map(|s| match s.as_str() {
            "$org" => f.org.clone(),
            "$id" => f.provider.clone(),
            "$env" => ENV.to_owned(),
            other => pct(other),
        });
        let template = ROUTES[inp.route as usize % ROUTES.len()];
        let mut path = String::new();
        for part in template.split('/').skip(1) {
            path.push('/');
            if part.starts_with('{') {
                path.push_str(&segs.next().unwrap_or_default());
            } else {
                path.push_str(part);
            }
        }
        let query: Vec<String> = inp
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
            .collect();
        let url = format!("{}/api/v1{path}?{}", tv.url, query.join("&"));
        let mut rb = http.request(method.parse().unwrap(), &url);
        if let Some(t) = &tokens[inp.token as usize % tokens.len()] {
            rb = rb.header("Authorization", format!("Bearer {t}"));
        }
        if inp.json_type {
            rb = rb.header("Content-Type", "application/json");
        }
        let (status, bytes) = rt.block_on(async {
            let resp = rb
                .body(inp.body.clone())
                .send()
                .await
                .expect("the vault answers");
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap_or_default())
        });
        assert_ne!(
            status,
            500,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(status < 500 || status == 503, "{method} {path}: {status}");
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{method} {path}: {status} is not a JSON error: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "{method} {path}: {status} {v}"
            );
        }
    });
    eprintln!("vault_api: {n} inputs");
    rt.block_on(tv.handle.shutdown());
}

// ---------------------------------------------------------------------------------------------
// sealed_value envelopes

/// The fixed key of the fuzz targets (so that corpus files replay).
fn fuzz_key() -> PrivateKey {
    let raw = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    PrivateKey::from_file_contents(raw.as_bytes()).unwrap()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum EnvelopeInput {
    Any(String),
    /// A real envelope of `plain` with the byte at `at` (of its base64 text) set to `to`.
    Mutated {
        plain: Vec<u8>,
        at: usize,
        to: u8,
    },
}

#[test]
fn fuzz_sealed_envelope() {
    let key = fuzz_key();
    let pk = key.public_key();
    let place = crypto::aad("org_f", "prod", "KEY");
    let strategy = prop_oneof![
        nasty_string().prop_map(EnvelopeInput::Any),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            any::<usize>(),
            any::<u8>()
        )
            .prop_map(|(plain, at, to)| EnvelopeInput::Mutated { plain, at, to }),
    ];
    let n = fuzz(
        "sealed_envelope",
        strategy,
        |inp: &EnvelopeInput| match inp {
            EnvelopeInput::Any(s) => assert!(key.open(s, &place).is_err()),
            EnvelopeInput::Mutated { plain, at, to } => {
                let sealed = pk.seal(plain, &place).unwrap();
                let mut bytes = sealed.clone().into_bytes();
                let i = at % bytes.len();
                bytes[i] = *to;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                match key.open(&text, &place) {
                    Ok(v) => assert_eq!(v.expose(), &plain[..], "a changed envelope opened"),
                    Err(_) => assert_ne!(text, sealed, "the real envelope did not open"),
                }
            }
        },
    );
    eprintln!("sealed_envelope: {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// The sync feed as the agent decodes it

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretSpec {
    name: String,
    version: u64,
    /// 0 active, 1 revoked, 2 an unknown state.
    state: u8,
    /// 0 sealed for this place, 1 sealed for another name, 2 any string, 3 absent.
    seal: u8,
    updated_at: String,
    previous: Option<(u64, u8, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum FeedInput {
    Structured {
        revision: u64,
        full: bool,
        secrets: Vec<SecretSpec>,
        junk: String,
    },
    Raw(Vec<u8>),
}

fn feed_input() -> impl Strategy<Value = FeedInput> {
    let name = prop_oneof![
        3 => prop::sample::select(vec!["A", "B_KEY", "C"]).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    let updated_at = prop_oneof![
        Just("2026-01-01T00:00:00Z".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("0000-01-01T00:00:00Z".to_owned()),
        nasty_string(),
    ];
    let version = prop_oneof![0u64..5, any::<u64>()];
    let grace = prop_oneof![0u64..10_000, any::<u64>(), Just(u64::MAX)];
    let spec = (
        name,
        version.clone(),
        0u8..3,
        0u8..4,
        updated_at,
        prop::option::of((version, 0u8..4, grace)),
    )
        .prop_map(
            |(name, version, state, seal, updated_at, previous)| SecretSpec {
                name,
                version,
                state,
                seal,
                updated_at,
                previous,
            },
        );
    prop_oneof![
        5 => (any::<u64>(), any::<bool>(), prop::collection::vec(spec, 0..6), nasty_string())
            .prop_map(|(revision, full, secrets, junk)| FeedInput::Structured {
                revision,
                full,
                secrets,
                junk,
            }),
        1 => body(&["revision", "full", "secrets", "name", "version", "state", "sealed_value",
            "updated_at", "previous", "grace_remaining_ms"])
            .prop_map(FeedInput::Raw),
    ]
}

/// The plaintext the fuzz feed seals for `name` at `version`: the view may hold nothing else.
fn feed_plain(name: &str, version: u64) -> String {
    format!("{name}#{version}")
}

fn feed_body(inp: &FeedInput, key: &PrivateKey) -> Vec<u8> {
    let pk = key.public_key();
    let seal = |how: u8, name: &str, version: u64, junk: &str| -> Option<String> {
        match how {
            0 => Some(
                pk.seal(
                    feed_plain(name, version).as_bytes(),
                    &crypto::aad("org_f", "prod", name),
                )
                .unwrap(),
            ),
            1 => Some(
                pk.seal(
                    feed_plain(name, version).as_bytes(),
                    &crypto::aad("org_f", "prod", "OTHER"),
                )
                .unwrap(),
            ),
            2 => Some(junk.to_owned()),
            _ => None,
        }
    };
    match inp {
        FeedInput::Raw(b) => b.clone(),
        FeedInput::Structured {
            revision,
            full,
            secrets,
            junk,
        } => {
            let secrets: Vec<serde_json::Value> = secrets
                .iter()
                .map(|s| {
                    let state = ["active", "revoked", "paused"][s.state as usize % 3];
                    let mut v = serde_json::json!({
                        "name": s.name,
                        "version": s.version,
                        "state": state,
                        "updated_at": s.updated_at,
                    });
                    if let Some(sv) = seal(s.seal, &s.name, s.version, junk) {
                        v["sealed_value"] = sv.into();
                    }
                    if let Some((pv, how, grace)) = s.previous {
                        v["previous"] = serde_json::json!({
                            "version": pv,
                            "sealed_value": seal(how, &s.name, pv, junk),
                            "grace_remaining_ms": grace,
                        });
                    }
                    v
                })
                .collect();
            serde_json::json!({"revision": revision, "full": full, "secrets": secrets})
                .to_string()
                .into_bytes()
        }
    }
}

/// A fake vault: answers every request with the body in `body`.
async fn fake_vault(body: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let body = body.lock().unwrap().clone();
        async move { ([("content-type", "application/json")], body) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[test]
fn fuzz_sync_feed() {
    let rt = runtime();
    let key = fuzz_key();
    let body = Arc::new(Mutex::new(Vec::new()));
    let url = rt.block_on(fake_vault(body.clone()));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let n = fuzz("sync_feed", feed_input(), |inp: &FeedInput| {
        *body.lock().unwrap() = feed_body(inp, &key);
        let state = AgentState::new(Policy::default(), Auditor::disabled());
        let syncer = Syncer {
            client: VaultClient::new(&url)
                .unwrap()
                .with_token(crypto::generate_token(TokenKind::Agent)),
            org: "org_f".into(),
            env: "prod".into(),
            key: fuzz_key(),
            state: state.clone(),
            report: Arc::new(|_| {}),
            timing: SyncTiming::default(),
            grace_cap: None,
            token_changed: Arc::new(tokio::sync::Notify::new()),
            shutdown: shutdown.clone(),
            cache: None,
        };
        let _ = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), syncer.round(0, Duration::ZERO))
                .await
                .expect("a sync round ends")
        });
        for listed in state.view.list(|_| true) {
            let name = &listed.name;
            let (meta, v) = state.view.get(name, Which::Current).expect("listed");
            assert_eq!(
                v.expose(),
                feed_plain(name, meta.version).as_bytes(),
                "{name}"
            );
            if let Ok((m, v)) = state.view.get(name, Which::Previous) {
                assert_eq!(v.expose(), feed_plain(name, m.version).as_bytes());
            }
        }
    });
    eprintln!("sync_feed: {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// The agent socket's request line

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SocketInput {
    method: String,
    target: Vec<u8>,
    accept: String,
}

fn socket_input() -> impl Strategy<Value = SocketInput> {
    let name = prop_oneof![
        Just("HELD".to_owned()),
        Just("DENIED_NONE".to_owned()),
        nasty_string().prop_map(|s| pct(&s)),
        nasty_string(),
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?version=previous".to_owned()),
        Just("?version=current".to_owned()),
        Just("?version=previous&version=current".to_owned()),
        nasty_string().prop_map(|s| format!("?{s}")),
        nasty_string().prop_map(|s| format!("?version={}", pct(&s))),
    ];
    let target = prop_oneof![
        4 => (prop::sample::select(vec!["/v1/secrets/", "/v1/secrets", "/v1/health",
            "/v1/events/", "/", "/v1/secrets/HELD/", "//v1/secrets/",
            "/v1/accept-restore?secret="]), name, query)
            .prop_map(|(p, n, q)| format!("{p}{n}{q}").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    let method = prop_oneof![
        4 => Just("GET".to_owned()),
        1 => prop::sample::select(vec!["POST", "HEAD", "DELETE", "get", "CONNECT"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,10}",
    ];
    let accept = prop_oneof![
        Just("*/*".to_owned()),
        Just("application/json".to_owned()),
        "[ -~]{0,40}",
    ];
    (method, target, accept).prop_map(|(method, target, accept)| SocketInput {
        method,
        target,
        accept,
    })
}

/// One raw request on a new connection; the status, or None when the server closed the
/// connection without an answer.
fn raw_socket_request(sock: &Path, head: &[u8]) -> Option<u16> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let line = text.lines().next()?;
    Some(
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}")),
    )
}

#[test]
fn fuzz_socket_request() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let state = AgentState::new(Policy::default(), Auditor::disabled());
    state.view.apply(
        1,
        true,
        vec![Update {
            name: "HELD".into(),
            version: 1,
            state: UpdateState::Active {
                value: Secret::copy_from(b"held-value"),
                previous: None,
            },
            updated_at: std::time::SystemTime::UNIX_EPOCH,
        }],
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let ctx = Ctx {
        state,
        info: Arc::new(RunInfo::new("org_f", "prod")),
        shutdown: rx,
        keep_alive: Duration::from_secs(15),
    };
    let listener = rt.block_on(async { socket::bind(&sock).unwrap() });
    let server = rt.spawn(socket::serve(listener, ctx));
    let n = fuzz("socket_request", socket_input(), |inp: &SocketInput| {
        let mut head = format!("{} ", inp.method).into_bytes();
        head.extend_from_slice(&inp.target);
        head.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: x\r\nAccept: {}\r\nConnection: close\r\n\r\n",
                inp.accept
            )
            .as_bytes(),
        );
        let status = raw_socket_request(&sock, &head);
        if let Some(s) = status {
            assert!(
                [200, 400, 403, 404, 405, 414, 431].contains(&s),
                "{} {:?}: {s}",
                inp.method,
                String::from_utf8_lossy(&inp.target)
            );
        }
        // Whatever came before, the socket answers a good request.
        let good = raw_socket_request(
            &sock,
            b"GET /v1/secrets/HELD HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(good, Some(200));
    });
    eprintln!("socket_request: {n} inputs");
    stop.send_replace(true);
    rt.block_on(server).unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// .env rendering against python-dotenv

fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let special = prop::sample::select(b"'\"\\\n\r$#` \t={}\0xA=".to_vec());
    prop_oneof![
        3 => prop::collection::vec(special, 0..24),
        2 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
}

#[test]
fn fuzz_dotenv() {
    use fyvault::agent::dotenv::{Form, Quoting, quoting, render, rendered_len};
    let python = Path::new("/usr/bin/python3");
    let has_dotenv = std::process::Command::new(python)
        .args(["-c", "import dotenv"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_dotenv {
        common::skip::skip(
            "fuzz_dotenv",
            "python3-dotenv missing (scripts/deps installs it)",
        );
        return;
    }
    let script = "import json,sys\nfrom dotenv import dotenv_values\n\
                  print(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".env");
    let strategy = prop::collection::vec(value_bytes(), 1..40);
    let n = fuzz("dotenv", strategy, |values: &Vec<Vec<u8>>| {
        let names: Vec<String> = (0..values.len()).map(|i| format!("K_{i:03}")).collect();
        let secrets: Vec<Secret> = values.iter().map(|v| Secret::copy_from(v)).collect();
        let entries = || names.iter().map(String::as_str).zip(secrets.iter());
        let rendered = render(Form::Dotenv, entries());
        assert_eq!(rendered.len(), rendered_len(Form::Dotenv, entries()));
        std::fs::write(&file, rendered.expose()).unwrap();
        let out = std::process::Command::new(python)
            .args(["-c", script])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: std::collections::BTreeMap<String, Option<String>> =
            serde_json::from_slice(&out.stdout).unwrap();
        for (name, value) in names.iter().zip(values) {
            let got = parsed.get(name).cloned().flatten();
            if quoting(Form::Dotenv, name, value) == Quoting::Omitted {
                assert!(
                    got.is_none(),
                    "{name} was left out but python-dotenv read {got:?}"
                );
                // Only what no form can hold: not UTF-8, NUL, or a final `\` that the bare
                // form cannot take either (docs of agent::dotenv, form 5).
                assert!(
                    value.contains(&0)
                        || std::str::from_utf8(value).is_err()
                        || value.ends_with(b"\\"),
                    "{name}: {value:?} left out"
                );
            } else {
                assert_eq!(
                    got.as_deref().map(str::as_bytes),
                    Some(&value[..]),
                    "python-dotenv read {name} differently; file:\n{}",
                    String::from_utf8_lossy(rendered.expose())
                );
            }
        }
    });
    eprintln!("dotenv: {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// agent.toml

const SAMPLE_TOML: &str = include_str!("../packaging/agent.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
enum TomlInput {
    Any(String),
    /// The sample with line `line` replaced by `key = value`, or removed when `key` is empty.
    Edit {
        edits: Vec<(usize, String, String)>,
    },
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        nasty_string().prop_map(|s| toml::Value::String(s).to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("[]".to_owned()),
        Just("[\"*\", 1, -1]".to_owned()),
        Just("{}".to_owned()),
        Just("true".to_owned()),
        Just("1e400".to_owned()),
        Just("nan".to_owned()),
        "[ -~]{0,30}",
    ]
}

#[test]
fn fuzz_agent_toml() {
    let keys = prop::sample::select(vec![
        "",
        "vault_url",
        "org_id",
        "environment",
        "token_file",
        "key_file",
        "ca_file",
        "mount",
        "socket",
        "state_dir",
        "group",
        "grace_seconds",
        "sync_wait_seconds",
        "audit",
        "audit_spool_max_bytes",
        "fuse",
        "secrets",
        "users",
        "groups",
        "executables",
        "units",
        "[[access.rule]]",
        "[access]",
        "[audit]",
    ]);
    let strategy = prop_oneof![
        1 => nasty_string().prop_map(TomlInput::Any),
        4 => prop::collection::vec((any::<usize>(), keys.prop_map(str::to_owned), toml_value()), 1..5)
            .prop_map(|edits| TomlInput::Edit { edits }),
    ];
    let n = fuzz("agent_toml", strategy, |inp: &TomlInput| {
        let text = match inp {
            TomlInput::Any(s) => s.clone(),
            TomlInput::Edit { edits } => {
                let mut lines: Vec<String> = SAMPLE_TOML.lines().map(str::to_owned).collect();
                for (at, key, value) in edits {
                    let i = at % (lines.len() + 1);
                    let line = match key.as_str() {
                        "" => String::new(),
                        k if k.starts_with('[') => k.to_owned(),
                        k => format!("{k} = {value}"),
                    };
                    if i == lines.len() {
                        lines.push(line);
                    } else {
                        lines[i] = line;
                    }
                }
                lines.join("\n")
            }
        };
        match fyvault::agent::config::parse(&text, Path::new("/etc/fyvault/agent.toml")) {
            Ok(_) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    });
    eprintln!("agent_toml: {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// The audit spool's segment files

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Piece {
    /// A well-framed record of these bytes.
    Frame(Vec<u8>),
    /// A well-framed access event.
    Event { seq: u64, count: u64, junk: String },
    /// Bytes as they are.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpoolInput {
    pieces: Vec<Piece>,
    ack: Vec<u8>,
    seq: Vec<u8>,
}

fn spool_input() -> impl Strategy<Value = SpoolInput> {
    let piece = prop_oneof![
        // The writer never frames an empty record (it asserts so); the reader meets any bytes.
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Piece::Frame),
        (
            0u64..20,
            prop_oneof![Just(1u64), any::<u64>()],
            nasty_string()
        )
            .prop_map(|(seq, count, junk)| Piece::Event { seq, count, junk }),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Piece::Raw),
    ];
    let number = prop_oneof![
        Just(Vec::new()),
        (0u64..30).prop_map(|n| n.to_string().into_bytes()),
        Just(b"18446744073709551615".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    (prop::collection::vec(piece, 0..8), number.clone(), number)
        .prop_map(|(pieces, ack, seq)| SpoolInput { pieces, ack, seq })
}

#[test]
fn fuzz_spool_frames() {
    use fyvault::agent::spool::frame::{Frame, FrameReader, encode};
    use fyvault::agent::spool::{Spool, SpoolLimits};
    use fyvault::api::{AccessAction, AccessEvent, AccessVia};
    let n = fuzz("spool_frames", spool_input(), |inp: &SpoolInput| {
        let mut bytes = Vec::new();
        for p in &inp.pieces {
            match p {
                Piece::Frame(b) => encode(b, &mut bytes),
                Piece::Event { seq, count, junk } => {
                    let junk: String = junk.chars().take(200).collect();
                    let ev = AccessEvent {
                        seq: *seq,
                        time: junk.clone(),
                        action: AccessAction::Accessed,
                        secret: Some(junk.clone()),
                        version: Some(1),
                        via: Some(AccessVia::Fuse),
                        pid: Some(1),
                        uid: Some(0),
                        gid: Some(0),
                        exe: None,
                        unit: None,
                        count: *count,
                        reason: None,
                        user_id: None,
                    };
                    encode(&serde_json::to_vec(&ev).unwrap(), &mut bytes);
                }
                Piece::Raw(b) => bytes.extend_from_slice(b),
            }
        }
        // Frame by frame: ends, and accounts for every byte.
        let mut r = FrameReader::new(&bytes[..]);
        let mut seen = 0u64;
        for _ in 0..=bytes.len() {
            match r.next_frame().unwrap() {
                Frame::End => break,
                Frame::Good { size, .. } | Frame::Corrupt { size } | Frame::Torn { size } => {
                    seen += size;
                }
            }
        }
        assert_eq!(seen, bytes.len() as u64, "every byte is accounted for");
        // As a spool found on disk after a crash.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seg-00000000000000000001.log"), &bytes).unwrap();
        std::fs::write(dir.path().join("ack"), &inp.ack).unwrap();
        std::fs::write(dir.path().join("seq"), &inp.seq).unwrap();
        if let Ok(mut spool) = Spool::open(dir.path(), SpoolLimits::new(1 << 20)) {
            let _ = spool.read_after(spool.acked(), 1000, usize::MAX);
            let _ = spool.stats();
        }
    });
    eprintln!("spool_frames: {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// The sealed offline cache file

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CacheInput {
    Any(Vec<u8>),
    /// A real file with the byte at `at` set to `to`, cut to `cut` bytes when shorter.
    Mutated {
        at: usize,
        to: u8,
        cut: usize,
    },
}

#[test]
fn fuzz_cache_file() {
    use fyvault::agent::cache::{self, Cache, CachedPrevious, CachedSecret, Seen};
    let key = fuzz_key();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cache {
        revision: 9,
        written_at_ms: 1_700_000_000_000,
        ..Cache::default()
    };
    c.secrets.insert(
        "A_KEY".into(),
        CachedSecret {
            version: 4,
            sealed_value: key.public_key().seal(b"v", b"x").unwrap(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            previous: Some(CachedPrevious {
                version: 3,
                sealed_value: "AAAA".into(),
                grace_until_ms: 1_700_000_060_000,
            }),
        },
    );
    c.highest.insert(
        "A_KEY".into(),
        Seen {
            version: 4,
            revoked: false,
        },
    );
    cache::write(dir.path(), &key, "org_f", "prod", &c).unwrap();
    let good = std::fs::read(cache::path(dir.path())).unwrap();
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512).prop_map(CacheInput::Any),
        (any::<usize>(), any::<u8>(), any::<usize>())
            .prop_map(|(at, to, cut)| CacheInput::Mutated { at, to, cut }),
    ];
    let p = Path::new("cache");
    let n = fuzz("cache_file", strategy, |inp: &CacheInput| {
        let bytes = match inp {
            CacheInput::Any(b) => b.clone(),
            CacheInput::Mutated { at, to, cut } => {
                let mut b = good.clone();
                let i = at % b.len();
                b[i] = *to;
                b.truncate((*cut % (b.len() + 1)).max(1));
                b
            }
        };
        match cache::decode(&bytes, &key, "org_f", "prod", p) {
            // Accepted only with exactly the content written (a change the MAC does not cover,
            // such as the case of its own hex digits, changes nothing).
            Ok(got) => assert_eq!(got, c, "{:?}", String::from_utf8_lossy(&bytes)),
            Err(_) => assert_ne!(bytes, good, "the real file was refused"),
        }
    });
    eprintln!("cache_file: {n} inputs");
}
