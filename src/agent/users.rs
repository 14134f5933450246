//! Per-user values of user-vault secrets (issue 14), as the agent holds them.
//!
//! The creator values live in the view (opened into locked memory at sync, served by FUSE,
//! `.env` and the socket). User values are different on purpose:
//!
//! - they are served on the socket only, by `GET /v1/secrets/NAME?user=ID`: never a file in the
//!   mount nor a line of `.env` (a user id is not something every local user should list);
//! - they stay **sealed** in memory (the vault's HPKE ciphertext, base64, as synced) and are
//!   opened per read with the environment key; the plaintext lives only in the zeroizing
//!   answer of that read. So an agent holding 10,000 users' values keeps no plaintext of any,
//!   its first sync opens nothing (ready time does not grow with the number of users), and
//!   each value costs its ciphertext plus a map entry (docs/agent.md, "User-vault secrets").
//!
//! Versions, grace and rollback protection follow the creator rules, per (name, user): an
//! older version than the one held is refused; a rotation keeps the previous version
//! readable (`?version=previous`) until its grace ends; a revoke drops the value at once.

use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::agent::view::{Meta, Which};
use crate::api::{SecretPolicy, SecretState, SyncPolicy, SyncUserSecret};
use crate::client::VaultClient;
use crate::crypto::{PrivateKey, aad};
use crate::secret::Secret;

/// One user's value as held: sealed.
#[derive(Debug)]
struct Entry {
    version: u64,
    sealed: Box<str>,
    updated_at: SystemTime,
    previous: Option<Previous>,
}

#[derive(Debug)]
struct Previous {
    version: u64,
    sealed: Box<str>,
    until: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Names whose policy is `user`.
    user_policy: HashSet<String>,
    /// name → user id → value.
    values: HashMap<String, HashMap<Box<str>, Entry>>,
}

/// What opens sealed user values: the environment key and the place (org, environment).
struct Opener {
    key: PrivateKey,
    org: String,
    env: String,
}

/// What asks the vault for connect links: the agent's client (its token) and its environment.
#[derive(Debug, Clone)]
pub struct Connector {
    pub client: VaultClient,
    pub org: String,
    pub env: String,
}

/// Why a user's value is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAbsent {
    /// That user has no value (never connected, or revoked).
    Missing,
    /// `?version=previous` with no previous version in grace.
    NoPrevious,
    /// The held ciphertext does not open with this agent's key.
    CannotOpen,
}

/// The user-vault side of the agent's state.
#[derive(Default)]
pub struct UserVault {
    inner: RwLock<Inner>,
    opener: OnceLock<Opener>,
    connector: OnceLock<Connector>,
}

impl std::fmt::Debug for UserVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (names, values) = self.counts();
        f.debug_struct("UserVault")
            .field("names", &names)
            .field("values", &values)
            .finish_non_exhaustive()
    }
}

impl UserVault {
    /// Gives the key that opens user values (once, at start).
    pub fn set_opener(&self, key: PrivateKey, org: &str, env: &str) {
        let _ = self.opener.set(Opener {
            key,
            org: org.to_owned(),
            env: env.to_owned(),
        });
    }

    /// Gives what mints connect links (once, at start).
    pub fn set_connector(&self, c: Connector) {
        let _ = self.connector.set(c);
    }

    pub fn connector(&self) -> Option<&Connector> {
        self.connector.get()
    }

    /// Whether `name`'s policy is `user` (its values are per user; no shared value is served).
    pub fn is_user_policy(&self, name: &str) -> bool {
        self.read().user_policy.contains(name)
    }

    /// (user-vault names, user values held).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        (
            inner.user_policy.len(),
            inner.values.values().map(HashMap::len).sum(),
        )
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies what one sync answer says about policies and user values (`full`: it is the
    /// whole state). `grace_cap` caps previous versions' grace. Returns how many values
    /// changed.
    pub fn apply(
        &self,
        full: bool,
        policies: &[SyncPolicy],
        values: &[SyncUserSecret],
        grace_cap: Option<Duration>,
    ) -> usize {
        let now = Instant::now();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if full {
            inner.user_policy.clear();
        }
        for p in policies {
            match p.policy {
                SecretPolicy::User => inner.user_policy.insert(p.name.clone()),
                SecretPolicy::Creator => inner.user_policy.remove(&p.name),
            };
        }
        let mut old = if full {
            std::mem::take(&mut inner.values)
        } else {
            HashMap::new()
        };
        let mut changed = 0;
        for v in values {
            let s = &v.secret;
            let held = inner
                .values
                .get(s.name.as_str())
                .and_then(|m| m.get(v.user_id.as_str()))
                .or_else(|| {
                    old.get(s.name.as_str())
                        .and_then(|m| m.get(v.user_id.as_str()))
                })
                .map(|e| e.version);
            if held.is_some_and(|h| s.version < h) {
                tracing::warn!(
                    secret = %s.name, offered = s.version, held = ?held,
                    "refused an older version of a user's value than the one held"
                );
                // Keep what was held (a full answer must not drop it).
                if let Some(e) = old
                    .get_mut(s.name.as_str())
                    .and_then(|m| m.remove(v.user_id.as_str()))
                {
                    inner
                        .values
                        .entry(s.name.clone())
                        .or_default()
                        .insert(v.user_id.as_str().into(), e);
                }
                continue;
            }
            changed += 1;
            let entry = match (s.state, &s.sealed_value) {
                (SecretState::Active, Some(sealed)) => Entry {
                    version: s.version,
                    sealed: sealed.as_str().into(),
                    updated_at: crate::rfc3339::parse(&s.updated_at)
                        .unwrap_or_else(SystemTime::now),
                    previous: s.previous.as_ref().and_then(|p| {
                        let mut left = Duration::from_millis(p.grace_remaining_ms);
                        if let Some(cap) = grace_cap {
                            left = left.min(cap);
                        }
                        (!left.is_zero()).then(|| Previous {
                            version: p.version,
                            sealed: p.sealed_value.as_str().into(),
                            until: now + left,
                        })
                    }),
                },
                _ => {
                    if let Some(m) = inner.values.get_mut(s.name.as_str()) {
                        m.remove(v.user_id.as_str());
                    }
                    continue;
                }
            };
            inner
                .values
                .entry(s.name.clone())
                .or_default()
                .insert(v.user_id.as_str().into(), entry);
        }
        inner.values.retain(|_, m| !m.is_empty());
        old.clear();
        changed
    }

    /// `user`'s value of `name` (`which` version), opened for this read only.
    pub fn get(&self, name: &str, user: &str, which: Which) -> Result<(Meta, Secret), UserAbsent> {
        let (version, sealed, updated_at) = {
            let inner = self.read();
            let e = inner
                .values
                .get(name)
                .and_then(|m| m.get(user))
                .ok_or(UserAbsent::Missing)?;
            match which {
                Which::Current => (e.version, e.sealed.clone(), e.updated_at),
                Which::Previous => match &e.previous {
                    Some(p) if Instant::now() < p.until => {
                        (p.version, p.sealed.clone(), e.updated_at)
                    }
                    _ => return Err(UserAbsent::NoPrevious),
                },
            }
        };
        // Opened outside the lock: a read never holds it across the HPKE open.
        let opener = self.opener.get().ok_or(UserAbsent::CannotOpen)?;
        let value = opener
            .key
            .open(&sealed, &aad(&opener.org, &opener.env, name))
            .map_err(|_| {
                tracing::error!(
                    secret = %name, version,
                    "cannot open a user's sealed value with this agent's key"
                );
                UserAbsent::CannotOpen
            })?;
        Ok((
            Meta {
                version,
                len: value.len(),
                updated_at,
            },
            value,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SyncPrevious, SyncSecret};

    fn value(
        pk: &crate::crypto::PublicKey,
        name: &str,
        user: &str,
        v: u64,
        plain: &[u8],
    ) -> SyncUserSecret {
        SyncUserSecret {
            user_id: user.into(),
            secret: SyncSecret {
                name: name.into(),
                version: v,
                state: SecretState::Active,
                sealed_value: Some(pk.seal(plain, &aad("o", "e", name)).unwrap()),
                updated_at: "2026-01-01T00:00:00Z".into(),
                previous: None,
            },
        }
    }

    fn vault() -> (UserVault, crate::crypto::PublicKey) {
        let (sk, pk) = PrivateKey::generate();
        let u = UserVault::default();
        u.set_opener(sk, "o", "e");
        (u, pk)
    }

    #[test]
    fn values_are_per_user_versioned_and_revocable() {
        let (u, pk) = vault();
        let pol = [SyncPolicy {
            name: "AI".into(),
            policy: SecretPolicy::User,
        }];
        u.apply(
            true,
            &pol,
            &[
                value(&pk, "AI", "alice", 1, b"a1"),
                value(&pk, "AI", "bob", 3, b"b3"),
            ],
            None,
        );
        assert!(u.is_user_policy("AI") && !u.is_user_policy("OTHER"));
        let (m, v) = u.get("AI", "alice", Which::Current).unwrap();
        assert_eq!((m.version, v.expose()), (1, &b"a1"[..]));
        assert_eq!(
            u.get("AI", "carol", Which::Current).unwrap_err(),
            UserAbsent::Missing
        );
        // A rotation with grace, then an older version refused.
        let mut rot = value(&pk, "AI", "alice", 2, b"a2");
        rot.secret.previous = Some(SyncPrevious {
            version: 1,
            sealed_value: pk.seal(b"a1", &aad("o", "e", "AI")).unwrap(),
            grace_remaining_ms: 60_000,
        });
        assert_eq!(u.apply(false, &[], &[rot], None), 1);
        assert_eq!(
            u.get("AI", "alice", Which::Previous).unwrap().1.expose(),
            b"a1"
        );
        assert_eq!(
            u.apply(false, &[], &[value(&pk, "AI", "bob", 2, b"old")], None),
            0
        );
        assert_eq!(u.get("AI", "bob", Which::Current).unwrap().0.version, 3);
        // Revoke one user.
        let mut gone = value(&pk, "AI", "alice", 3, b"x");
        gone.secret.state = SecretState::Revoked;
        gone.secret.sealed_value = None;
        u.apply(false, &[], &[gone], None);
        assert_eq!(
            u.get("AI", "alice", Which::Current).unwrap_err(),
            UserAbsent::Missing
        );
        assert_eq!(u.counts(), (1, 1));
        // A full answer without bob drops bob; the policy without AI makes it creator.
        u.apply(true, &[], &[], None);
        assert_eq!(u.counts(), (0, 0));
        // A value sealed for another secret's place does not open here.
        let mut moved = value(&pk, "OTHER", "bob", 1, b"v");
        moved.secret.name = "AI".into();
        u.apply(false, &[], &[moved], None);
        assert_eq!(
            u.get("AI", "bob", Which::Current).unwrap_err(),
            UserAbsent::CannotOpen
        );
    }
}
