//! The agent token file: read (one `fvagent_…` line, mode 0600), and watched so a replaced
//! token is used from the next request on.
//!
//! The watch is on the file's directory, not the file: editors and `install`/`mv` replace the
//! file (a new inode), which a watch on the old inode would never see. Every event in the
//! directory that names the file and can mean new content (a write closed, a rename, a create,
//! a delete, a mode change; never a mere open or read) triggers a re-read, at a bounded rate; a
//! file that is momentarily empty, half written, of the wrong kind or with loose permissions is
//! refused with a warning and the current token stays in use. The token itself never appears in
//! a log line or error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher as _};
use zeroize::Zeroizing;

use crate::crypto::{TokenKind, ct_eq, parse_token};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token_file: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "token_file: {path} is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("token_file: {path} does not hold an agent token (fvagent_…): {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Reads and checks the token file; the token is returned without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<Secret, TokenFileError> {
    let md = std::fs::metadata(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let raw = Zeroizing::new(std::fs::read(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?);
    let trimmed = raw.trim_ascii();
    let format = |reason: &str| TokenFileError::Format {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(trimmed).map_err(|_| format("not text"))?;
    match parse_token(text) {
        Ok(TokenKind::Agent) => Ok(Secret::copy_from(trimmed)),
        Ok(other) => Err(format(&format!("it is a {} token", other.as_str()))),
        Err(e) => Err(format(&e.to_string())),
    }
}

/// The shortest time between two re-reads of the token file: a burst of events (an editor's
/// save, a script writing the file in pieces) costs at most one read per interval.
const MIN_REREAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps the directory watch alive; dropping it stops watching (and ends the re-read thread).
pub struct TokenWatch {
    _watcher: notify::RecommendedWatcher,
    rereads: Arc<std::sync::atomic::AtomicU64>,
}

impl TokenWatch {
    /// How many times the file has been re-read since the watch began.
    pub fn rereads(&self) -> u64 {
        self.rereads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::fmt::Debug for TokenWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenWatch")
    }
}

/// Whether an event can mean the file's content changed. Opening, reading and closing the file
/// without writing (our own re-read included, or anyone's `cat`) cannot: reacting to those made
/// every read of the file trigger a re-read, whose own OPEN/CLOSE triggered the next, forever.
/// A write is acted on when the writer closes the file, not at each `write` (IN_MODIFY), so a
/// half-written file is not read mid-way.
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => true,
        K::Access(_) => false,
        K::Create(_) | K::Remove(_) => true,
        K::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => true,
        K::Modify(_) => false,
        // Rescan (queue overflow) and anything the backend cannot classify: look once.
        K::Any | K::Other => true,
    }
}

/// Watches `path`; `on_change` gets each new valid token (never the same one twice in a row).
/// `current` is the token in use now.
///
/// The watch is on the directory, so a file replaced by rename (a new inode) is seen without
/// re-arming anything. Events only mark the file dirty; a thread of its own re-reads it, at most
/// once per [`MIN_REREAD_INTERVAL`], and ends when the watch is dropped.
pub fn watch(
    path: &Path,
    current: Secret,
    on_change: impl Fn(Secret) + Send + 'static,
) -> Result<TokenWatch, notify::Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let file = path.to_owned();
    let name = path.file_name().map(|n| n.to_owned());
    // One pending "look again" at most: further events while one is pending add nothing.
    let (dirty_tx, dirty_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let ours = ev.paths.is_empty()
                    || ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_owned()) == name);
                if ours && may_change_content(&ev.kind) {
                    let _ = dirty_tx.try_send(());
                }
            }
            Err(e) => tracing::warn!("watching the token file failed: {e}"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let rereads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = rereads.clone();
    std::thread::Builder::new()
        .name("fyvault-tokenfile".into())
        .spawn(move || {
            let mut last = current;
            // Ends when the watcher (and with it the sender) is dropped.
            while dirty_rx.recv().is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match read_token(&file) {
                    Ok(token) => {
                        if !ct_eq(token.expose(), last.expose()) {
                            last = token.clone();
                            tracing::info!(
                                "the agent token file {} changed; using the new token",
                                file.display()
                            );
                            on_change(token);
                        }
                    }
                    // Gone for a moment (replaced by rename) or half written: a later event
                    // brings the new file.
                    Err(TokenFileError::Read { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("{e}; keeping the current token"),
                }
                // Rate limit, not synchronisation: events arriving meanwhile leave one pending
                // re-read, taken after the pause.
                std::thread::sleep(MIN_REREAD_INTERVAL);
            }
        })
        .map_err(notify::Error::io)?;
    Ok(TokenWatch {
        _watcher: watcher,
        rereads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_token;

    fn write(path: &Path, content: &[u8], mode: u32) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn reads_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.token");
        let t = generate_token(TokenKind::Agent);
        let mut content = t.expose().to_vec();
        content.extend_from_slice(b"\n");
        write(&p, &content, 0o600);
        assert_eq!(read_token(&p).unwrap().expose(), t.expose());
        write(&p, &content, 0o640);
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains("0640") && e.contains("chmod 600"), "{e}");
        let prov = generate_token(TokenKind::Provider);
        write(&p, prov.expose(), 0o600);
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains("provider token"), "{e}");
        assert!(!e.contains(std::str::from_utf8(prov.expose()).unwrap()));
        write(&p, b"fvagent_garbage", 0o600);
        assert!(matches!(read_token(&p), Err(TokenFileError::Format { .. })));
    }

    /// A token file with a fresh agent token, watched: (dir, path, new tokens, watch).
    fn watched() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::sync::mpsc::Receiver<Secret>,
        TokenWatch,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.token");
        let t1 = generate_token(TokenKind::Agent);
        write(&p, t1.expose(), 0o600);
        let (tx, rx) = std::sync::mpsc::channel();
        let w = watch(&p, t1, move |t| {
            let _ = tx.send(t);
        })
        .unwrap();
        (dir, p, rx, w)
    }

    /// The next token the watch hands over; the replaced token must be `want`.
    fn next_token(rx: &std::sync::mpsc::Receiver<Secret>, want: &Secret) {
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the new token within the deadline");
        assert_eq!(got.expose(), want.expose());
    }

    #[test]
    fn a_replaced_file_is_picked_up() {
        let (_dir, p, rx, _w) = watched();
        // A loose-mode file is refused; the next good one is taken.
        let bad = generate_token(TokenKind::Agent);
        write(&p, bad.expose(), 0o644);
        let t2 = generate_token(TokenKind::Agent);
        write(&p, t2.expose(), 0o600);
        next_token(&rx, &t2);
    }

    #[test]
    fn reading_the_file_does_not_make_it_reread() {
        let (_dir, p, rx, w) = watched();
        // Anyone reading the file (root's `head -c1`, a backup tool) raises OPEN, ACCESS and
        // CLOSE_NOWRITE events; none of them may cause a re-read (whose own read would raise the
        // next, forever).
        for _ in 0..200 {
            let _ = std::fs::read(&p).unwrap();
        }
        // A real replacement is still picked up; by the time it is, a read loop would have
        // re-read the file thousands of times.
        let t2 = generate_token(TokenKind::Agent);
        write(&p, t2.expose(), 0o600);
        next_token(&rx, &t2);
        let n = w.rereads();
        assert!(
            (1..=3).contains(&n),
            "200 reads and one replacement caused {n} re-reads"
        );
        // And it stays quiet: a watcher that reacts to its own reads would keep re-reading (at
        // the bounded rate) for as long as we look. Five re-read intervals of looking.
        let until = std::time::Instant::now() + MIN_REREAD_INTERVAL * 5;
        while std::time::Instant::now() < until {
            assert!(
                w.rereads() <= n + 1,
                "the watcher keeps re-reading its own file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn only_events_that_can_change_content_count() {
        use notify::EventKind as K;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        for quiet in [
            K::Access(AccessKind::Open(AccessMode::Any)),
            K::Access(AccessKind::Read),
            K::Access(AccessKind::Close(AccessMode::Read)),
            K::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
        ] {
            assert!(!may_change_content(&quiet), "{quiet:?}");
        }
        for loud in [
            K::Access(AccessKind::Close(AccessMode::Write)),
            K::Create(CreateKind::File),
            K::Modify(ModifyKind::Name(RenameMode::To)),
            K::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(may_change_content(&loud), "{loud:?}");
        }
    }
}
