//! The decision path shared by Authorize, WhoAmI, TokenService caller authentication and
//! Envoy's Check (design.md sections 6 and 7): parse -> store read by lookup id -> argon2
//! verify on a bounded pool -> revoked / expired -> scopes -> last-used noted in memory.
//! A cached token whose row changed is refreshed by a store read, never a second verify.

pub mod cache;
pub mod explain;
pub mod fairness;
pub mod last_used;
mod pace;
mod verify_pool;

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use self::verify_pool::{VerifyPool, VerifyPoolOptions};
use self::{
    cache::{Entry, Key, TokenCache},
    fairness::{FairnessLimits, Limited, Source},
    last_used::LastUsed,
    pace::Pace,
    verify_pool::{Place, finishes_after},
};
use crate::{
    error::Error,
    principal::Principal,
    restriction::{BodyProblem, ModelOf, Restriction},
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

/// At the recent pace of cold reads and verifies, the lookup would end after the call's
/// deadline: refused before it starts, the store and argon2 kept for calls that can finish.
fn deadline_unmet() -> Error {
    metrics::counter!(LIMITED_TOTAL, "limit" => limits::DEADLINE_UNMET).increment(1);
    Error::ResourceExhausted(
        "token lookup would not finish before the call's deadline; retry with backoff",
    )
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
    /// Valid, used from outside its allowed networks (or without a client address).
    Network {
        /// Who it is.
        principal: Box<Principal>,
        /// The client address the gate saw, if any.
        client_ip: Option<IpAddr>,
    },
    /// Valid, naming a model outside its allowed models.
    Model {
        /// Who it is.
        principal: Box<Principal>,
        /// The model named.
        model: String,
    },
    /// Valid and model-restricted, but the model could not be read from the request.
    ModelUnreadable {
        /// Who it is.
        principal: Box<Principal>,
        /// Why.
        problem: BodyProblem,
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
            Self::Network { .. } => "network",
            Self::Model { .. } => "model",
            Self::ModelUnreadable { problem, .. } => problem.as_str(),
        }
    }

    /// The principal, for a denial of a valid token.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::InsufficientScope { principal, .. }
            | Self::Network { principal, .. }
            | Self::Model { principal, .. }
            | Self::ModelUnreadable { principal, .. } => Some(principal),
            _ => None,
        }
    }

    /// The restriction that refused the request, if one did.
    pub fn restriction(&self) -> Option<Restriction> {
        match self {
            Self::Network { .. } => Some(Restriction::Network),
            Self::Model { .. } | Self::ModelUnreadable { .. } => Some(Restriction::Model),
            _ => None,
        }
    }
}

/// What the gate knows of a request beyond its token, for the restrictions.
pub trait RequestFacts: Sync {
    /// The client address, if known.
    fn client_ip(&self) -> Option<IpAddr>;
    /// The model the request names. Asked only for a model-restricted token, so that every
    /// other token's request never pays for reading it (through the gateway: parsing the
    /// body).
    fn model(&self) -> ModelOf<'_>;
}

/// Facts stated outright by the caller (Authorize's `client_ip` and `model`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatedFacts<'a> {
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// The model; `None`: the request names none.
    pub model: Option<&'a str>,
}

impl RequestFacts for StatedFacts<'_> {
    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn model(&self) -> ModelOf<'_> {
        match self.model {
            Some(model) => ModelOf::Named(model.into()),
            None => ModelOf::NotNamed,
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
    /// How long a cold store read has been taking (the wait for a pooled connection too).
    read_pace: Arc<Pace>,
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
            read_pace: Arc::new(Pace::default()),
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
        // It keeps the deadline of the call that starts it: the argon2 pool refuses a verify
        // that could not finish before it.
        let deadline = crate::deadline::current();
        let this = self.clone();
        let load = async move {
            this.cache
                .get_or_load(key, this.load_and_verify(key, token))
                .await
        }
        .instrument(tracing::Span::current());
        tokio::spawn(crate::deadline::within(deadline, load))
            .await
            .map_err(|e| {
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
        // Nor is a token read whose verify the argon2 pool would refuse: the read holds a
        // place in its queue, refused now when the queue and the reads ahead fill it,
        let place = self.pool.hold()?;
        // nor work started that could not end before the call's deadline: the read at its
        // recent pace, then a verify behind the jobs waiting for argon2 and the reads ahead.
        let expected = self
            .pool
            .time_to_finish(&place, self.read_pace.mean().unwrap_or_default());
        let deadline = crate::deadline::current().map(tokio::time::Instant::into_std);
        if finishes_after(std::time::Instant::now() + expected, deadline) && !self.read_pace.probe()
        {
            return Err(deadline_unmet());
        }
        let Ok(read) = self.cold_reads.try_acquire() else {
            return Err(cold_reads_full());
        };
        // No dummy hash for unknown ids: that would hand attackers a CPU amplifier.
        let started = std::time::Instant::now();
        let found = self.store.find_by_lookup_id(token.lookup_id()).await;
        self.read_pace.note(started.elapsed());
        drop(read);
        let Some(mut record) = found? else {
            drop(place);
            self.cache.known_wrong(key);
            return Err(UNKNOWN_TOKEN);
        };
        let lookup_id = token.lookup_id().clone();
        if !self.cache.take_verify(&lookup_id) {
            return Err(budget_spent());
        }
        let verified = self.verify(place, token, record.secret_hash.clone()).await;
        let (verification, rehash) = match verified {
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
        place: Place,
        token: PlainToken,
        stored: SecretHash,
    ) -> Result<(Result<Verification, HashError>, Option<SecretHash>), Error> {
        let hasher = self.hasher.clone();
        let (verification, rehash) = self
            .pool
            .run_in(place, move || {
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

    /// The whole decision: authenticate, then the network list, the required scopes, and
    /// the model list (last: reading the model may mean parsing a body).
    pub async fn authorize(
        &self,
        credential: &str,
        required: &ScopeSet,
        mode: ScopeMatch,
        facts: &dyn RequestFacts,
    ) -> Result<Decision, Error> {
        self.authorize_from(credential, required, mode, None, facts)
            .await
    }

    /// [`Self::authorize`] for a request from `source` (see [`Self::authenticate_from`]).
    pub async fn authorize_from(
        &self,
        credential: &str,
        required: &ScopeSet,
        mode: ScopeMatch,
        source: Option<&Source>,
        facts: &dyn RequestFacts,
    ) -> Result<Decision, Error> {
        Ok(match self.authenticate_from(credential, source).await? {
            Err(denial) => Decision::Deny(denial),
            Ok(Authenticated { principal, .. }) => judge_request(principal, required, mode, facts),
        })
    }
}

/// The decision on an authenticated token's request: networks, scopes, models. Pure.
pub fn judge_request(
    principal: Principal,
    required: &ScopeSet,
    mode: ScopeMatch,
    facts: &dyn RequestFacts,
) -> Decision {
    // The unrestricted majority skips both lists with one branch.
    if let Some(restrictions) = principal.restrictions.as_deref() {
        let client_ip = facts.client_ip();
        if !restrictions.allows_client(client_ip) {
            return Decision::Deny(Denial::Network {
                principal: Box::new(principal),
                client_ip,
            });
        }
    }
    if let Err(missing) = Catalog::check(&principal.scopes, required, mode) {
        return Decision::Deny(Denial::InsufficientScope {
            principal: Box::new(principal),
            missing,
        });
    }
    if principal
        .restrictions
        .as_deref()
        .is_some_and(|r| r.models().is_some())
    {
        match facts.model() {
            ModelOf::NotNamed => {}
            ModelOf::Named(model) => {
                if !principal.restrictions().allows_model(&model) {
                    let model = model.into_owned();
                    return Decision::Deny(Denial::Model {
                        principal: Box::new(principal),
                        model,
                    });
                }
            }
            ModelOf::Unreadable(problem) => {
                return Decision::Deny(Denial::ModelUnreadable {
                    principal: Box::new(principal),
                    problem,
                });
            }
        }
    }
    Decision::Allow(principal)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::{
        error::FieldViolation,
        restriction::Restrictions,
        token::fields::{Owner, OwnerId},
    };

    /// Facts that count how often the model was asked for.
    struct Counting<'a> {
        client_ip: Option<IpAddr>,
        model: ModelOf<'a>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl RequestFacts for Counting<'_> {
        fn client_ip(&self) -> Option<IpAddr> {
            self.client_ip
        }

        fn model(&self) -> ModelOf<'_> {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.model.clone()
        }
    }

    fn principal(networks: &[&str], models: &[&str]) -> Principal {
        let mut bad: Vec<FieldViolation> = Vec::new();
        let r = Restrictions::parse(networks, models, &mut bad);
        assert!(bad.is_empty());
        let catalog = Catalog::default();
        Principal {
            token_id: uuid::Uuid::new_v4(),
            owner: Owner {
                org_id: OwnerId::parse("acme").unwrap(),
                user_id: OwnerId::parse("alice").unwrap(),
            },
            scopes: catalog.expand(&catalog.resolve(&["user:write"]).unwrap()),
            expires_at: None,
            restrictions: (!r.is_empty()).then(|| Arc::new(r)),
        }
    }

    fn facts<'a>(ip: &str, model: ModelOf<'a>) -> Counting<'a> {
        Counting {
            client_ip: ip.parse().ok(),
            model,
            asked: Default::default(),
        }
    }

    fn judged(p: Principal, required: &[&str], facts: &Counting<'_>) -> &'static str {
        let required = Catalog::default().resolve(required).unwrap();
        match judge_request(p, &required, ScopeMatch::All, facts) {
            Decision::Allow(_) => "allow",
            Decision::Deny(d) => d.as_str(),
        }
    }

    #[test]
    fn an_unrestricted_token_never_has_its_model_read() {
        let f = facts("", ModelOf::Unreadable(BodyProblem::NotJson));
        assert_eq!(judged(principal(&[], &[]), &["user:read"], &f), "allow");
        assert_eq!(f.asked.load(std::sync::atomic::Ordering::Relaxed), 0);
        let network_only = principal(&["127.0.0.0/8"], &[]);
        let f = facts("127.0.0.1", ModelOf::Unreadable(BodyProblem::NotJson));
        assert_eq!(judged(network_only, &[], &f), "allow");
        assert_eq!(f.asked.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn restrictions_are_judged_network_then_scopes_then_model() {
        let p = || principal(&["10.0.0.0/8"], &["llama-4-*"]);
        let llama = || ModelOf::Named(Cow::Borrowed("llama-4-scout"));
        let gpt = || ModelOf::Named(Cow::Borrowed("gpt-4o"));
        assert_eq!(
            judged(p(), &["user:read"], &facts("10.1.1.1", llama())),
            "allow"
        );
        assert_eq!(
            judged(p(), &["user:read"], &facts("127.0.0.1", llama())),
            "network"
        );
        assert_eq!(judged(p(), &["user:read"], &facts("", llama())), "network");
        assert_eq!(
            judged(p(), &["admin:read"], &facts("10.1.1.1", gpt())),
            "insufficient_scope"
        );
        assert_eq!(
            judged(p(), &["user:read"], &facts("10.1.1.1", gpt())),
            "model"
        );
        assert_eq!(
            judged(p(), &[], &facts("10.1.1.1", ModelOf::NotNamed)),
            "allow"
        );
        assert_eq!(
            judged(
                p(),
                &[],
                &facts("10.1.1.1", ModelOf::Unreadable(BodyProblem::TooLarge))
            ),
            "body_too_large"
        );
    }
}
