//! The verified-token cache of the hot path (design.md section 7).
//!
//! - Positive entries are keyed by a keyed BLAKE3 hash of the whole token with a random
//!   per-process key, so the cache never holds a token or its secret, and a hit proves the
//!   caller presented the exact token that was verified. Bounded in entries, with a TTL as
//!   the staleness backstop.
//! - Verify slots per lookup id: at most one argon2 verify per lookup id per interval unless
//!   the token turns out valid, so a flood of wrong secrets for one lookup id costs one
//!   verify per interval. (A valid token presented for the first time while such a flood
//!   holds the slot is refused for at most that interval.)
//! - Revoked lookup ids are remembered (revocation is forever) for twice the TTL and
//!   checked on every answer, so a revocation notice can never be undone by a racing miss.
//! - Freshness: the revocation listener reports up/down; cached answers are served while it
//!   is up, or for at most `max_staleness` after it went down. Past that the cache refuses
//!   to answer (UNAVAILABLE) rather than risk allowing a revoked token.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{future::Cache, sync::Cache as SyncCache};
use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};

use crate::{
    config::CacheConfig,
    error::Error,
    principal::Principal,
    store::TokenRecord,
    telemetry::metrics::CACHE_EVICTIONS_TOTAL,
    token::{LookupId, PlainToken},
};

/// A verified token, as cached: its row (the hash, never the secret) and its principal,
/// expanded once when it was verified rather than on every hit.
#[derive(Debug)]
pub struct Verified {
    /// The row as read when it was verified.
    pub record: TokenRecord,
    /// Who it is, scopes expanded.
    pub principal: Principal,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    key: Arc<[u8; 32]>,
    verified: Cache<[u8; 32], Arc<Verified>>,
    slots: SyncCache<LookupId, ()>,
    revoked: SyncCache<LookupId, ()>,
    /// 0 while the revocation listener is up; else the instant it went down, as
    /// milliseconds since `epoch`, plus one. An atomic: every request reads it.
    down_since: Arc<AtomicU64>,
    epoch: Instant,
    max_staleness: Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache with these settings. `listener_up` says whether revocation notices already
    /// arrive (true for the in-memory store, whose revocations are in-process).
    pub fn new(config: CacheConfig, listener_up: bool) -> Self {
        let mut key = [0u8; 32];
        UnwrapErr(SysRng).fill(&mut key);
        let ttl = Duration::from_secs(config.ttl_seconds.max(1));
        Self {
            key: Arc::new(key),
            verified: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(ttl)
                .eviction_listener(|_key, _value, cause| {
                    // Explicit removal is the drop after a listener reconnect; count the
                    // rest (capacity, expiry, replacement).
                    if cause != moka::notification::RemovalCause::Explicit {
                        metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(1);
                    }
                })
                .build(),
            slots: SyncCache::builder()
                .max_capacity(config.max_entries.max(1024))
                .time_to_live(Duration::from_millis(config.negative_ttl_ms.max(1)))
                .build(),
            revoked: SyncCache::builder()
                .max_capacity(config.max_entries.max(1024))
                .time_to_live(ttl * 2)
                .build(),
            down_since: Arc::new(AtomicU64::new(if listener_up { 0 } else { 1 })),
            epoch: Instant::now(),
            max_staleness: Duration::from_secs(config.max_staleness_seconds),
        }
    }

    /// The cache key of a token: keyed BLAKE3 of the whole token.
    pub fn key_of(&self, token: &PlainToken) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, token.expose().as_bytes()).as_bytes()
    }

    /// Whether cached answers may be served now.
    pub fn is_fresh(&self) -> bool {
        match self.down_since.load(Ordering::Acquire) {
            0 => true,
            since => self.millis() - (since - 1) < self.max_staleness.as_millis() as u64,
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A verified token, if cached.
    pub async fn get(&self, key: &[u8; 32]) -> Option<Arc<Verified>> {
        self.verified.get(key).await
    }

    /// The verified token for `key`, loading it with `load` on a miss; concurrent misses
    /// for one key share one load, and its error.
    pub async fn get_or_load<F>(&self, key: [u8; 32], load: F) -> Result<Arc<Verified>, Error>
    where
        F: Future<Output = Result<Arc<Verified>, Error>>,
    {
        self.verified
            .try_get_with(key, load)
            .await
            .map_err(|e| (*e).clone())
    }

    /// Takes the verify slot of a lookup id; false if a verify ran within the interval.
    pub fn take_verify_slot(&self, lookup_id: &LookupId) -> bool {
        self.slots.entry(lookup_id.clone()).or_insert(()).is_fresh()
    }

    /// Frees the verify slot (the token was valid).
    pub fn release_verify_slot(&self, lookup_id: &LookupId) {
        self.slots.invalidate(lookup_id);
    }

    /// Whether a revocation of this lookup id was announced.
    pub fn is_revoked(&self, lookup_id: &LookupId) -> bool {
        self.revoked.contains_key(lookup_id)
    }

    /// A revocation notice.
    pub fn revoked(&self, lookup_id: LookupId) {
        self.revoked.insert(lookup_id, ());
    }

    /// The revocation listener is (again) receiving notices. Anything revoked while it was
    /// away went unheard, so every cached entry is dropped.
    pub fn listener_connected(&self) {
        self.verified.invalidate_all();
        self.down_since.store(0, Ordering::Release);
    }

    /// The revocation listener lost its connection.
    pub fn listener_disconnected(&self) {
        // Only the first loss counts: staleness runs from when notices stopped.
        let _ = self.down_since.compare_exchange(
            0,
            self.millis() + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Verified tokens held (approximate).
    pub fn entry_count(&self) -> u64 {
        self.verified.entry_count()
    }
}
