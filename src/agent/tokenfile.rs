//! The agent token file: read (one `fvagent_…` line, mode 0600), and watched so a replaced
//! token is used from the next request on.
//!
//! The watch is on the file's directory, not the file: editors and `install`/`mv` replace the
//! file (a new inode), which a watch on the old inode would never see. Every event in the
//! directory that names the file triggers a re-read; a file that is momentarily empty, half
//! written, of the wrong kind or with loose permissions is refused with a warning and the
//! current token stays in use. The token itself never appears in a log line or error.

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

/// Keeps the directory watch alive; dropping it stops watching.
pub struct TokenWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for TokenWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenWatch")
    }
}

/// Watches `path`; `on_change` gets each new valid token (never the same one twice in a row).
/// `current` is the token in use now.
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
    let last = Arc::new(std::sync::Mutex::new(current));
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let ours = ev.paths.is_empty()
                    || ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_owned()) == name);
                if !ours {
                    return;
                }
                match read_token(&file) {
                    Ok(token) => {
                        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                        if !ct_eq(token.expose(), last.expose()) {
                            *last = token.clone();
                            drop(last);
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
            }
            Err(e) => tracing::warn!("watching the token file failed: {e}"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(TokenWatch { _watcher: watcher })
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

    #[test]
    fn a_replaced_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.token");
        let t1 = generate_token(TokenKind::Agent);
        write(&p, t1.expose(), 0o600);
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = watch(&p, t1.clone(), move |t| {
            let _ = tx.send(t);
        })
        .unwrap();
        // A loose-mode file is refused; the next good one is taken.
        let bad = generate_token(TokenKind::Agent);
        write(&p, bad.expose(), 0o644);
        let t2 = generate_token(TokenKind::Agent);
        write(&p, t2.expose(), 0o600);
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the new token within the deadline");
        assert_eq!(got.expose(), t2.expose());
    }
}
