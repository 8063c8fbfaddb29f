//! The decision path shared by Authorize, WhoAmI, TokenService caller authentication and
//! Envoy's Check (design.md sections 6 and 7): parse -> store read by lookup id -> argon2
//! verify on a bounded pool -> revoked / expired -> scopes -> last-used noted in memory.

pub mod last_used;
mod verify_pool;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use self::last_used::LastUsed;
pub use self::verify_pool::{VerifyPool, VerifyPoolOptions};
use crate::{
    error::Error,
    principal::Principal,
    scope::{Catalog, ScopeMatch, ScopeSet},
    store::{TokenRecord, TokenStore},
    token::{
        PlainToken,
        hash::{TokenHasher, Verification},
    },
};

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

/// A valid token: who it is, and its row (for WhoAmI).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal: Principal,
    /// The token's row.
    pub record: TokenRecord,
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
}

impl Authorizer {
    /// An authorizer over `store`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        catalog: Arc<Catalog>,
        hasher: TokenHasher,
        pool: VerifyPool,
        last_used: LastUsed,
    ) -> Self {
        Self {
            store,
            catalog,
            hasher,
            pool,
            last_used,
        }
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
        self.catalog.resolve(names).map_err(|unknown| {
            Error::InvalidArgument(
                unknown
                    .into_iter()
                    .map(|(i, name)| {
                        crate::error::FieldViolation::new(
                            format!("{field}[{i}]"),
                            format!("unknown scope {name:?}"),
                        )
                    })
                    .collect(),
            )
        })
    }

    /// Authenticates a credential (a raw token or an `Authorization` value). `Err` only for
    /// service trouble (store unreachable, verify pool full): never for a bad token.
    #[tracing::instrument(name = "authenticate", skip_all, fields(token.id))]
    pub async fn authenticate(
        &self,
        credential: &str,
    ) -> Result<Result<Authenticated, Denial>, Error> {
        let Ok(token) = PlainToken::parse_credential(credential) else {
            return Ok(Err(Denial::Malformed));
        };
        let Some(record) = self.store.find_by_lookup_id(token.lookup_id()).await? else {
            // No dummy hash for unknown ids: that would hand attackers a CPU amplifier.
            return Ok(Err(Denial::Unknown));
        };
        tracing::Span::current().record("token.id", tracing::field::display(record.id));
        crate::telemetry::note_token_id(record.id);
        let hasher = self.hasher.clone();
        let stored = record.secret_hash.clone();
        let verification = self
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
        crate::telemetry::argon2_verified(&verification.0);
        match verification {
            (Ok(Verification::Match { .. }), rehash) => {
                if let Some(new_hash) = rehash
                    && let Err(e) = self.store.replace_hash(record.id, &new_hash).await
                {
                    tracing::warn!(token.id = %record.id, error = %e, "rehash not stored");
                }
            }
            (Ok(Verification::Mismatch), _) => return Ok(Err(Denial::Unknown)),
            (Err(e), _) => {
                tracing::error!(token.id = %record.id, error = %e, "stored hash unreadable");
                return Ok(Err(Denial::Unknown));
            }
        }
        Ok(self.judge(record, Utc::now()))
    }

    /// Revocation and expiry of a verified token.
    fn judge(&self, record: TokenRecord, now: DateTime<Utc>) -> Result<Authenticated, Denial> {
        if record.revoked_at.is_some() {
            return Err(Denial::Revoked);
        }
        if record.is_expired_at(now) {
            return Err(Denial::Expired);
        }
        self.last_used.note(record.id, now);
        let scopes = self
            .catalog
            .expand(&self.catalog.from_stored(&record.scopes));
        Ok(Authenticated {
            principal: Principal {
                token_id: record.id,
                owner: record.owner.clone(),
                scopes,
                expires_at: record.expires_at,
            },
            record,
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
