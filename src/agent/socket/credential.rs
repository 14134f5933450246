//! systemd credentials on the agent's socket (`LoadCredential=ID:/run/fyvault.sock`).
//!
//! # The protocol (systemd v247+, `src/core/exec-credential.c` and `src/basic/fileio.c`)
//! At unit start, PID 1 binds its client socket to the abstract address
//! `\0<random hex>/unit/<unit name>/<credential id>`, connects to the path, shuts down its write
//! side and reads to EOF. What it read becomes `$CREDENTIALS_DIRECTORY/<id>`. So the agent
//! knows, at accept and before any byte, which unit asks for which credential; a connection
//! from any other address is HTTP (same socket path).
//!
//! # Identity and policy
//! Only a peer with uid 0 (the system manager) is served; the **unit** is the identity and the
//! read gate decides with [`crate::agent::access::Policy::allows_unit`] (root's and the group's
//! blanket grants do not apply). The id names the secret, or `[credentials]` maps it.
//!
//! # Refusing so that the unit fails
//! systemd reads with `read_full_file_full(..., READ_FULL_FILE_FAIL_WHEN_LARGER)` and a limit
//! of `CREDENTIAL_SIZE_MAX` (1 MiB):
//! - an **empty reply** (close without writing) is EOF after 0 bytes: systemd writes an empty
//!   credential file and **starts the unit** — the wrong outcome for a refusal;
//! - a **read error** (`ECONNRESET`) fails `fread`, `load_credential` returns the error, and
//!   the unit fails to start (`243/CREDENTIALS`). But an `AF_UNIX` stream socket gives its peer
//!   `ECONNRESET` only when the closing side still has unread data queued (Linux
//!   `unix_release_sock`); PID 1 has shut down its write side and sent nothing, so the agent
//!   cannot produce a reset on this connection;
//! - a reply **longer than 1 MiB** fails with `E2BIG` (`FAIL_WHEN_LARGER`; before that flag,
//!   systemd v247–v250 refused it against `CREDENTIALS_TOTAL_SIZE_MAX`, also 1 MiB): the unit
//!   fails to start, the bytes are never written anywhere.
//!
//! So a refusal is answered with [`REFUSAL_LEN`] bytes (1 MiB + 1) of a repeated plain-text
//! notice, then closed: the unit fails instead of starting with an empty credential. Every
//! refusal is logged and audited (`denied` or `missing`, `via = systemd`, the unit, the id's
//! secret).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{UnixAddr, getpeername};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::{Ctx, Peer};
use crate::agent::access::Caller;
use crate::agent::gate::{ReadRequest, Refusal};
use crate::api::{AccessAction, AccessVia};

/// systemd's `CREDENTIAL_SIZE_MAX` (1 MiB) plus one byte: the shortest reply it refuses.
pub const REFUSAL_LEN: usize = 1024 * 1024 + 1;

/// How long one answer may take to be read by PID 1.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const NOTICE: &[u8] = b"fyvault refused this credential; see the agent's log\n";

/// What PID 1's address says: which unit asks for which credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialAsk {
    pub unit: String,
    pub id: String,
}

/// The credential request of a connection, if its peer is bound to systemd's abstract address
/// form `\0<hex>/unit/<unit>/<id>`; `None` for every other peer (served with HTTP).
pub fn systemd_ask(stream: &UnixStream) -> Option<CredentialAsk> {
    let addr: UnixAddr = getpeername(stream.as_raw_fd()).ok()?;
    parse_address(addr.as_abstract()?)
}

/// Parses the abstract name (without its leading NUL).
pub fn parse_address(name: &[u8]) -> Option<CredentialAsk> {
    let name = std::str::from_utf8(name).ok()?;
    let (random, rest) = name.split_once('/')?;
    if random.is_empty() || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (unit, id) = rest.strip_prefix("unit/")?.split_once('/')?;
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    (printable(unit) && printable(id) && !id.contains('/')).then(|| CredentialAsk {
        unit: unit.to_owned(),
        id: id.to_owned(),
    })
}

/// Answers one credential request on `stream` and closes it.
pub async fn serve(ctx: &Ctx, peer: &Peer, ask: CredentialAsk, mut stream: UnixStream) {
    let outcome = decide(ctx, peer, &ask);
    let written = match &outcome {
        Ok(value) => write_all(&mut stream, value.expose()).await,
        Err(why) => {
            tracing::warn!(
                unit = %ask.unit,
                credential = %ask.id,
                peer_uid = peer.caller.uid,
                "systemd credential refused ({why}); the unit will fail to start"
            );
            refuse(&mut stream).await
        }
    };
    if let Err(e) = written {
        tracing::debug!(unit = %ask.unit, credential = %ask.id, "systemd credential: {e}");
    }
    let _ = stream.shutdown().await;
}

/// The value to send, or why not (for the log; the gate has recorded the event).
fn decide(
    ctx: &Ctx,
    peer: &Peer,
    ask: &CredentialAsk,
) -> Result<crate::secret::Secret, &'static str> {
    let delivery = ctx.state.delivery();
    let name = delivery.credential_secret(&ask.id);
    if peer.caller.uid != 0 {
        // Not the system manager (a user's manager, or anyone binding that address form):
        // recorded as the process it is, not as the unit it names.
        ctx.state.auditor.record(
            &peer.caller,
            AccessAction::Denied,
            name.unwrap_or(&ask.id),
            None,
            AccessVia::Systemd,
        );
        return Err("the peer is not uid 0");
    }
    let unit = Caller {
        unit: Some(ask.unit.clone()),
        ..Caller::clone(&peer.caller)
    };
    let Some(name) = name else {
        ctx.state.auditor.record(
            &unit,
            AccessAction::Denied,
            &ask.id,
            None,
            AccessVia::Systemd,
        );
        return Err("the id is neither in [credentials] nor a secret name");
    };
    match ctx
        .state
        .gate()
        .read(&ReadRequest::new(&unit, AccessVia::Systemd, name))
    {
        Ok((_, value)) => Ok(value),
        Err(Refusal::Denied) => Err("no rule grants this secret to this unit"),
        Err(Refusal::NotFound | Refusal::NoPrevious) => Err("no such secret"),
        Err(Refusal::NotReady) => Err("the agent has no values yet"),
        Err(Refusal::Unrenderable) => Err("cannot be rendered"),
        // A user-vault secret has one value per app user: never a unit's credential.
        Err(Refusal::UserRequired | Refusal::UserMissing | Refusal::CannotOpen) => {
            Err("a user-vault secret (values per app user) is not a credential")
        }
    }
}

async fn write_all(stream: &mut UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::other("PID 1 did not read the answer in time"))?
}

/// Writes [`REFUSAL_LEN`] bytes of the notice (PID 1 stops reading and closes after them).
async fn refuse(stream: &mut UnixStream) -> std::io::Result<()> {
    static BLOCK: std::sync::OnceLock<Arc<Vec<u8>>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| {
        Arc::new(
            NOTICE
                .iter()
                .copied()
                .cycle()
                .take(REFUSAL_LEN)
                .collect::<Vec<u8>>(),
        )
    });
    write_all(stream, block).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ask = parse_address(b"8f3a9c01d2e4b5a6/unit/app.service/STRIPE_SK").unwrap();
        assert_eq!(
            (ask.unit.as_str(), ask.id.as_str()),
            ("app.service", "STRIPE_SK")
        );
        let mapped = parse_address(b"ab/unit/web@1.service/db.url").unwrap();
        assert_eq!(
            (mapped.unit.as_str(), mapped.id.as_str()),
            ("web@1.service", "db.url")
        );
        for bad in [
            &b"/unit/app.service/X"[..],
            b"xyz/unit/app.service/X",
            b"ab/units/app.service/X",
            b"ab/unit/app.service",
            b"ab/unit//X",
            b"ab/unit/app.service/",
            b"ab/unit/app.service/a/b",
            b"ab/unit/app\n.service/X",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }
}
