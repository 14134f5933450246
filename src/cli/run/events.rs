//! The agent's `GET /v1/events` stream, as `fyvault run` reads it: server-sent events, one
//! `event:` and one `data:` line each, comments and keep-alives skipped.

use std::path::Path;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::agent::socket::wire::EventData;
use crate::cli::get::send;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `added`, `rotated`, `updated`, `revoked` or `expired`.
    Change { kind: String, data: EventData },
    /// The stream fell behind and events were missed.
    Resync,
}

pub(crate) struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// Opens the stream; returns once the agent has sent the answer's head (from then on it
    /// reports every change).
    pub(crate) async fn open(socket: &Path) -> anyhow::Result<EventStream> {
        let resp = send(socket, "/v1/events").await?;
        if !resp.status().is_success() {
            anyhow::bail!("the agent answered {} to /v1/events", resp.status());
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// The next event; `None` once the stream has ended (agent stopped, connection lost).
    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            while let Some(block) = take_block(&mut self.buf) {
                if let Some(ev) = parse_block(&block) {
                    return Some(ev);
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        feed(&mut self.buf, data);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// Appends received bytes, dropping `\r` (so `\r\n` line ends read as `\n`).
fn feed(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend(data.iter().filter(|&&b| b != b'\r'));
}

/// Removes and returns the first complete block (up to a blank line).
fn take_block(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let block = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 2);
    Some(block)
}

fn parse_block(block: &str) -> Option<Event> {
    let mut kind = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(k) = line.strip_prefix("event:") {
            kind = Some(k.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim());
        }
    }
    let kind = kind?;
    if kind == "resync" {
        return Some(Event::Resync);
    }
    let data = serde_json::from_str(&data).ok()?;
    Some(Event::Change { kind, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_events() {
        let mut buf = Vec::new();
        feed(&mut buf, b": fyvault events\n\nevent: rotated\ndata: {\"name\":\"A\",\"version\":2,\"previous_version\":1}\n\nevent: resync\r\ndata: {\"missed\":3}\r\n\r\nevent: rev");
        let b = take_block(&mut buf).unwrap();
        assert_eq!(parse_block(&b), None);
        let b = take_block(&mut buf).unwrap();
        assert_eq!(
            parse_block(&b),
            Some(Event::Change {
                kind: "rotated".into(),
                data: EventData {
                    name: "A".into(),
                    version: 2,
                    previous_version: Some(1)
                }
            })
        );
        let b = take_block(&mut buf).unwrap();
        assert_eq!(parse_block(&b), Some(Event::Resync));
        assert_eq!(take_block(&mut buf), None);
        assert_eq!(buf, b"event: rev");
        assert_eq!(parse_block("event: added\ndata: not json"), None);
    }
}
