//! TLS to PostgreSQL, asked for in the connection URL the way libpq users write it.
//!
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS, and the server's certificate is
//!   always verified, chain *and* host name, against `sslrootcert=FILE` (PEM) or, without it
//!   (or with `sslrootcert=system`), the system's CA certificates. fyvault never makes an
//!   unverified TLS connection: libpq's `require` would accept any certificate, which protects
//!   against nobody who can intercept the connection. Channel binding (SCRAM-SHA-256-PLUS) is
//!   used when the server offers it.
//! - No `sslmode`, `disable` or `prefer`: no TLS (as before; for a Unix socket, loopback or a
//!   private network). The store warns at start when such a connection leaves the machine.
//!
//! tokio-postgres knows neither `sslrootcert` nor the `verify-*` modes, so they are taken out
//! of the URL here before it is parsed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// No TLS.
    Off,
    /// TLS with a verified certificate: roots from this PEM file, or the system's.
    Verified { root_cert: Option<PathBuf> },
}

/// `url` without its `sslmode` and `sslrootcert` (tokio-postgres knows neither the latter nor
/// the `verify-*` modes; the caller sets the mode on the parsed configuration from the
/// [`TlsChoice`]), and what they asked for. Only the URL form (`postgres://…?…`) carries them;
/// a string without a query passes unchanged.
pub fn split_tls(url: &str) -> Result<(String, TlsChoice), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), TlsChoice::Off));
    };
    let mut kept: Vec<String> = Vec::new();
    let mut mode: Option<String> = None;
    let mut root_cert: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |v: &str| {
            percent_decode_str(v)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    StoreError::Backend(format!("invalid database URL: `{key}` is not UTF-8"))
                })
        };
        match key {
            "sslmode" => mode = Some(decode(value)?),
            "sslrootcert" => root_cert = Some(decode(value)?),
            _ => kept.push(pair.to_string()),
        }
    }
    let choice = match mode.as_deref() {
        None | Some("disable") | Some("prefer") => {
            if root_cert.is_some() {
                return Err(StoreError::Backend(
                    "invalid database URL: sslrootcert needs sslmode=verify-full \
                     (or require/verify-ca, which fyvault verifies the same way)"
                        .into(),
                ));
            }
            TlsChoice::Off
        }
        Some("require") | Some("verify-ca") | Some("verify-full") => TlsChoice::Verified {
            root_cert: root_cert.filter(|r| r != "system").map(PathBuf::from),
        },
        Some(other) => {
            // The value is the user's own word, not a secret; shown trimmed.
            let shown: String = other.chars().take(32).collect();
            return Err(StoreError::Backend(format!(
                "invalid database URL: sslmode `{shown}` (use disable, require, verify-ca \
                 or verify-full)"
            )));
        }
    };
    if kept.is_empty() {
        return Ok((base.to_string(), choice));
    }
    Ok((format!("{base}?{}", kept.join("&")), choice))
}

/// The connector for `choice`. With [`TlsChoice::Off`] the caller configures
/// `sslmode=disable`, so the connector (with no roots) is never used.
pub fn connector(choice: &TlsChoice) -> Result<MakeRustlsConnect, StoreError> {
    let roots = match choice {
        TlsChoice::Off => RootCertStore::empty(),
        TlsChoice::Verified {
            root_cert: Some(path),
        } => roots_from_file(path)?,
        TlsChoice::Verified { root_cert: None } => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("database TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, StoreError> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| StoreError::Backend(format!("database TLS: cannot read {shown}: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| {
            StoreError::Backend(format!(
                "database TLS: {shown} is not PEM certificates: {e}"
            ))
        })?;
        roots.add(cert).map_err(|e| {
            StoreError::Backend(format!("database TLS: a certificate in {shown}: {e}"))
        })?;
    }
    if roots.is_empty() {
        return Err(StoreError::Backend(format!(
            "database TLS: {shown} holds no certificate"
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(StoreError::Backend(
            "database TLS: no system CA certificates found (install ca-certificates, or name \
             the database's CA with sslrootcert=FILE)"
                .into(),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsChoice) {
        split_tls(url).unwrap()
    }

    #[test]
    fn no_mode_means_no_tls() {
        assert_eq!(
            split("postgres://u:p@db/x"),
            ("postgres://u:p@db/x".into(), TlsChoice::Off)
        );
        assert_eq!(
            split("postgres://u:p@db/x?application_name=a"),
            (
                "postgres://u:p@db/x?application_name=a".into(),
                TlsChoice::Off
            )
        );
        assert_eq!(
            split("postgres://db/x?sslmode=prefer"),
            ("postgres://db/x".into(), TlsChoice::Off)
        );
    }

    #[test]
    fn verify_modes_become_require_with_their_roots() {
        let (url, choice) =
            split("postgres://db/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&a=b");
        assert_eq!(url, "postgres://db/x?a=b");
        assert_eq!(
            choice,
            TlsChoice::Verified {
                root_cert: Some("/etc/ca dir/ca.pem".into())
            }
        );
        for mode in ["require", "verify-ca"] {
            let (url, choice) = split(&format!("postgres://db/x?sslmode={mode}"));
            assert_eq!(url, "postgres://db/x");
            assert_eq!(choice, TlsChoice::Verified { root_cert: None });
        }
        let (_, choice) = split("postgres://db/x?sslrootcert=system&sslmode=verify-full");
        assert_eq!(choice, TlsChoice::Verified { root_cert: None });
    }

    #[test]
    fn bad_tls_parameters_are_clear_errors_without_the_password() {
        for url in [
            "postgres://u:hunter2@db/x?sslmode=allow-everything",
            "postgres://u:hunter2@db/x?sslrootcert=/ca.pem",
            "postgres://u:hunter2@db/x?sslmode=disable&sslrootcert=/ca.pem",
            "postgres://u:hunter2@db/x?sslmode=%FF",
        ] {
            let e = split_tls(url).unwrap_err().to_string();
            assert!(e.contains("invalid database URL"), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }

    #[test]
    fn root_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = connector(&TlsChoice::Verified {
            root_cert: Some(missing),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = connector(&TlsChoice::Verified {
            root_cert: Some(empty),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        connector(&TlsChoice::Verified {
            root_cert: Some(good),
        })
        .unwrap();
        connector(&TlsChoice::Off).unwrap();
    }
}
