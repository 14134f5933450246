//! `fyvault get | ls | status`: clients of the local agent's socket (HTTP/1.1 over the Unix
//! socket, with hyper). Each prints one line on stderr and exits non-zero when the agent is
//! down, the secret is missing, or access is denied.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use crate::agent::config::DEFAULT_SOCKET;
use crate::agent::hygiene::MlockStatus;
use crate::agent::socket::wire::{AuditStats, HealthAnswer, MountHealth, SecretList};
use crate::api::ErrorBody;

#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The agent's socket.
    #[arg(long, env = "FYVAULT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The secret's name.
    pub name: String,
    /// The previous version, while its grace period after a rotation runs.
    #[arg(long)]
    pub previous: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

/// One answer of the agent.
pub(crate) struct Answer {
    pub(crate) status: hyper::StatusCode,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

impl Answer {
    /// The agent's error message, or a generic one.
    pub(crate) fn error(&self) -> anyhow::Error {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => anyhow!("{}", e.error.message),
            Err(_) => anyhow!("the agent answered {}", self.status),
        }
    }
}

/// The agent's socket cannot be connected to (missing, refused, not permitted). Callers tell it
/// from other failures with `anyhow::Error::downcast_ref` (`fyvault run` exits 69 on it).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the agent at {}: {source} (is `fyvault agent` running?)", socket.display())]
pub(crate) struct AgentUnreachable {
    pub(crate) socket: PathBuf,
    pub(crate) source: std::io::Error,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// `GET path` on the agent's socket: the answer's head, its body still streaming (for
/// `/v1/events`).
pub(crate) async fn send(
    socket: &Path,
    path: &str,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    send_method(socket, hyper::Method::GET, path).await
}

/// `method path` (no body) on the agent's socket: the answer's head, its body streaming.
pub(crate) async fn send_method(
    socket: &Path,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| AgentUnreachable {
            socket: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("cannot talk to the agent")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "fyvault")
        .body(Empty::<Bytes>::new())
        .context("bad request")?;
    sender
        .send_request(req)
        .await
        .context("the agent closed the connection")
}

/// `GET path` on the agent's socket, the whole answer.
pub(crate) async fn request(socket: &Path, path: &str) -> anyhow::Result<Answer> {
    request_method(socket, hyper::Method::GET, path).await
}

/// `method path` on the agent's socket, the whole answer.
pub(crate) async fn request_method(
    socket: &Path,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<Answer> {
    let resp = send_method(socket, method, path).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Zeroizing::new(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the agent's answer was cut short")?;
        if let Some(data) = frame.data_ref() {
            // Grow by hand so no unzeroized copy is left behind by a reallocation.
            if out.capacity() - out.len() < data.len() {
                let mut bigger = Zeroizing::new(Vec::with_capacity((out.len() + data.len()) * 2));
                bigger.extend_from_slice(&out);
                out = bigger;
            }
            out.extend_from_slice(data);
        }
    }
    Ok(Answer {
        status,
        headers,
        body: out,
    })
}

pub fn run_get(args: GetArgs) -> anyhow::Result<ExitCode> {
    if !crate::api::valid_secret_name(&args.name) {
        bail!(
            "{:?} is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)",
            args.name
        );
    }
    let path = if args.previous {
        format!("/v1/secrets/{}?version=previous", args.name)
    } else {
        format!("/v1/secrets/{}", args.name)
    };
    let answer = runtime()?.block_on(request(&args.socket.socket, &path))?;
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&answer.body)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let answer = runtime()?.block_on(request(&args.socket.socket, "/v1/secrets"))?;
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let list: SecretList =
        serde_json::from_slice(&answer.body).context("the agent's answer is not a listing")?;
    let mut out = std::io::stdout().lock();
    for s in list.secrets {
        let prev = s
            .previous_version
            .map(|p| format!("  (previous v{p} readable)"))
            .unwrap_or_default();
        writeln!(out, "{}  v{}  {}{prev}", s.name, s.version, s.updated_at)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the agent's health; exits 0 only when it is `ready`.
pub fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let answer = runtime()?.block_on(request(&args.socket.socket, "/v1/health"))?;
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let h = match serde_json::from_slice(&answer.body)
        .context("the agent's answer is not a health report")?
    {
        HealthAnswer::Full(h) => h,
        HealthAnswer::Live(l) => {
            println!(
                "{}; details only for callers the agent's access rules admit (and root)",
                l.status
            );
            return Ok(status_code(&l.status));
        }
    };
    let mlock = match &h.mlock {
        MlockStatus::Locked => "memory locked".to_owned(),
        MlockStatus::Failed { reason } => format!("memory NOT locked: {reason}"),
        MlockStatus::Off => "memory locking off".to_owned(),
    };
    let state = match (&h.since, &h.reason) {
        (Some(since), Some(reason)) => format!("{} since {since}: {reason}", h.status),
        _ => h.status.clone(),
    };
    println!(
        "{state}; {}/{} revision {}, {} secrets, {mlock}",
        h.org_id, h.environment, h.revision, h.secrets
    );
    if let Some(m) = &h.mount {
        println!("{}", mount_line(m));
    }
    if let Some(a) = &h.audit {
        println!("{}", audit_line(a));
    }
    for u in &h.undeliverable {
        println!(
            "undeliverable: {} version {} ({}): cannot be opened here, the previous value (if \
             any) is still served; reported to the vault",
            u.secret, u.version, u.reason
        );
    }
    Ok(status_code(&h.status))
}

fn status_code(status: &str) -> ExitCode {
    if status == "ready" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn mount_line(m: &MountHealth) -> String {
    let path = m.path.as_deref().unwrap_or("-");
    match (m.state.as_str(), &m.reason) {
        ("off", _) => "mount: off (fuse = false)".to_owned(),
        (state, Some(reason)) => format!("mount: {path} {state}: {reason}"),
        (state, None) => match &m.read_path {
            Some(read) => format!("mount: {path} ({state}, {read})"),
            None => format!("mount: {path} ({state})"),
        },
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn audit_line(a: &AuditStats) -> String {
    if !a.enabled {
        return "audit: off".to_owned();
    }
    let mut line = format!(
        "audit: {} events waiting ({} of {}), last shipped {}, {} shipped, {} dropped, {} corrupt \
         skipped",
        a.backlog_events + a.pending_events,
        bytes(a.backlog_bytes),
        bytes(a.spool_max_bytes),
        a.last_shipped_at
            .as_deref()
            .unwrap_or("never (since start)"),
        a.shipped_total,
        a.dropped_total,
        a.corrupt_skipped,
    );
    if a.pending_dropped > 0 {
        line.push_str(&format!(
            " ({} lost accesses to report in the next dropped event)",
            a.pending_dropped
        ));
    }
    if let Some(since) = &a.failing_since {
        line.push_str(&format!(
            "; shipping failing since {since}: {}",
            a.last_error.as_deref().unwrap_or("unknown error")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let mut a = AuditStats {
            enabled: true,
            pending_events: 1,
            backlog_events: 2,
            backlog_bytes: 2048,
            spool_max_bytes: 64 << 20,
            last_shipped_at: None,
            last_error: Some("vault unreachable".into()),
            failing_since: Some("2025-01-01T00:00:00Z".into()),
            shipped_total: 0,
            dropped_total: 4,
            pending_dropped: 0,
            corrupt_skipped: 5,
        };
        let l = audit_line(&a);
        assert!(
            l.starts_with("audit: 3 events waiting (2.0 KiB of 64.0 MiB), last shipped never"),
            "{l}"
        );
        assert!(l.contains("4 dropped, 5 corrupt skipped; shipping failing since 2025-01-01T00:00:00Z: vault unreachable"), "{l}");
        a.pending_dropped = 6;
        assert!(
            audit_line(&a).contains(
                "5 corrupt skipped (6 lost accesses to report in the next dropped event); shipping"
            ),
            "{}",
            audit_line(&a)
        );
        a.enabled = false;
        assert_eq!(audit_line(&a), "audit: off");
        let m = MountHealth {
            path: Some("/run/fyvault".into()),
            state: "mounted".into(),
            reason: None,
            read_path: None,
        };
        assert_eq!(mount_line(&m), "mount: /run/fyvault (mounted)");
        let m = MountHealth {
            read_path: Some("passthrough".into()),
            ..m
        };
        assert_eq!(mount_line(&m), "mount: /run/fyvault (mounted, passthrough)");
        let m = MountHealth {
            path: Some("/x".into()),
            state: "unavailable".into(),
            reason: Some("no /dev/fuse".into()),
            read_path: None,
        };
        assert_eq!(mount_line(&m), "mount: /x unavailable: no /dev/fuse");
    }
}
