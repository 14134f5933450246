//! The sealed offline cache (`STATE_DIR/cache`): what the agent last synced, so that an agent
//! (re)started while the vault is unreachable can serve, and so that rollback protection
//! survives restarts.
//!
//! It holds the sealed values exactly as the vault sent them (sealed to the environment key:
//! the cache adds no plaintext to the disk), the sync revision, each previous version's grace
//! as a wall-clock deadline, and the highest version seen of every secret (revoked ones too).
//!
//! The file is JSON laid out exactly `{"body":{...},"mac":"HEX"}`; the MAC is HMAC-SHA-256 of
//! the body's bytes under a key derived from the environment's private key, so a damaged or
//! tampered file (or one of another org or environment) is refused whole: never half-used. It is
//! written atomically (a temp file 0600, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::{SecretState, SyncPrevious, SyncResponse, SyncSecret};
use crate::crypto::{PrivateKey, ct_eq, hmac_sha256};

/// The file's name in `state_dir`.
pub const FILE: &str = "cache";
const FORMAT: u32 = 1;
/// A cache larger than this is refused unread (a sane one is far smaller: values are capped
/// at 64 KiB sealed, and so is every previous version).
pub const MAX_BYTES: u64 = 256 << 20;

/// One secret as last synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSecret {
    // Fields of every type written to the file are declared in alphabetical order (see
    // `write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CachedPrevious>,
    /// The sealed value, exactly as the vault sent it.
    pub sealed_value: String,
    pub updated_at: String,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPrevious {
    /// Readable until then (Unix ms, wall clock).
    pub grace_until_ms: u64,
    pub sealed_value: String,
    pub version: u64,
}

/// What the cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cache {
    pub revision: u64,
    /// When it was written (Unix ms, wall clock).
    pub written_at_ms: u64,
    /// The active secrets.
    pub secrets: BTreeMap<String, CachedSecret>,
    /// The highest version seen of every secret, revoked ones included: a feed that offers
    /// less is a rollback.
    pub highest: BTreeMap<String, Seen>,
    /// A restore accepted while the agent was stopped (`fyvault agent accept-restore`), not yet
    /// recorded as an access event: the next start records it and clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_restore: Option<AcceptedRestore>,
}

/// An offline acceptance of a restore, waiting for the agent to record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedRestore {
    /// When (Unix ms).
    pub at_ms: u64,
    pub pid: u32,
    /// The secrets named (None: every secret).
    pub secrets: Option<Vec<String>>,
    /// Who ran the command.
    pub uid: u32,
}

/// The highest version of a secret the agent has seen, and whether it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Seen {
    #[serde(default)]
    pub revoked: bool,
    pub version: u64,
}

/// The body as written: the fields of [`Body`] (its flattened cache's too) in alphabetical order,
/// borrowed (see `write`).
#[derive(Serialize)]
struct BodyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted_restore: &'a Option<AcceptedRestore>,
    environment: &'a str,
    format: u32,
    highest: &'a BTreeMap<String, Seen>,
    org_id: &'a str,
    revision: u64,
    secrets: &'a BTreeMap<String, CachedSecret>,
    written_at_ms: u64,
}

/// The body as read (the same fields, owned; no `flatten`, which would parse the whole body
/// into an intermediate tree first).
#[derive(Debug, Deserialize)]
struct Body {
    #[serde(default)]
    accepted_restore: Option<AcceptedRestore>,
    environment: String,
    format: u32,
    highest: BTreeMap<String, Seen>,
    org_id: String,
    revision: u64,
    secrets: BTreeMap<String, CachedSecret>,
    written_at_ms: u64,
}

/// The file's layout around the body: `{"body":` BODY `,"mac":"` 64 hex digits `"}`.
const HEAD: &[u8] = b"{\"body\":";
const MAC_OPEN: &[u8] = b",\"mac\":\"";
const MAC_CLOSE: &[u8] = b"\"}";
const MAC_HEX_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is damaged or was changed (its MAC does not match): not used")]
    Tampered(PathBuf),
    #[error("{0} is not a cache file this agent can read: not used")]
    Unreadable(PathBuf),
    #[error("{path} belongs to {org}/{env}, not this agent's environment: not used")]
    OtherPlace {
        path: PathBuf,
        org: String,
        env: String,
    },
    #[error("{0} is larger than {MAX_BYTES} bytes: not used")]
    TooLarge(PathBuf),
}

fn mac_key(key: &PrivateKey) -> zeroize::Zeroizing<[u8; 32]> {
    key.derive_key("agent cache mac")
}

/// Now as Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes `cache` for `org`/`env` atomically and durably, mode 0600.
pub fn write(
    state_dir: &Path,
    key: &PrivateKey,
    org: &str,
    env: &str,
    cache: &Cache,
) -> Result<(), CacheError> {
    write_private_atomic(state_dir, FILE, &encode(key, org, env, cache))
}

/// The file's bytes: `{"body":BODY,"mac":HEX}`, the MAC taken over BODY's bytes.
///
/// Earlier versions built the body as a `serde_json::Value` (whose objects serialize with their
/// keys sorted) and checked the MAC over it re-serialized. The body is written with every
/// object's keys in alphabetical order (the field order of [`BodyOut`] and of the cache's
/// types; maps are `BTreeMap`s): the same bytes, so files written before and after this change
/// read alike, without that tree and a clone of the cache (tens of MB at 10,000 secrets, which
/// the allocator keeps resident under `mlockall`).
fn encode(key: &PrivateKey, org: &str, env: &str, cache: &Cache) -> Vec<u8> {
    let body = serde_json::to_vec(&BodyOut {
        accepted_restore: &cache.accepted_restore,
        environment: env,
        format: FORMAT,
        highest: &cache.highest,
        org_id: org,
        revision: cache.revision,
        secrets: &cache.secrets,
        written_at_ms: cache.written_at_ms,
    })
    .expect("a cache serializes");
    let mac = hex::encode(hmac_sha256(&mac_key(key), &body));
    let mut file = Vec::with_capacity(body.len() + mac.len() + 20);
    file.extend_from_slice(b"{\"body\":");
    file.extend_from_slice(&body);
    file.extend_from_slice(b",\"mac\":\"");
    file.extend_from_slice(mac.as_bytes());
    file.extend_from_slice(b"\"}");
    file
}

/// Reads the cache: `Ok(None)` when there is none; an error (to be logged, one line) when it
/// is damaged, tampered with, or not this environment's.
pub fn read(
    state_dir: &Path,
    key: &PrivateKey,
    org: &str,
    env: &str,
) -> Result<Option<Cache>, CacheError> {
    let p = path(state_dir);
    let io = |op| {
        let p = p.clone();
        move |source| CacheError::Io {
            op,
            path: p,
            source,
        }
    };
    match fs::metadata(&p) {
        Ok(md) if md.len() > MAX_BYTES => return Err(CacheError::TooLarge(p)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("stat")(e)),
    }
    let raw = fs::read(&p).map_err(io("read"))?;
    decode(&raw, key, org, env, &p).map(Some)
}

/// Checks and decodes a cache file's bytes (`path` names it in errors). The MAC is checked over
/// the body's bytes as they are in the file, before the body is parsed.
pub fn decode(
    raw: &[u8],
    key: &PrivateKey,
    org: &str,
    env: &str,
    path: &Path,
) -> Result<Cache, CacheError> {
    let unreadable = || CacheError::Unreadable(path.to_owned());
    let tail = MAC_OPEN.len() + MAC_HEX_LEN + MAC_CLOSE.len();
    let rest = raw.strip_prefix(HEAD).ok_or_else(unreadable)?;
    let body_len = rest.len().checked_sub(tail).ok_or_else(unreadable)?;
    let (body, mac) = rest.split_at(body_len);
    let mac = mac
        .strip_prefix(MAC_OPEN)
        .and_then(|m| m.strip_suffix(MAC_CLOSE))
        .ok_or_else(unreadable)?;
    let got = hex::decode(mac).map_err(|_| CacheError::Tampered(path.to_owned()))?;
    if !ct_eq(&hmac_sha256(&mac_key(key), body), &got) {
        return Err(CacheError::Tampered(path.to_owned()));
    }
    let body: Body = serde_json::from_slice(body).map_err(|_| unreadable())?;
    if body.format != FORMAT {
        return Err(unreadable());
    }
    if body.org_id != org || body.environment != env {
        return Err(CacheError::OtherPlace {
            path: path.to_owned(),
            org: body.org_id,
            env: body.environment,
        });
    }
    Ok(Cache {
        revision: body.revision,
        written_at_ms: body.written_at_ms,
        secrets: body.secrets,
        highest: body.highest,
        accepted_restore: body.accepted_restore,
    })
}

impl Cache {
    /// How old the cache is now (zero if written in the future).
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.written_at_ms))
    }

    /// Forgets the rollback floor of `names` (every name with `None`): a restore was accepted.
    pub fn forget(&mut self, names: Option<&[String]>) {
        match names {
            None => self.highest.clear(),
            Some(names) => self.highest.retain(|n, _| !names.contains(n)),
        }
    }

    /// The rollback floor as the view takes it.
    pub fn floor(&self) -> Vec<(String, u64, bool)> {
        self.highest
            .iter()
            .map(|(n, s)| (n.clone(), s.version, s.revoked))
            .collect()
    }

    /// The cached secrets as a sync answer: previous versions' grace recomputed from their
    /// wall-clock deadlines (an ended grace is left out).
    pub fn as_sync_secrets(&self) -> Vec<SyncSecret> {
        let now = now_ms();
        self.secrets
            .iter()
            .map(|(name, s)| SyncSecret {
                name: name.clone(),
                version: s.version,
                state: SecretState::Active,
                sealed_value: Some(s.sealed_value.clone()),
                updated_at: s.updated_at.clone(),
                previous: s
                    .previous
                    .as_ref()
                    .filter(|p| p.grace_until_ms > now)
                    .map(|p| SyncPrevious {
                        version: p.version,
                        sealed_value: p.sealed_value.clone(),
                        grace_remaining_ms: p.grace_until_ms - now,
                    }),
            })
            .collect()
    }
}

/// Keeps the cache up to date with every applied sync answer (owned by the sync loop).
#[derive(Debug)]
pub struct Keeper {
    dir: PathBuf,
    org: String,
    env: String,
    cache: Cache,
    failing: bool,
}

impl Keeper {
    pub fn new(dir: &Path, org: &str, env: &str, start: Option<Cache>) -> Keeper {
        let mut cache = start.unwrap_or_default();
        // Recorded by the start that read it (`restore::record_offline`): not carried on.
        cache.accepted_restore = None;
        Keeper {
            dir: dir.to_owned(),
            org: org.to_owned(),
            env: env.to_owned(),
            cache,
            failing: false,
        }
    }

    /// Records one applied answer (leaving out the secrets whose offer the view refused as a
    /// rollback), takes the view's rollback `floor`, and writes the file.
    pub fn record(
        &mut self,
        key: &PrivateKey,
        resp: &SyncResponse,
        refused: &[&str],
        floor: Vec<(String, u64, bool)>,
    ) {
        let now = now_ms();
        if resp.full {
            self.cache.secrets.clear();
        }
        for s in resp
            .secrets
            .iter()
            .filter(|s| !refused.contains(&s.name.as_str()))
        {
            match (&s.state, &s.sealed_value) {
                (SecretState::Active, Some(sealed)) => {
                    self.cache.secrets.insert(
                        s.name.clone(),
                        CachedSecret {
                            version: s.version,
                            sealed_value: sealed.clone(),
                            updated_at: s.updated_at.clone(),
                            previous: s.previous.as_ref().map(|p| CachedPrevious {
                                version: p.version,
                                sealed_value: p.sealed_value.clone(),
                                grace_until_ms: now.saturating_add(p.grace_remaining_ms),
                            }),
                        },
                    );
                }
                (SecretState::Revoked, _) => {
                    self.cache.secrets.remove(&s.name);
                }
                (SecretState::Active, None) => {}
            }
        }
        self.cache.highest = floor
            .into_iter()
            .map(|(n, version, revoked)| (n, Seen { version, revoked }))
            .collect();
        self.cache.revision = self.cache.revision.max(resp.revision);
        self.cache.written_at_ms = now;
        match write(&self.dir, key, &self.org, &self.env, &self.cache) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("offline cache not written: {e}");
            }
            Err(_) => {}
        }
    }
}

impl Keeper {
    /// Rewrites the file with the view's rollback `floor` now (a restore was accepted: the
    /// forgotten floor must not come back from the file on a restart).
    pub fn set_floor(&mut self, key: &PrivateKey, floor: Vec<(String, u64, bool)>) {
        self.cache.highest = floor
            .into_iter()
            .map(|(n, version, revoked)| (n, Seen { version, revoked }))
            .collect();
        if let Err(e) = write(&self.dir, key, &self.org, &self.env, &self.cache) {
            tracing::warn!("offline cache not written: {e}");
        }
    }
}

/// Replaces `dir/name` with `bytes`: a temp file (0600) written and fsynced, renamed into
/// place, the directory fsynced.
pub fn write_private_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |op, p: &Path| {
        let p = p.to_owned();
        move |source| CacheError::Io {
            op,
            path: p,
            source,
        }
    };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn sample() -> Cache {
        let mut c = Cache {
            revision: 7,
            written_at_ms: now_ms(),
            ..Cache::default()
        };
        c.secrets.insert(
            "A".into(),
            CachedSecret {
                version: 3,
                sealed_value: "c2VhbGVk".into(),
                updated_at: "2026-01-01T00:00:00Z".into(),
                previous: Some(CachedPrevious {
                    version: 2,
                    sealed_value: "b2xk".into(),
                    grace_until_ms: now_ms() + 60_000,
                }),
            },
        );
        c.highest.insert(
            "A".into(),
            Seen {
                version: 3,
                revoked: false,
            },
        );
        c.highest.insert(
            "GONE".into(),
            Seen {
                version: 9,
                revoked: true,
            },
        );
        c
    }

    /// The file is byte for byte what serializing the body through a `serde_json::Value` gives
    /// (how earlier versions wrote it, and how `decode` checks the MAC).
    #[test]
    fn encode_writes_the_bytes_of_a_sorted_value() {
        let (key, _) = PrivateKey::generate();
        let mut c = sample();
        c.accepted_restore = Some(AcceptedRestore {
            at_ms: 5,
            pid: 6,
            secrets: Some(vec!["A".into()]),
            uid: 7,
        });
        for c in [sample(), c] {
            let body = serde_json::json!({
                "format": FORMAT, "org_id": "o", "environment": "e",
                "revision": c.revision, "written_at_ms": c.written_at_ms,
                "secrets": serde_json::to_value(&c.secrets).unwrap(),
                "highest": serde_json::to_value(&c.highest).unwrap(),
            });
            let mut body = body;
            if let Some(a) = &c.accepted_restore {
                body["accepted_restore"] = serde_json::to_value(a).unwrap();
            }
            let mac = hex::encode(hmac_sha256(
                &mac_key(&key),
                &serde_json::to_vec(&body).unwrap(),
            ));
            let want = serde_json::to_vec(&serde_json::json!({"body": body, "mac": mac})).unwrap();
            let got = encode(&key, "o", "e", &c);
            assert_eq!(
                String::from_utf8(got.clone()).unwrap(),
                String::from_utf8(want).unwrap()
            );
            assert_eq!(decode(&got, &key, "o", "e", Path::new("x")).unwrap(), c);
        }
    }

    #[test]
    fn round_trip_0600_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = PrivateKey::generate();
        assert!(read(dir.path(), &key, "o", "e").unwrap().is_none());
        let c = sample();
        write(dir.path(), &key, "o", "e", &c).unwrap();
        let p = path(dir.path());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(dir.path(), &key, "o", "e").unwrap(), Some(c.clone()));
        // Another environment, another key.
        assert!(matches!(
            read(dir.path(), &key, "o", "other"),
            Err(CacheError::OtherPlace { .. })
        ));
        let (other, _) = PrivateKey::generate();
        assert!(matches!(
            read(dir.path(), &other, "o", "e"),
            Err(CacheError::Tampered(_))
        ));
        // Any byte changed: refused whole.
        let good = fs::read(&p).unwrap();
        let at = good.windows(4).position(|w| w == b"\"A\":").unwrap() + 1;
        let mut bad = good.clone();
        bad[at] = b'B';
        fs::write(&p, &bad).unwrap();
        assert!(read(dir.path(), &key, "o", "e").is_err());
        fs::write(&p, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            read(dir.path(), &key, "o", "e"),
            Err(CacheError::Unreadable(_))
        ));
    }
}
