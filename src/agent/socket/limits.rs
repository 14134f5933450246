//! What one local user can make the socket spend: connections (in all and per uid), time to
//! send a request head, head size, request bodies, and an event stream it stops reading.
//!
//! | limit | default | over it |
//! |---|---|---|
//! | connections, all non-root callers | 1,024 | the connection is closed at once, after one line `503 too_many_connections` |
//! | connections per uid (root exempt) | 128 | the same |
//! | connections held by root | 256 more, kept apart | the same |
//! | time to send a whole request head (also the idle time allowed between requests on a keep-alive connection) | 30 s | the connection is closed |
//! | request head size | 16 KiB | 431, connection closed |
//! | request body | none (the API is read-only) | 413 `body_not_allowed`, connection closed, the body never read |
//! | kernel send buffer per connection | 32 KiB (the kernel doubles it) | writes wait (hyper buffers at most 16 KiB more) |
//! | events an event stream may fall behind (changes it has not taken while its reader does not read) | 512, for more than 5 s | the connection is closed (the client reconnects and re-lists) |
//!
//! Root is kept apart so that no local user can lock out the agent's own liveness probe or an
//! operator; root needs no per-uid limit (it could stop the agent anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The socket's limits (see the module docs). Tests shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub root_connections: usize,
    pub header_read_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_events_behind: u64,
    /// `SO_SNDBUF` of each connection: bounds what a client that stops reading holds in the
    /// kernel (the default, ~208 KiB, times a thousand connections is a lot).
    pub send_buffer_bytes: usize,
    /// How long an event stream may stay more than `max_events_behind` behind.
    pub event_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_uid: 128,
            root_connections: 256,
            header_read_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
            max_events_behind: 512,
            send_buffer_bytes: 32 * 1024,
            event_stall: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    others: usize,
    root: usize,
    per_uid: HashMap<u32, usize>,
}

/// Open connections, counted per uid.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Connections>,
    uid: u32,
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `uid`, or None when it is over a limit.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut c = self.counts();
        if uid == 0 {
            if c.root >= self.limits.root_connections {
                return None;
            }
            c.root += 1;
        } else {
            let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
            if c.others >= self.limits.max_connections
                || mine >= self.limits.max_connections_per_uid
            {
                return None;
            }
            c.others += 1;
            *c.per_uid.entry(uid).or_default() += 1;
        }
        Some(Slot {
            owner: self.clone(),
            uid,
        })
    }

    /// Open connections (all callers).
    pub fn open(&self) -> usize {
        let c = self.counts();
        c.others + c.root
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.owner.counts();
        if self.uid == 0 {
            c.root -= 1;
        } else {
            c.others -= 1;
            if let Some(n) = c.per_uid.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    c.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// In each request's extensions: lets a handler end its connection (an event stream whose
/// reader stopped reading); the connection's task drops the connection when notified.
#[derive(Debug, Clone)]
pub struct ConnControl {
    pub kill: Arc<Notify>,
    pub max_events_behind: u64,
    pub event_stall: Duration,
}

/// What a refused connection is told before it is closed.
pub const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 94\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections from this user\"}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_answer_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn per_uid_and_total_limits_and_root_apart() {
        let c = Connections::new(Limits {
            max_connections: 3,
            max_connections_per_uid: 2,
            root_connections: 1,
            ..Limits::default()
        });
        let a1 = c.admit(1000).unwrap();
        let _a2 = c.admit(1000).unwrap();
        assert!(c.admit(1000).is_none(), "per uid");
        let _b1 = c.admit(1001).unwrap();
        assert!(c.admit(1002).is_none(), "in all");
        let r = c.admit(0).expect("root is kept apart");
        assert!(c.admit(0).is_none(), "root's own limit");
        drop(a1);
        assert!(c.admit(1002).is_some(), "a place given back");
        drop(r);
        assert!(c.admit(0).is_some());
    }
}
