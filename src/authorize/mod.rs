//! The decision path shared by Authorize, WhoAmI, TokenService caller authentication and
//! Envoy's Check (design.md sections 6 and 7): parse -> store read by lookup id -> argon2
//! verify on a bounded pool -> revoked / expired -> scopes -> last-used noted in memory.

pub mod cache;
pub mod last_used;
mod verify_pool;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use self::verify_pool::{VerifyPool, VerifyPoolOptions};
use self::{
    cache::{TokenCache, Verified},
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
            ARGON2_VERIFIES_TOTAL, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, NEGATIVE_CACHE_HITS_TOTAL,
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

/// A valid token: who it is, and its cached row (for WhoAmI).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal: Principal,
    /// The verified token, shared with the cache.
    pub verified: Arc<Verified>,
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
    ) -> Self {
        Self {
            store,
            catalog,
            hasher,
            pool,
            last_used,
            cache,
        }
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
    /// service trouble (store unreachable, verify pool full, revocations unheard for too
    /// long): never for a bad token.
    #[tracing::instrument(name = "authenticate", skip_all, fields(token.id, cache))]
    pub async fn authenticate(
        &self,
        credential: &str,
    ) -> Result<Result<Authenticated, Denial>, Error> {
        let Ok(token) = PlainToken::parse_credential(credential) else {
            return Ok(Err(Denial::Malformed));
        };
        if !self.cache.is_fresh() {
            // Revocation notices have not arrived for longer than max_staleness: fail closed.
            return Err(Error::Unavailable);
        }
        let key = self.cache.key_of(&token);
        let span = tracing::Span::current();
        let verified = match self.cache.get(&key).await {
            Some(hit) => {
                span.record("cache", "hit");
                metrics::counter!(CACHE_HITS_TOTAL).increment(1);
                hit
            }
            None => {
                span.record("cache", "miss");
                metrics::counter!(CACHE_MISSES_TOTAL).increment(1);
                // Boxed: the cold path's state machine is large, and moving it with every
                // warm request's future cost more than the allocation on a miss.
                match Box::pin(self.cache.get_or_load(key, self.load_and_verify(token))).await {
                    Ok(verified) => verified,
                    Err(Error::Unauthenticated(_)) => return Ok(Err(Denial::Unknown)),
                    Err(e) => return Err(e),
                }
            }
        };
        span.record("token.id", tracing::field::display(verified.record.id));
        telemetry::note_token_id(verified.record.id);
        // Checked after the secret is proven, on hits and misses alike: a notice that raced
        // a miss still wins.
        if self.cache.is_revoked(&verified.record.lookup_id) {
            return Ok(Err(Denial::Revoked));
        }
        Ok(self.judge(verified, Utc::now()))
    }

    /// The cold path: one store read and one argon2 verify on the bounded pool.
    async fn load_and_verify(&self, token: PlainToken) -> Result<Arc<Verified>, Error> {
        // No dummy hash for unknown ids: that would hand attackers a CPU amplifier.
        let record = self
            .store
            .find_by_lookup_id(token.lookup_id())
            .await?
            .ok_or(UNKNOWN_TOKEN)?;
        let lookup_id = token.lookup_id().clone();
        if !self.cache.take_verify_slot(&lookup_id) {
            metrics::counter!(NEGATIVE_CACHE_HITS_TOTAL).increment(1);
            return Err(UNKNOWN_TOKEN);
        }
        let (verification, rehash) = match self.verify(token, record.secret_hash.clone()).await {
            Ok(done) => done,
            Err(e) => {
                // Not judged: the slot goes back for the next try.
                self.cache.release_verify_slot(&lookup_id);
                return Err(e);
            }
        };
        match verification {
            Ok(Verification::Match { .. }) => {
                self.cache.release_verify_slot(&lookup_id);
                if let Some(new_hash) = rehash
                    && let Err(e) = self.store.replace_hash(record.id, &new_hash).await
                {
                    tracing::warn!(token.id = %record.id, error = %e, "rehash not stored");
                }
                Ok(Arc::new(self.verified(record)))
            }
            Ok(Verification::Mismatch) => Err(UNKNOWN_TOKEN),
            Err(e) => {
                tracing::error!(token.id = %record.id, error = %e, "stored hash unreadable");
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

    /// A proven token as the cache keeps it, its scopes expanded once.
    fn verified(&self, record: TokenRecord) -> Verified {
        let scopes = self
            .catalog
            .expand(&self.catalog.from_stored(&record.scopes));
        let principal = Principal {
            token_id: record.id,
            owner: record.owner.clone(),
            scopes,
            expires_at: record.expires_at,
        };
        Verified { record, principal }
    }

    /// Revocation and expiry of a verified token.
    fn judge(&self, verified: Arc<Verified>, now: DateTime<Utc>) -> Result<Authenticated, Denial> {
        let record = &verified.record;
        match record.status_at(now) {
            TokenStatus::Revoked => return Err(Denial::Revoked),
            TokenStatus::Expired => return Err(Denial::Expired),
            TokenStatus::Active => {}
        }
        self.last_used.note(record.id, now);
        Ok(Authenticated {
            principal: verified.principal.clone(),
            verified,
        })
    }

    /// The whole decision: authenticate, then match the required scopes.
    pub async fn authorize(
        &self,
        credential: &str,
        required: &ScopeSet,
        mode: ScopeMatch,
    ) -> Result<Decision, Error> {
        Ok(match self.authenticate(credential).await? {
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
