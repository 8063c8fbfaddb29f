//! The token store: one trait, two implementations ([`postgres::PgStore`],
//! [`memory::MemoryStore`]) that pass one conformance suite (`tests/store_conformance.rs`).
//!
//! Every write is one statement or one transaction: nothing is half-written.

pub mod changes;
pub mod memory;
pub mod postgres;
pub mod timed;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use crate::pagination::Cursor;
use crate::restriction::Restrictions;
use crate::token::{
    LookupId,
    fields::{Description, Owner, OwnerId, TokenName},
    hash::SecretHash,
    status::TokenStatus,
};

/// A token row. Holds the hash of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token id.
    pub id: Uuid,
    /// Public lookup id (unique).
    pub lookup_id: LookupId,
    /// argon2id PHC string of the secret part.
    pub secret_hash: SecretHash,
    /// Label.
    pub name: String,
    /// Notes (empty when none).
    pub description: String,
    /// Granted scopes (not expanded), sorted.
    pub scopes: Vec<String>,
    /// Owner.
    pub owner: Owner,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// `token:<id>` or `cli`.
    pub created_by: String,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful authentication (written behind).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Allowed networks and models (none: unrestricted). A rotation copies this field.
    pub restrictions: Restrictions,
}

impl TokenRecord {
    /// The token's status at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::at(now, self.expires_at, self.revoked_at)
    }
}

/// A token to insert.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Token id.
    pub id: Uuid,
    /// Public lookup id.
    pub lookup_id: LookupId,
    /// argon2id PHC string.
    pub secret_hash: SecretHash,
    /// Label.
    pub name: TokenName,
    /// Notes.
    pub description: Description,
    /// Granted scopes, sorted.
    pub scopes: Vec<String>,
    /// Owner.
    pub owner: Owner,
    /// Creation time (microsecond precision).
    pub created_at: DateTime<Utc>,
    /// `token:<id>` or `cli`.
    pub created_by: String,
    /// Expiry, if any (microsecond precision).
    pub expires_at: Option<DateTime<Utc>>,
    /// Allowed networks and models (validated); a rotation copies the old token's.
    pub restrictions: Restrictions,
}

/// Which tokens to list: newest first, `(created_at, id)` descending.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// The organisation.
    pub org_id: OwnerId,
    /// One user, or every user of the organisation.
    pub user_id: Option<OwnerId>,
    /// Include revoked tokens.
    pub include_revoked: bool,
    /// Start after this item.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: usize,
}

/// Name and description changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TokenPatch {
    /// New name.
    pub name: Option<TokenName>,
    /// New description.
    pub description: Option<Description>,
}

/// One entry of the change log: a token whose revocation, scopes, expiry, owner or hash may
/// have changed (design.md section 7). Positions only grow, and a change becomes visible
/// only after every change with a smaller position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChange {
    /// Position in the log (greater than 0).
    pub position: u64,
    /// The changed token.
    pub token_id: Uuid,
    /// Its lookup id, by which caches find it.
    pub lookup_id: LookupId,
}

/// Store failures. `Unavailable` is the store being unreachable: never an invalid token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, pool exhausted, timeout.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness conflict (an id or lookup id that exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else.
    #[error("store error: {0}")]
    Internal(String),
}

/// The token store.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Inserts a token; `Conflict` if its id or lookup id exists.
    async fn insert(&self, token: NewToken) -> Result<TokenRecord, StoreError>;
    /// A token by id.
    async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError>;
    /// A token by lookup id.
    async fn find_by_lookup_id(
        &self,
        lookup_id: &LookupId,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// A page of tokens.
    async fn list(&self, query: &ListQuery) -> Result<Vec<TokenRecord>, StoreError>;
    /// Changes name/description; `None` if there is no such token.
    async fn update(&self, id: Uuid, patch: &TokenPatch)
    -> Result<Option<TokenRecord>, StoreError>;
    /// Revokes at `at` unless already revoked (then unchanged), and announces the
    /// revocation to every replica; `None` if there is no such token.
    async fn revoke(&self, id: Uuid, at: DateTime<Utc>) -> Result<Option<TokenRecord>, StoreError>;
    /// Replaces the stored hash (rehash after a parameter change).
    async fn replace_hash(&self, id: Uuid, hash: &SecretHash) -> Result<(), StoreError>;
    /// Records last-used times in one write; a time never moves backwards. Returns the
    /// number of rows written.
    async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError>;
    /// The position of the newest change in the log (0 when it is empty): where a replica
    /// that starts with an empty cache begins to poll.
    async fn latest_change(&self) -> Result<u64, StoreError>;
    /// Up to `limit` changes with a position greater than `after`, oldest first. Every
    /// revocation and every update (or revoke) through this trait appears here; the
    /// Postgres store also logs changes made by hand in SQL.
    async fn changes_after(&self, after: u64, limit: usize)
    -> Result<Vec<TokenChange>, StoreError>;
    /// Pool connections `(in use, idle)`, for metrics; `None` for a store without a pool.
    fn pool_connections(&self) -> Option<(usize, usize)> {
        None
    }
}

/// The current time, truncated to the microseconds both stores keep.
pub fn now_micros() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// Truncates to microseconds (Postgres `timestamptz` precision).
pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range")
}
