//! Verified tokens, per instance (docs/vault.md, "Token cache").
//!
//! Every request presents a bearer token, and before this cache every request looked it up in
//! the store: on SQLite a blocking read of ~70 µs, so the 5,000 re-polls that follow one push
//! cost a blocking thread each and delayed the answers of the same wake. A re-poll now costs a
//! hash and a map lookup.
//!
//! - Only tokens the store knew and that were neither revoked nor expired are cached; an unknown,
//!   revoked or expired token always goes to the store (so a flood of wrong tokens fills
//!   nothing, and a revoked token keeps its `denied` audit record).
//! - The key is the token's SHA-256 (never the token); the stored hash is still compared with
//!   the presented one in constant time, as the store path does.
//! - Expiry is checked on every use from the cached record, so an expiring token stops at its
//!   second, cached or not.
//! - Revocation forgets the token on this instance at once ([`TokenCache::forget`], from the
//!   revoke route); over PostgreSQL the revoking transaction also notifies
//!   [`crate::vault::store::postgres::TOKENS_CHANNEL`] and every other instance's LISTEN
//!   connection forgets it too. A fill races a revocation through a generation counter: a
//!   record read before a revocation is not inserted after it.
//! - Each (re)LISTEN clears the cache (notifications sent while no connection listened are
//!   lost), and every entry lives at most [`TTL`] after its store read, whatever happens.
//! - At most [`CAPACITY`] entries: when full, expired entries go, and if that frees nothing the
//!   map is cleared (every token is then read once more).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::crypto;
use crate::vault::store::{Store, StoreError, TokenRecord};

/// How long a verified token is trusted without a store read. Longer than the longest
/// long-poll wait (300 s), so an agent's poll after a full wait still finds its entry: the
/// cache exists for re-polls, and revocation does not wait for it (see the module doc).
pub const TTL: Duration = Duration::from_secs(600);

/// Most tokens held (about 300 bytes each).
pub const CAPACITY: usize = 200_000;

struct Entry {
    record: TokenRecord,
    read_at: Instant,
}

/// The verified tokens of this instance.
pub struct TokenCache {
    map: Mutex<HashMap<String, Entry>>,
    /// Bumped by every invalidation; a fill whose read started before it is dropped.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    ttl: Duration,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .finish()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose entries live `ttl` (tests).
    pub fn with_ttl(ttl: Duration) -> Self {
        TokenCache {
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token whose SHA-256 is `hash`: from the cache when verified within the TTL, else
    /// from the store. The returned record's hash equals `hash` (compared in constant time);
    /// revocation and expiry are the caller's to check, as for [`Store::find_token`].
    pub async fn find(
        &self,
        store: &dyn Store,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(record) = self.lookup(hash, now_ms) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(record));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let found = store.find_token(hash).await?;
        let Some(record) = found else {
            return Ok(None);
        };
        if !crypto::ct_eq(record.hash.as_bytes(), hash.as_bytes()) {
            return Ok(None);
        }
        let usable = record.revoked_ms.is_none() && record.expires_ms.is_none_or(|e| e > now_ms);
        if usable {
            self.insert(generation, record.clone());
        }
        Ok(Some(record))
    }

    fn lookup(&self, hash: &str, now_ms: i64) -> Option<TokenRecord> {
        let map = self.lock();
        let entry = map.get(hash)?;
        let fresh = entry.read_at.elapsed() < self.ttl;
        let live = entry.record.expires_ms.is_none_or(|e| e > now_ms);
        (fresh && live && crypto::ct_eq(entry.record.hash.as_bytes(), hash.as_bytes()))
            .then(|| entry.record.clone())
    }

    fn insert(&self, generation: u64, record: TokenRecord) {
        let mut map = self.lock();
        // Checked under the lock that `forget` and `clear` bump it under.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= CAPACITY {
            let ttl = self.ttl;
            map.retain(|_, e| e.read_at.elapsed() < ttl);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            record.hash.clone(),
            Entry {
                record,
                read_at: Instant::now(),
            },
        );
    }

    /// Forgets a token (revoked here, or on another instance).
    pub fn forget(&self, token_id: &str) {
        let mut map = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| e.record.token_id != token_id);
    }

    /// Forgets every token (a (re)LISTEN: revocations may have been missed).
    pub fn clear(&self) {
        let mut map = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered from the cache, and those that read the store (observability).
    pub fn hits_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CreateTokenRequest;
    use crate::crypto::TokenKind;
    use crate::vault::routes::admin::new_token;
    use crate::vault::store::AuditContext;
    use crate::vault::store::sqlite::SqliteStore;

    fn audit() -> AuditContext {
        AuditContext {
            actor: "system".into(),
            source_ip: None,
        }
    }

    async fn store_with_token(
        expires: Option<u64>,
    ) -> (tempfile::TempDir, SqliteStore, TokenRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let req = CreateTokenRequest {
            label: None,
            expires_in_seconds: expires,
        };
        let (_, record) = new_token(TokenKind::Admin, None, None, None, &req).unwrap();
        store.create_token(record.clone(), audit()).await.unwrap();
        (dir, store, record)
    }

    #[tokio::test]
    async fn a_verified_token_is_read_once() {
        let (_d, store, t) = store_with_token(None).await;
        let cache = TokenCache::new();
        let now = crate::vault::clock::now_ms();
        for _ in 0..3 {
            let r = cache.find(&store, &t.hash, now).await.unwrap().unwrap();
            assert_eq!(r.token_id, t.token_id);
        }
        assert_eq!(cache.hits_misses(), (2, 1));
        // An unknown hash is never cached.
        let other = crypto::hash_token(b"nope");
        assert!(cache.find(&store, &other, now).await.unwrap().is_none());
        assert!(cache.find(&store, &other, now).await.unwrap().is_none());
        assert_eq!(cache.hits_misses(), (2, 3));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn revoked_tokens_are_forgotten_and_never_cached() {
        let (_d, store, t) = store_with_token(None).await;
        let cache = TokenCache::new();
        let now = crate::vault::clock::now_ms();
        cache.find(&store, &t.hash, now).await.unwrap().unwrap();
        store.revoke_token(&t.token_id, now, audit()).await.unwrap();
        cache.forget(&t.token_id);
        for _ in 0..2 {
            let r = cache.find(&store, &t.hash, now).await.unwrap().unwrap();
            assert!(
                r.revoked_ms.is_some(),
                "the store's answer, not a stale entry"
            );
        }
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_revocation_is_dropped() {
        let (_d, _store, t) = store_with_token(None).await;
        let cache = TokenCache::new();
        let before = cache.generation.load(Ordering::Acquire);
        cache.forget(&t.token_id);
        cache.insert(before, t.clone());
        assert!(cache.is_empty());
        cache.insert(cache.generation.load(Ordering::Acquire), t);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn expiry_and_ttl_are_checked_on_every_hit() {
        let (_d, store, t) = store_with_token(Some(60)).await;
        let cache = TokenCache::new();
        let now = crate::vault::clock::now_ms();
        cache.find(&store, &t.hash, now).await.unwrap().unwrap();
        assert!(cache.lookup(&t.hash, now).is_some());
        // Past its expiry the entry is not used (the store's record tells the caller why).
        assert!(cache.lookup(&t.hash, now + 61_000).is_none());
        let short = TokenCache::with_ttl(Duration::ZERO);
        short.find(&store, &t.hash, now).await.unwrap().unwrap();
        assert!(short.lookup(&t.hash, now).is_none());
    }
}
