//! The smallest HTTP/1.1 keep-alive client there is: one TCP connection, one request at a
//! time, `Content-Length` answers only (what the vault sends). A simulated agent of the fleet
//! benchmark and of the fleet tests is one of these, so ten thousand of them fit in a test.
//! (Also included by `tests/vault_fleet.rs`.)
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One answer: status, the raw head (lower-cased) and the body.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// A header's value (names are matched lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `revision` of a sync answer.
    pub fn revision(&self) -> Option<u64> {
        self.json()["revision"].as_u64()
    }
}

/// One keep-alive connection to the vault.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `GET path` with a bearer token.
    pub async fn send_get(&mut self, path: &str, token: &str) -> std::io::Result<()> {
        let req =
            format!("GET {path} HTTP/1.1\r\nhost: vault\r\nauthorization: Bearer {token}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await
    }

    /// Sends a long-poll `sync?since=&wait=`.
    pub async fn send_sync(
        &mut self,
        org: &str,
        env: &str,
        since: u64,
        wait: u64,
        token: &str,
    ) -> std::io::Result<()> {
        let path = format!("/api/v1/orgs/{org}/environments/{env}/sync?since={since}&wait={wait}");
        self.send_get(&path, token).await
    }

    /// Reads one answer. `Err(UnexpectedEof)` when the vault closed the connection first.
    pub async fn read_answer(&mut self) -> std::io::Result<RawAnswer> {
        let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                return Err(eof());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad("no content-length"))?;
        let start = head_end + 4;
        while self.buf.len() < start + len {
            if self.fill().await? == 0 {
                return Err(eof());
            }
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        // Keep nothing allocated between answers (ten thousand connections).
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        Ok(RawAnswer { status, head, body })
    }

    /// Whether the vault closed the connection (EOF or reset) within `limit`.
    pub async fn closed_within(&mut self, limit: std::time::Duration) -> bool {
        let mut b = [0u8; 256];
        matches!(
            tokio::time::timeout(limit, self.stream.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Writes raw bytes (slow or broken clients).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}
