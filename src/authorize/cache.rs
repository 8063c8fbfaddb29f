//! The verified-token cache of the hot path (design.md section 7).
//!
//! - Positive entries are keyed by a keyed BLAKE3 hash of the whole token with a random
//!   per-process key, so the cache never holds a token or its secret, and a hit proves the
//!   caller presented the exact token that was verified: a secret is proven once per
//!   replica. An entry holds only what a decision needs ([`Entry`]); scope sets are shared
//!   between entries. The store is `quick_cache` (about 40 bytes of bookkeeping per entry,
//!   against about 340 for moka), bounded in entries, with a long idle bound for memory
//!   (`cache.idle_seconds`: entries unused that long are swept), which is not a correctness
//!   mechanism. Concurrent misses for one token share one load (moka's `try_get_with`
//!   over the loads in flight only).
//! - Changes: a change to a token (heard through NOTIFY, polled from the change log, or made
//!   on this replica) is recorded by lookup id with a local stamp. An entry loaded before
//!   the change is *refreshed* on its next use: its row is re-read (revoked, expiry, owner,
//!   scopes), never argon2 again. Only a changed secret hash sends it back to argon2.
//! - Wrong secrets: a negative entry keyed like the positive ones (the whole presented
//!   token) makes a repeated wrong secret cost one verify per `negative_ttl_ms`, whoever
//!   sends it and however often. Different wrong secrets for one lookup id share a budget
//!   of verifies per interval; past it, unproven tokens with that lookup id are answered
//!   RESOURCE_EXHAUSTED (retryable), never "unknown": a stranger who knows a lookup id can
//!   at worst delay the right secret while flooding with fresh secrets, never have it
//!   declared invalid, and a flood of one forged token cannot delay it at all.
//! - Freshness: cached answers are served while the revocation listener is up, or while the
//!   change-log poll succeeded within `max_staleness`. Past that the cache refuses to
//!   answer (UNAVAILABLE) rather than risk allowing a revoked token.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use moka::{
    future::Cache,
    ops::compute::{CompResult, Op},
    sync::Cache as SyncCache,
};
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter, sync::Cache as QuickCache};
use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};
use uuid::Uuid;

use crate::{
    config::CacheConfig,
    error::Error,
    principal::Principal,
    restriction::Restrictions,
    scope::ScopeSet,
    store::{TokenChange, TokenRecord, changes::ChangeSink},
    telemetry::metrics::CACHE_EVICTIONS_TOTAL,
    token::{
        LookupId, PlainToken,
        fields::{Owner, OwnerId},
        status::TokenStatus,
    },
};

/// Changes remembered by lookup id before the memory is reset (then every entry is
/// refreshed once: a store read each, no argon2). Changes are rare next to tokens.
const MAX_TRACKED_CHANGES: usize = 65_536;

/// Distinct scope sets shared between entries; a fleet has few (presets, a handful of
/// custom combinations). Past the bound, sets are simply not shared.
const MAX_SCOPE_SETS: u64 = 4096;

/// The cache key: keyed BLAKE3 of the whole token, truncated to 128 bits. Under a random
/// per-process key an attacker cannot aim at an entry; 128 bits leave a chance of about
/// 2^-108 per forged token against a million entries, and halve what every entry carries.
pub type Key = u128;

/// A verified token as cached: only what a decision needs (about 120 bytes with its owner
/// text, plus the cache's own bookkeeping). Restrictions ride here too, so a restricted
/// token's request needs no store read either.
#[derive(Debug)]
pub struct Entry {
    /// Token id; a refresh re-reads the row by it.
    pub token_id: Uuid,
    /// Keyed digest of the lookup id: how changes (which name lookup ids) find the entry.
    /// A collision only costs a needless refresh.
    lookup_tag: u64,
    /// `org_id` then `user_id`, in one allocation instead of two strings.
    owner: Box<str>,
    org_len: u32,
    /// Granted scopes, implications expanded; shared with every entry that has the same.
    pub scopes: Arc<ScopeSet>,
    /// Expiry, if any.
    expires_at: Micros,
    /// The row's revocation time when read. It may lie in the future (a rotation overlap):
    /// the entry is judged against the clock on every use, so the old token stops working
    /// at that instant on every replica that read the row, with no timer anywhere.
    revoked_at: Micros,
    /// Allowed networks and models; `None` (8 bytes, nothing to check) for the
    /// unrestricted tokens that are the vast majority.
    pub restrictions: Option<Arc<Restrictions>>,
    /// A digest of the stored hash the secret was proven against: a refresh that finds
    /// another hash (a rotated secret) must not keep the old proof.
    hash_tag: u64,
    /// The change stamp taken before the row was read; a change with a later stamp means
    /// the row may be older than the change.
    stamp: u64,
    /// Seconds since the cache's epoch when it was last used, for the idle sweep.
    last_used: AtomicU32,
}

/// An optional instant in 8 bytes instead of `Option<DateTime<Utc>>`'s 16: microseconds
/// since the Unix epoch (the precision both stores keep, so nothing is lost), `i64::MIN`
/// for none. Two per entry, times a million entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Micros(i64);

impl Micros {
    const NONE: i64 = i64::MIN;

    fn new(at: Option<DateTime<Utc>>) -> Self {
        Self(at.map_or(Self::NONE, |at| at.timestamp_micros()))
    }

    fn get(self) -> Option<DateTime<Utc>> {
        if self.0 == Self::NONE {
            None
        } else {
            DateTime::from_timestamp_micros(self.0)
        }
    }
}

impl Entry {
    /// Expiry, if any.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at.get()
    }

    /// The row's revocation time when read, if any (see the field).
    pub fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.revoked_at.get()
    }

    /// The owner.
    pub fn owner(&self) -> Owner {
        let (org, user) = self.owner.split_at(self.org_len as usize);
        Owner {
            org_id: OwnerId::from_stored(org.to_owned()),
            user_id: OwnerId::from_stored(user.to_owned()),
        }
    }

    /// The principal, for an answer.
    pub fn principal(&self) -> Principal {
        Principal {
            token_id: self.token_id,
            owner: self.owner(),
            scopes: ScopeSet::clone(&self.scopes),
            expires_at: self.expires_at(),
            restrictions: self.restrictions.clone(),
        }
    }

    /// Status at `now`, from the entry alone.
    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::at(now, self.expires_at(), self.revoked_at())
    }

    /// Whether this entry was built from a row with this hash.
    pub fn proves(&self, record: &TokenRecord) -> bool {
        self.hash_tag == hash_tag(record)
    }
}

fn hash_tag(record: &TokenRecord) -> u64 {
    let digest = blake3::hash(record.secret_hash.as_str().as_bytes());
    u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    key: [u8; 32],
    verified: QuickCache<Key, Arc<Entry>, UnitWeighter, DefaultHashBuilder, CountEvictions>,
    /// Loads in flight, so concurrent misses for one token share one load and its error;
    /// an entry leaves as soon as its load is done.
    loading: Cache<Key, Arc<Entry>>,
    idle: Duration,
    /// When the last idle sweep ran, in seconds since `epoch`.
    swept_at: AtomicU64,
    /// Tokens (keyed hash) recently found wrong or unknown.
    negative: SyncCache<Key, ()>,
    /// Verifies started per lookup id in the current interval (counted down on a match).
    /// Lookup ids without a count are not in the map.
    budget: SyncCache<LookupId, u32>,
    wrong_secret_budget: u32,
    scope_sets: SyncCache<Vec<String>, Arc<ScopeSet>>,
    /// Lookup-id tag -> stamp of its latest change.
    changes: RwLock<HashMap<u64, u64>>,
    /// Every entry with a stamp below this needs refreshing (raised when `changes` resets).
    floor: AtomicU64,
    stamps: AtomicU64,
    /// 0 while the revocation listener is up; else the instant it went down, as
    /// milliseconds since `epoch`, plus one. Atomics: every request reads them.
    down_since: AtomicU64,
    /// The last successful change-log poll, as milliseconds since `epoch` (0: none yet, so
    /// start-up gets `max_staleness` of grace, as the listener does).
    polled_at: AtomicU64,
    epoch: Instant,
    max_staleness: Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.verified.len())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache with these settings. `listener_up` says whether revocation notices already
    /// arrive (true for the in-memory store, whose revocations are in-process).
    pub fn new(config: CacheConfig, listener_up: bool) -> Self {
        Self::with_epoch(config, listener_up, Instant::now())
    }

    /// A cache whose clock started at `epoch` (tests age entries with an earlier one).
    fn with_epoch(config: CacheConfig, listener_up: bool, epoch: Instant) -> Self {
        let mut key = [0u8; 32];
        UnwrapErr(SysRng).fill(&mut key);
        let interval = Duration::from_millis(config.negative_ttl_ms.max(1));
        let capacity = config.max_entries.max(1);
        Self {
            inner: Arc::new(Inner {
                key,
                verified: QuickCache::with(
                    usize::try_from(capacity).unwrap_or(usize::MAX),
                    capacity,
                    UnitWeighter,
                    DefaultHashBuilder::default(),
                    CountEvictions,
                ),
                loading: Cache::builder()
                    .max_capacity(capacity)
                    // A backstop only: every load removes its own entry when it is done.
                    .time_to_live(Duration::from_secs(10))
                    .build(),
                idle: Duration::from_secs(config.idle().max(1)),
                swept_at: AtomicU64::new(0),
                negative: SyncCache::builder()
                    .max_capacity(config.max_entries.max(1024))
                    .time_to_live(interval)
                    .build(),
                budget: SyncCache::builder()
                    .max_capacity(config.max_entries.max(1024))
                    .time_to_live(interval)
                    .build(),
                wrong_secret_budget: config.wrong_secret_budget.max(1),
                scope_sets: SyncCache::new(MAX_SCOPE_SETS),
                changes: RwLock::new(HashMap::new()),
                floor: AtomicU64::new(0),
                stamps: AtomicU64::new(1),
                down_since: AtomicU64::new(if listener_up { 0 } else { 1 }),
                polled_at: AtomicU64::new(0),
                epoch,
                max_staleness: Duration::from_secs(config.max_staleness_seconds),
            }),
        }
    }

    /// The cache key of a token: keyed BLAKE3 of the whole token.
    pub fn key_of(&self, token: &PlainToken) -> Key {
        let digest = blake3::keyed_hash(&self.inner.key, token.expose().as_bytes());
        u128::from_le_bytes(digest.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    fn lookup_tag(&self, lookup_id: &LookupId) -> u64 {
        // Keyed, so nobody can pick lookup ids that collide with a victim's.
        let mut hasher = blake3::Hasher::new_keyed(&self.inner.key);
        hasher
            .update(b"lookup id\0")
            .update(lookup_id.as_str().as_bytes());
        u64::from_le_bytes(
            hasher.finalize().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    }

    /// Whether cached answers may be served now: the listener is up, or the change log was
    /// read within `max_staleness`.
    pub fn is_fresh(&self) -> bool {
        let inner = &self.inner;
        let staleness = inner.max_staleness.as_millis() as u64;
        let now = self.millis();
        match inner.down_since.load(Ordering::Acquire) {
            0 => true,
            since if now - (since - 1) < staleness => true,
            _ => now.saturating_sub(inner.polled_at.load(Ordering::Acquire)) < staleness,
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A stamp for a row read about to start (see [`Entry`]).
    pub fn stamp(&self) -> u64 {
        self.inner.stamps.fetch_add(1, Ordering::AcqRel)
    }

    /// A cached entry, if any.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let entry = self.inner.verified.get(key)?;
        let now = self.seconds();
        let last = entry.last_used.load(Ordering::Relaxed);
        // Strictly more: with whole seconds, an entry lives between `idle` and `idle + 1` s.
        if u64::from(now.saturating_sub(last)) > self.inner.idle.as_secs() {
            // Idle past the bound but not swept yet: gone, as it would be after the sweep.
            self.inner.verified.remove(key);
            metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(1);
            return None;
        }
        // Written only when the second changed: a hot entry's cache line stays shared.
        if last != now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        Some(entry)
    }

    fn seconds(&self) -> u32 {
        u32::try_from(self.inner.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Drops entries unused for `cache.idle_seconds`; at most every quarter of that (and at
    /// least every minute), however often it is called.
    pub fn sweep_idle(&self) {
        let inner = &self.inner;
        let now = self.seconds();
        let every = (inner.idle.as_secs() / 4).clamp(1, 60);
        let last = inner.swept_at.load(Ordering::Acquire);
        if u64::from(now).saturating_sub(last) < every
            || inner
                .swept_at
                .compare_exchange(last, u64::from(now), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let idle = u32::try_from(inner.idle.as_secs()).unwrap_or(u32::MAX);
        inner.verified.retain(|_, entry| {
            let fresh = now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) <= idle;
            if !fresh {
                metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(1);
            }
            fresh
        });
    }

    /// Whether a change was recorded for the entry's token after its row was read.
    pub fn needs_refresh(&self, entry: &Entry) -> bool {
        if self.inner.floor.load(Ordering::Acquire) > entry.stamp {
            return true;
        }
        let changes = self.inner.changes.read().unwrap_or_else(|p| p.into_inner());
        changes
            .get(&entry.lookup_tag)
            .is_some_and(|&changed| changed > entry.stamp)
    }

    /// The entry for `key`, loading it with `load` on a miss; concurrent misses for one
    /// key share one load, and its error.
    pub async fn get_or_load<F>(&self, key: Key, load: F) -> Result<Arc<Entry>, Error>
    where
        F: Future<Output = Result<Arc<Entry>, Error>>,
    {
        let inner = &self.inner;
        let loaded = inner
            .loading
            .try_get_with(key, async {
                // A load that finished between this caller's miss and now has already
                // filled `verified` (it does so before leaving `loading`): use it.
                match inner.verified.get(&key) {
                    Some(done) if !self.needs_refresh(&done) => Ok(done),
                    _ => load.await,
                }
            })
            .await
            .map_err(|e| (*e).clone());
        let entry = loaded?;
        // Every waiter does this; the first one to get here moves the entry over. Into
        // `verified` first, out of `loading` second: a miss in between finds one or the
        // other, never neither (which cost a second argon2 verify).
        inner.verified.insert(key, entry.clone());
        inner.loading.invalidate(&key).await;
        Ok(entry)
    }

    /// Replaces an entry after a refresh.
    pub fn put(&self, key: Key, entry: Arc<Entry>) {
        self.inner.verified.insert(key, entry);
    }

    /// Drops an entry (its row vanished or its hash changed).
    pub fn remove(&self, key: &Key) {
        self.inner.verified.remove(key);
    }

    /// An entry from a row read after `stamp` was taken; `scopes` expanded by the caller
    /// (only on the first sight of a scope list: sets are shared).
    pub fn entry(
        &self,
        record: &TokenRecord,
        stamp: u64,
        expand: impl FnOnce(&[String]) -> ScopeSet,
    ) -> Entry {
        let scopes = self
            .inner
            .scope_sets
            .get_with_by_ref(&record.scopes, || Arc::new(expand(&record.scopes)));
        let org = record.owner.org_id.as_str();
        Entry {
            token_id: record.id,
            lookup_tag: self.lookup_tag(&record.lookup_id),
            owner: format!("{org}{}", record.owner.user_id.as_str()).into_boxed_str(),
            org_len: u32::try_from(org.len()).expect("owner ids are short"),
            scopes,
            expires_at: Micros::new(record.expires_at),
            revoked_at: Micros::new(record.revoked_at),
            restrictions: (!record.restrictions.is_empty())
                .then(|| Arc::new(record.restrictions.clone())),
            hash_tag: hash_tag(record),
            stamp,
            last_used: AtomicU32::new(self.seconds()),
        }
    }

    /// Whether this exact token was found wrong or unknown within the interval.
    pub fn is_known_wrong(&self, key: &Key) -> bool {
        self.inner.negative.contains_key(key)
    }

    /// This exact token is wrong or unknown: its next tries within the interval cost
    /// nothing.
    pub fn known_wrong(&self, key: Key) {
        self.inner.negative.insert(key, ());
    }

    /// Whether the lookup id's budget for this interval is spent (a peek: saves the store
    /// read of a token that could not be verified anyway).
    pub fn verify_budget_spent(&self, lookup_id: &LookupId) -> bool {
        self.inner
            .budget
            .get(lookup_id)
            .is_some_and(|used| used >= self.inner.wrong_secret_budget)
    }

    /// Takes one verify of the lookup id's budget for this interval; false when it is spent.
    /// Each verify taken or given back rewrites the count, and the interval (the map's
    /// time-to-live) runs from the last write: a lookup id gets at most
    /// `wrong_secret_budget` unproven verifies per interval, however they are spaced.
    pub fn take_verify(&self, lookup_id: &LookupId) -> bool {
        let budget = self.inner.wrong_secret_budget;
        let taken = self
            .inner
            .budget
            .entry_by_ref(lookup_id)
            .and_compute_with(|used| match used.map_or(0, |e| e.into_value()) {
                used if used < budget => Op::Put(used + 1),
                _ => Op::Nop,
            });
        matches!(taken, CompResult::Inserted(_) | CompResult::ReplacedWith(_))
    }

    /// Gives a verify back: it proved the right secret, or it never ran. A count back at
    /// zero leaves the map, so the first use of every valid token (nearly all verifies)
    /// leaves nothing behind: the map holds only lookup ids with wrong secrets or verifies
    /// in flight.
    pub fn return_verify(&self, lookup_id: &LookupId) {
        self.inner
            .budget
            .entry_by_ref(lookup_id)
            .and_compute_with(|used| match used.map(|e| e.into_value()) {
                Some(used) if used > 1 => Op::Put(used - 1),
                Some(_) => Op::Remove,
                // The interval rolled over in between: nothing to give back.
                None => Op::Nop,
            });
    }

    /// A token changed (revoked here, or heard of): every entry loaded before now is
    /// refreshed on its next use.
    pub fn revoked(&self, lookup_id: LookupId) {
        self.changed(&lookup_id);
    }

    fn changed(&self, lookup_id: &LookupId) {
        let tag = self.lookup_tag(lookup_id);
        let stamp = self.stamp();
        let mut changes = self
            .inner
            .changes
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if changes.len() >= MAX_TRACKED_CHANGES && !changes.contains_key(&tag) {
            // Forget them all, and make every older entry refresh instead.
            changes.clear();
            self.inner.floor.fetch_max(stamp, Ordering::AcqRel);
        }
        changes.insert(tag, stamp);
    }

    /// The revocation listener is (again) receiving notices. What it missed meanwhile is in
    /// the change log, which the poller reads (nudged by the caller): no cache drop.
    pub fn listener_connected(&self) {
        self.inner.down_since.store(0, Ordering::Release);
    }

    /// The revocation listener lost its connection.
    pub fn listener_disconnected(&self) {
        // Only the first loss counts: staleness runs from when notices stopped.
        let _ = self.inner.down_since.compare_exchange(
            0,
            self.millis() + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Verified tokens held.
    pub fn entry_count(&self) -> u64 {
        self.inner.verified.len() as u64
    }
}

/// Counts capacity evictions of the verified-token cache.
#[derive(Debug, Clone, Copy)]
struct CountEvictions;

impl Lifecycle<Key, Arc<Entry>> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: Key, _entry: Arc<Entry>) {
        metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(1);
    }
}

impl ChangeSink for TokenCache {
    fn changed(&self, change: &TokenChange) {
        TokenCache::changed(self, &change.lookup_id);
    }

    fn polled(&self, _position: u64) {
        self.inner.polled_at.store(self.millis(), Ordering::Release);
    }

    fn resync(&self) {
        // Every entry loaded so far refreshes once on its next use (a store read each, no
        // argon2): at start-up that is a handful.
        let stamp = self.stamp();
        self.inner.floor.fetch_max(stamp, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::token::hash::SecretHash;

    fn config() -> CacheConfig {
        CacheConfig {
            max_entries: 2_000_000,
            ..CacheConfig::default()
        }
    }

    fn record(n: usize) -> TokenRecord {
        let token = PlainToken::generate();
        TokenRecord {
            id: Uuid::new_v4(),
            lookup_id: token.lookup_id().clone(),
            secret_hash: SecretHash::from_stored(format!(
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$h{n:042}"
            )),
            name: "CI pipeline".into(),
            description: "d".repeat(1000),
            scopes: vec!["user:read".into(), "user:write".into()],
            owner: Owner {
                org_id: OwnerId::from_stored(format!("org_{:08}", n / 10)),
                user_id: OwnerId::from_stored(format!("user_{n:010}")),
            },
            created_at: Utc::now(),
            created_by: "cli".into(),
            expires_at: Some(Utc::now() + chrono::Duration::days(30)),
            last_used_at: None,
            revoked_at: None,
            replaced_by: None,
            revocation_reason: None,
            restrictions: Restrictions::none(),
        }
    }

    fn scopes(stored: &[String]) -> ScopeSet {
        // Any expansion will do here; the catalog's is tested with the catalog.
        let catalog = crate::scope::Catalog::default();
        catalog.expand(&catalog.from_stored(stored))
    }

    #[test]
    fn a_change_after_the_read_began_needs_a_refresh_and_one_before_does_not() {
        let cache = TokenCache::new(config(), true);
        let r = record(1);
        cache.revoked(r.lookup_id.clone());
        let entry = cache.entry(&r, cache.stamp(), scopes);
        assert!(!cache.needs_refresh(&entry), "the read saw that change");
        cache.revoked(r.lookup_id.clone());
        assert!(cache.needs_refresh(&entry));
        let other = cache.entry(&record(2), cache.stamp(), scopes);
        assert!(!cache.needs_refresh(&other), "only the changed token");
        let fresh = cache.entry(&r, cache.stamp(), scopes);
        assert!(!cache.needs_refresh(&fresh));
        cache.resync();
        assert!(cache.needs_refresh(&fresh) && cache.needs_refresh(&other));
        assert!(!cache.needs_refresh(&cache.entry(&r, cache.stamp(), scopes)));
    }

    #[test]
    fn entries_share_one_scope_set_and_prove_only_their_hash() {
        let cache = TokenCache::new(config(), true);
        let (a, b) = (record(1), record(2));
        let (ea, eb) = (cache.entry(&a, 1, scopes), cache.entry(&b, 2, scopes));
        assert!(Arc::ptr_eq(&ea.scopes, &eb.scopes));
        assert_eq!(ea.owner(), a.owner);
        assert_eq!(ea.principal().owner, a.owner);
        assert!(ea.proves(&a));
        let rotated = TokenRecord {
            secret_hash: SecretHash::from_stored("$argon2id$v=19$m=8,t=1,p=1$x$y".into()),
            ..a
        };
        assert!(!ea.proves(&rotated));
    }

    #[test]
    fn the_verify_budget_is_spent_by_wrong_secrets_and_given_back_by_right_ones() {
        let cache = TokenCache::new(
            CacheConfig {
                wrong_secret_budget: 2,
                negative_ttl_ms: 3_600_000,
                ..config()
            },
            true,
        );
        let id = record(1).lookup_id;
        assert!(cache.take_verify(&id));
        cache.return_verify(&id); // the right secret
        assert!(cache.take_verify(&id));
        assert!(cache.take_verify(&id));
        assert!(cache.verify_budget_spent(&id));
        assert!(!cache.take_verify(&id));
        assert!(!cache.verify_budget_spent(&record(2).lookup_id));
    }

    #[test]
    fn a_right_secret_leaves_nothing_in_the_budget_map() {
        let cache = TokenCache::new(
            CacheConfig {
                negative_ttl_ms: 3_600_000,
                ..config()
            },
            true,
        );
        // The first use of a valid token: one verify taken, then given back.
        let valid = record(1).lookup_id;
        assert!(cache.take_verify(&valid));
        cache.return_verify(&valid);
        // A wrong secret stays counted.
        let attacked = record(2).lookup_id;
        assert!(cache.take_verify(&attacked));
        // Two verifies in flight for one id, one given back: one stays counted.
        let busy = record(3).lookup_id;
        assert!(cache.take_verify(&busy));
        assert!(cache.take_verify(&busy));
        cache.return_verify(&busy);
        // A give-back with nothing counted (the interval rolled over) adds nothing.
        cache.return_verify(&record(4).lookup_id);
        cache.inner.budget.run_pending_tasks();
        assert_eq!(cache.inner.budget.get(&valid), None);
        assert_eq!(cache.inner.budget.get(&attacked), Some(1));
        assert_eq!(cache.inner.budget.get(&busy), Some(1));
        assert_eq!(cache.inner.budget.entry_count(), 2);
    }

    #[test]
    fn an_entry_stays_compact() {
        // The layout RSS per cached token rests on (docs/benchmarks.md): an `Arc<Entry>` of
        // 112 bytes is one 128-byte allocation. Adding a field is fine; this says what it costs.
        assert!(
            std::mem::size_of::<Entry>() <= 96,
            "{}",
            std::mem::size_of::<Entry>()
        );
        let r = record(1);
        let entry = TokenCache::new(config(), true).entry(&r, 1, scopes);
        assert_eq!(
            entry.expires_at(),
            r.expires_at.map(crate::store::truncate_micros)
        );
        assert_eq!(entry.revoked_at(), None);
    }

    #[test]
    fn entries_unused_for_the_idle_bound_are_swept_and_used_ones_kept() {
        let started = Instant::now()
            .checked_sub(Duration::from_secs(100))
            .unwrap();
        let cache = TokenCache::with_epoch(
            CacheConfig {
                idle_seconds: 10,
                ..config()
            },
            true,
            started,
        );
        let (a, b) = (record(1), record(2));
        cache.put(1, Arc::new(cache.entry(&a, cache.stamp(), scopes)));
        cache.put(2, Arc::new(cache.entry(&b, cache.stamp(), scopes)));
        // Entry 1 was last used at the clock's start, 100 s ago; entry 2 just now.
        cache.get(&1).unwrap().last_used.store(0, Ordering::Relaxed);
        cache.get(&2).unwrap();
        cache.sweep_idle();
        assert!(cache.get(&1).is_none(), "idle entry swept");
        assert!(cache.get(&2).is_some(), "used entry kept");
    }

    #[test]
    fn answers_stay_fresh_on_the_poll_alone_and_stop_without_it() {
        let cache = TokenCache::new(
            CacheConfig {
                max_staleness_seconds: 0,
                ..config()
            },
            false,
        );
        assert!(!cache.is_fresh(), "neither listener nor poll");
        cache.listener_connected();
        assert!(cache.is_fresh());
        cache.listener_disconnected();
        assert!(!cache.is_fresh());
    }

    /// A rotated token's entry keeps the end of its overlap as a time: it answers ACTIVE
    /// before it and REVOKED from it on, with no refresh and no timer.
    #[test]
    fn an_entry_read_during_an_overlap_turns_revoked_at_its_end() {
        let cache = TokenCache::new(config(), true);
        let now = Utc::now();
        let ends = now + chrono::Duration::seconds(2);
        let mut row = record(1);
        row.revoked_at = Some(ends);
        let entry = cache.entry(&row, cache.stamp(), scopes);
        assert_eq!(entry.status_at(now), TokenStatus::Active);
        assert_eq!(entry.status_at(ends), TokenStatus::Revoked);
        assert_eq!(entry.principal().token_id, row.id);
    }

    /// RSS per cached token. Not a test of speed and not run by default:
    /// `cargo test --release --lib rss_per_cached_token -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement: fills the cache with 1,000,000 entries"]
    async fn rss_per_cached_token() {
        fn rss_bytes() -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
            pages * 4096
        }
        for target in [100_000u64, 1_000_000] {
            // Sized for the target, as an operator would set cache.max_entries.
            let cache = TokenCache::new(
                CacheConfig {
                    max_entries: target,
                    ..config()
                },
                true,
            );
            let base = rss_bytes();
            for n in 0..target {
                let mut key = [0u8; 16];
                UnwrapErr(SysRng).fill(&mut key);
                // The row is dropped at once: the entry keeps only what decisions need.
                let entry = cache.entry(&record(n as usize), cache.stamp(), scopes);
                cache.put(u128::from_le_bytes(key), Arc::new(entry));
            }
            let per = rss_bytes().saturating_sub(base) / cache.entry_count().max(1);
            println!(
                "{target} inserted, {} held: {per} bytes of RSS per cached token",
                cache.entry_count()
            );
        }
    }
}
