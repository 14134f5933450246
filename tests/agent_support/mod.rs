//! Helpers shared by the agent's integration tests: an HTTP/1.1 client over the Unix socket,
//! an event-stream reader, polling with a deadline, and running commands as another uid.
#![allow(dead_code)]

// A test file that uses two of the helper modules loads this twice (harmless: no state).
#[allow(clippy::duplicate_mod)]
#[path = "../skip/mod.rs"]
pub mod skip;

pub mod agent_bin;
pub mod socket_agent;
pub mod vault;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

async fn send(
    sock: &Path,
    method: &str,
    path: &str,
    accept: Option<&str>,
    json: Option<&serde_json::Value>,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "fyvault");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let body = match json {
        Some(j) => {
            req = req.header("content-type", "application/json");
            http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(j.to_string())))
        }
        None => http_body_util::Either::Right(Empty::<Bytes>::new()),
    };
    tx.send_request(req.body(body).unwrap()).await.unwrap()
}

async fn answer(resp: hyper::Response<Incoming>) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn request(sock: &Path, method: &str, path: &str, accept: Option<&str>) -> Answer {
    answer(send(sock, method, path, accept, None).await).await
}

pub async fn get(sock: &Path, path: &str) -> Answer {
    request(sock, "GET", path, None).await
}

/// `POST path` with a JSON body (the socket's one such route: `/v1/connect`).
pub async fn post_json(sock: &Path, path: &str, body: &serde_json::Value) -> Answer {
    answer(send(sock, "POST", path, None, Some(body)).await).await
}

/// An open `/v1/events` stream.
pub struct Events {
    body: Incoming,
    buf: String,
}

impl Events {
    pub async fn open(sock: &Path) -> Events {
        let resp = send(sock, "GET", "/v1/events", None, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event (kind, data JSON), skipping comments; panics after the deadline.
    pub async fn next(&mut self) -> Option<(String, serde_json::Value)> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut kind = None;
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(k) = line.strip_prefix("event:") {
                            kind = Some(k.trim().to_owned());
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim());
                        }
                    }
                    if let Some(kind) = kind {
                        return Some((kind, serde_json::from_str(&data).unwrap()));
                    }
                    continue;
                }
                match self.body.frame().await {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            self.buf.push_str(&String::from_utf8_lossy(d));
                        }
                    }
                    _ => return None,
                }
            }
        })
        .await
        .expect("an event within the deadline")
    }

    /// Waits for an event of `kind` about `name`, returning its data.
    pub async fn expect(&mut self, kind: &str, name: &str) -> serde_json::Value {
        loop {
            match self.next().await {
                Some((k, d)) if k == kind && d["name"] == name => return d,
                Some(_) => continue,
                None => panic!("event stream ended before {kind} {name}"),
            }
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn fyvault() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fyvault"))
}

/// Runs `prog args` as uid/gid 65534 with no supplementary groups (needs root). `None` when
/// that is not possible here (not root, or the program is not executable by that uid).
pub fn as_nobody(prog: &Path, args: &[&str], env: &[(&str, &str)]) -> Option<Output> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return None;
    }
    let base = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let ok = Command::new("setpriv")
        .args(base)
        .args(["test", "-x"])
        .arg(prog)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("cannot run {} as uid 65534 here", prog.display());
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(base).arg(prog).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd.output().unwrap())
}

/// A temp dir every user may traverse (sockets inside must be reachable by uid 65534).
pub fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Writes every access event the agent recorded to its spool and waits (20 s at most) until the
/// vault acknowledged them all.
pub async fn ship_all(agent: &fyvault::agent::run::Agent) {
    let out = agent
        .state()
        .auditor
        .flush(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(out.shipped_all, "{out:?}");
}
