//! The decision path shared by Authorize, WhoAmI, TokenService caller authentication and
//! Envoy's Check (design.md sections 6 and 7): parse -> store read by lookup id -> argon2
//! verify on a bounded pool -> revoked / expired -> scopes -> last-used noted in memory.
//! A cached token whose row changed is refreshed by a store read, never a second verify.

pub mod cache;
pub mod fairness;
pub mod last_used;
mod verify_pool;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use self::verify_pool::{VerifyPool, VerifyPoolOptions};
use self::{
    cache::{Entry, Key, TokenCache},
    fairness::{FairnessLimits, Limited, Source},
    last_used::LastUsed,
};
use crate::{
    error::Error,
    principal::Principal,
    scope::{Catalog, ScopeMatch, ScopeSet},
    store::{TokenRecord, TokenStore},
    telemetry::{
        self,
        metrics::{
            ARGON2_VERIFIES_TOTAL, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, CACHE_REFRESHES_TOTAL,
            LIMITED_TOTAL, NEGATIVE_CACHE_HITS_TOTAL, VERIFY_BUDGET_EXHAUSTED_TOTAL, limits,
        },
    },
    token::{
        PlainToken,
        hash::{HashError, SecretHash, TokenHasher, Verification},
        status::TokenStatus,
    },
};

/// The cold path's error for a token that is not valid (no such lookup id, a wrong secret,
/// an unreadable hash): shared through the cache like any error, then turned into
/// [`Denial::Unknown`] by [`Authorizer::authenticate`].
const UNKNOWN_TOKEN: Error = Error::Unauthenticated("unknown token");

/// Many different secrets for one lookup id within the interval. The presented one may be
/// the right one: a retryable refusal, never "unknown".
fn budget_spent() -> Error {
    metrics::counter!(VERIFY_BUDGET_EXHAUSTED_TOTAL).increment(1);
    Error::ResourceExhausted("too many verifications for this token; try again")
}

/// The source is in a failed-verify cool-down and the token is not verified here: no cold
/// work for it until the cool-down ends. Retryable, never "unknown": the token may be valid.
fn source_limited(limited: Limited) -> Error {
    Error::RateLimited {
        message: "too many failed token verifications from this source",
        retry_after: limited.retry_after,
    }
}

/// Too many cold store reads in flight: shed at once, like admission does.
fn cold_reads_full() -> Error {
    metrics::counter!(LIMITED_TOTAL, "limit" => limits::COLD_READS).increment(1);
    Error::ResourceExhausted("too many token lookups in flight; retry with backoff")
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Not a token (prefix, length, alphabet, checksum), or no token at all.
    Malformed,
    /// Well-formed, but no such token or a wrong secret.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Valid, without the required scopes.
    InsufficientScope {
        /// Who it is.
        principal: Box<Principal>,
        /// The required scopes it lacks.
        missing: Vec<String>,
    },
}

impl Denial {
    /// A short stable name, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::InsufficientScope { .. } => "insufficient_scope",
        }
    }
}

/// A valid token: who it is, and its cache entry.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal: Principal,
    /// The cache entry, shared with the cache.
    pub entry: Arc<Entry>,
}

/// The decision on one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Valid, with the scopes.
    Allow(Principal),
    /// Refused.
    Deny(Denial),
}

/// Decides on tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    store: Arc<dyn TokenStore>,
    catalog: Arc<Catalog>,
    hasher: TokenHasher,
    pool: VerifyPool,
    last_used: LastUsed,
    cache: TokenCache,
    fairness: FairnessLimits,
    cold_reads: Arc<Semaphore>,
}

/// The bounds of the cold path besides the verify pool.
#[derive(Debug, Clone)]
pub struct ColdLimits {
    /// Per-source failed-verify limits (and the per-caller create limit, shared with the
    /// token manager).
    pub fairness: FairnessLimits,
    /// Store reads of tokens not in the cache in flight at once, at most.
    pub max_cold_reads: usize,
}

impl Authorizer {
    /// An authorizer over `store`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        catalog: Arc<Catalog>,
        hasher: TokenHasher,
        pool: VerifyPool,
        last_used: LastUsed,
        cache: TokenCache,
        limits: ColdLimits,
    ) -> Self {
        Self {
            store,
            catalog,
            hasher,
            pool,
            last_used,
            cache,
            fairness: limits.fairness,
            cold_reads: Arc::new(Semaphore::new(limits.max_cold_reads.max(1))),
        }
    }

    /// The fairness limits (swept by the server's upkeep).
    pub fn fairness(&self) -> &FairnessLimits {
        &self.fairness
    }

    /// The argon2 pool.
    pub fn verify_pool(&self) -> &VerifyPool {
        &self.pool
    }

    /// The verified-token cache (revocation notices go here).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The scope catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Resolves required scope names; unknown ones are an INVALID_ARGUMENT on `field`.
    pub fn required_scopes<S: AsRef<str>>(
        &self,
        field: &str,
        names: &[S],
    ) -> Result<ScopeSet, Error> {
        self.catalog
            .resolve(names)
            .map_err(|unknown| Error::InvalidArgument(unknown.violations(field, 0)))
    }

    /// Authenticates a credential (a raw token or an `Authorization` value). `Err` only for
    /// service trouble (store unreachable, verify pool full, a lookup id's verify budget
    /// spent, revocations unheard for too long): never for a bad token.
    pub async fn authenticate(
        &self,
        credential: &str,
    ) -> Result<Result<Authenticated, Denial>, Error> {
        self.authenticate_from(credential, None).await
    }

    /// [`Self::authenticate`] for a request from `source`: its failures (malformed, unknown,
    /// a wrong secret; not a repeat the negative cache answers) count against the source,
    /// and while the source is in a cool-down its tokens that are not verified on
    /// this replica get no store read and no argon2 (`Err(RateLimited)`). Cache hits are
    /// decided first: a verified token works from any source.
    #[tracing::instrument(name = "authenticate", skip_all, fields(token.id, cache))]
    pub async fn authenticate_from(
        &self,
        credential: &str,
        source: Option<&Source>,
    ) -> Result<Result<Authenticated, Denial>, Error> {
        let Ok(token) = PlainToken::parse_credential(credential) else {
            self.fairness.failed(source);
            return Ok(Err(Denial::Malformed));
        };
        if !self.cache.is_fresh() {
            // Neither revocation notices nor the change log for longer than max_staleness:
            // fail closed.
            return Err(Error::Unavailable);
        }
        let key = self.cache.key_of(&token);
        let span = tracing::Span::current();
        // Whether this exact token was already found wrong (set on a miss).
        let mut repeat = false;
        let entry = match self.cache.get(&key) {
            Some(hit) => {
                span.record("cache", "hit");
                metrics::counter!(CACHE_HITS_TOTAL).increment(1);
                if self.cache.needs_refresh(&hit) {
                    Box::pin(self.refresh(key, &hit, token)).await
                } else {
                    Ok(hit)
                }
            }
            None => {
                span.record("cache", "miss");
                metrics::counter!(CACHE_MISSES_TOTAL).increment(1);
                // A repeated wrong token is still called what it is (the negative cache,
                // in `cold`): that costs nothing, so it neither waits for the cool-down nor
                // counts as a failure (a client retrying one stale token must not put its
                // source's new tokens on hold).
                repeat = self.cache.is_known_wrong(&key);
                if let Some(limited) = self.fairness.cooling(source)
                    && !repeat
                {
                    self.fairness.refused(source);
                    return Err(source_limited(limited));
                }
                // Boxed: the cold path's state machine is large, and moving it with every
                // warm request's future cost more than the allocation on a miss.
                Box::pin(self.cold(key, token)).await
            }
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(Error::Unauthenticated(_)) => {
                if !repeat {
                    self.fairness.failed(source);
                }
                return Ok(Err(Denial::Unknown));
            }
            Err(e) => return Err(e),
        };
        span.record("token.id", tracing::field::display(entry.token_id));
        telemetry::note_token_id(entry.token_id);
        Ok(self.judge(entry, Utc::now()))
    }

    /// A miss: the negative cache, else one shared load per token.
    async fn cold(&self, key: Key, token: PlainToken) -> Result<Arc<Entry>, Error> {
        if self.cache.is_known_wrong(&key) {
            metrics::counter!(NEGATIVE_CACHE_HITS_TOTAL).increment(1);
            return Err(UNKNOWN_TOKEN);
        }
        // Detached: a lookup that has begun finishes and fills the cache even when the call
        // that started it is dropped at its deadline (transport::admission), so the retry
        // finds the verified token instead of paying argon2 again. Without this, a storm of
        // cold tokens slower than the deadline re-verified the same tokens over and over.
        let this = self.clone();
        let load = async move {
            this.cache
                .get_or_load(key, this.load_and_verify(key, token))
                .await
        }
        .instrument(tracing::Span::current());
        tokio::spawn(load).await.map_err(|e| {
            tracing::error!(error = %e, "cold lookup task failed");
            Error::Internal
        })?
    }

    /// A cached entry older than a change to its token: re-read the row, keep the proof of
    /// the secret (no argon2). Only a row that vanished, now belongs to another token, or
    /// holds another hash (a rotated secret) sends the token back to the cold path.
    async fn refresh(
        &self,
        key: Key,
        stale: &Entry,
        token: PlainToken,
    ) -> Result<Arc<Entry>, Error> {
        metrics::counter!(CACHE_REFRESHES_TOTAL).increment(1);
        let stamp = self.cache.stamp();
        match self.store.get(stale.token_id).await? {
            Some(record) if stale.proves(&record) => {
                let entry = Arc::new(self.entry(&record, stamp));
                self.cache.put(key, entry.clone());
                Ok(entry)
            }
            _ => {
                self.cache.remove(&key);
                self.cold(key, token).await
            }
        }
    }

    /// The cold path: one store read and, within the lookup id's budget, one argon2 verify
    /// on the bounded pool.
    async fn load_and_verify(&self, key: Key, token: PlainToken) -> Result<Arc<Entry>, Error> {
        if self.cache.verify_budget_spent(token.lookup_id()) {
            return Err(budget_spent());
        }
        // Taken before the read: a change heard after this point refreshes the entry.
        let stamp = self.cache.stamp();
        // Bounded: a flood of unknown lookup ids (each a store read) from many sources must
        // not take the store pool from the tokens that exist.
        let Ok(read) = self.cold_reads.try_acquire() else {
            return Err(cold_reads_full());
        };
        // No dummy hash for unknown ids: that would hand attackers a CPU amplifier.
        let found = self.store.find_by_lookup_id(token.lookup_id()).await;
        drop(read);
        let Some(mut record) = found? else {
            self.cache.known_wrong(key);
            return Err(UNKNOWN_TOKEN);
        };
        let lookup_id = token.lookup_id().clone();
        if !self.cache.take_verify(&lookup_id) {
            return Err(budget_spent());
        }
        let (verification, rehash) = match self.verify(token, record.secret_hash.clone()).await {
            Ok(done) => done,
            Err(e) => {
                // Not judged: the verify goes back to the budget.
                self.cache.return_verify(&lookup_id);
                return Err(e);
            }
        };
        match verification {
            Ok(Verification::Match { .. }) => {
                // The right secret does not spend the budget of wrong ones.
                self.cache.return_verify(&lookup_id);
                if let Some(new_hash) = rehash {
                    match self.store.replace_hash(record.id, &new_hash).await {
                        // The entry proves the new hash too (same secret), so the change
                        // this write logs refreshes it here without argon2.
                        Ok(()) => record.secret_hash = new_hash,
                        Err(e) => {
                            tracing::warn!(token.id = %record.id, error = %e, "rehash not stored")
                        }
                    }
                }
                Ok(Arc::new(self.entry(&record, stamp)))
            }
            Ok(Verification::Mismatch) => {
                self.cache.known_wrong(key);
                Err(UNKNOWN_TOKEN)
            }
            Err(e) => {
                tracing::error!(token.id = %record.id, error = %e, "stored hash unreadable");
                self.cache.known_wrong(key);
                Err(UNKNOWN_TOKEN)
            }
        }
    }

    /// Verifies `token` against `stored` on the argon2 pool, and computes the new hash when
    /// the stored one has outdated parameters.
    async fn verify(
        &self,
        token: PlainToken,
        stored: SecretHash,
    ) -> Result<(Result<Verification, HashError>, Option<SecretHash>), Error> {
        let hasher = self.hasher.clone();
        let (verification, rehash) = self
            .pool
            .run(move || {
                let verification = hasher.verify(&token, &stored);
                let rehash = match verification {
                    Ok(Verification::Match { needs_rehash: true }) => hasher.hash(&token).ok(),
                    _ => None,
                };
                (verification, rehash)
            })
            .await?;
        let outcome = match &verification {
            Ok(Verification::Match { .. }) => "match",
            Ok(Verification::Mismatch) => "mismatch",
            Err(_) => "error",
        };
        metrics::counter!(ARGON2_VERIFIES_TOTAL, "outcome" => outcome).increment(1);
        Ok((verification, rehash))
    }

    /// A row as the cache keeps it, its scopes expanded once per distinct scope list.
    fn entry(&self, record: &TokenRecord, stamp: u64) -> Entry {
        self.cache.entry(record, stamp, |stored| {
            self.catalog.expand(&self.catalog.from_stored(stored))
        })
    }

    /// Revocation and expiry of a proven token.
    fn judge(&self, entry: Arc<Entry>, now: DateTime<Utc>) -> Result<Authenticated, Denial> {
        match entry.status_at(now) {
            TokenStatus::Revoked => return Err(Denial::Revoked),
            TokenStatus::Expired => return Err(Denial::Expired),
            TokenStatus::Active => {}
        }
        self.last_used.note(entry.token_id, now);
        Ok(Authenticated {
            principal: entry.principal(),
            entry,
        })
    }

    /// A token's full row (WhoAmI shows it; the cache keeps only what decisions need).
    pub async fn record(&self, id: uuid::Uuid) -> Result<Option<TokenRecord>, Error> {
        Ok(self.store.get(id).await?)
    }

    /// The whole decision: authenticate, then match the required scopes.
    pub async fn authorize(
        &self,
        credential: &str,
        required: &ScopeSet,
        mode: ScopeMatch,
    ) -> Result<Decision, Error> {
        self.authorize_from(credential, required, mode, None).await
    }

    /// [`Self::authorize`] for a request from `source` (see [`Self::authenticate_from`]).
    pub async fn authorize_from(
        &self,
        credential: &str,
        required: &ScopeSet,
        mode: ScopeMatch,
        source: Option<&Source>,
    ) -> Result<Decision, Error> {
        Ok(match self.authenticate_from(credential, source).await? {
            Err(denial) => Decision::Deny(denial),
            Ok(Authenticated { principal, .. }) => {
                match Catalog::check(&principal.scopes, required, mode) {
                    Ok(()) => Decision::Allow(principal),
                    Err(missing) => Decision::Deny(Denial::InsufficientScope {
                        principal: Box::new(principal),
                        missing,
                    }),
                }
            }
        })
    }
}
