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

use crate::event::{EventContext, EventQuery, TokenEvent};
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
    /// Revocation time, if set: the token is revoked from this instant on (in the future
    /// while a rotation overlap runs).
    pub revoked_at: Option<DateTime<Utc>>,
    /// The token that replaced this one in a rotation.
    pub replaced_by: Option<Uuid>,
    /// Why `revoked_at` is set.
    pub revocation_reason: Option<RevocationReason>,
    /// Allowed networks and models (none: unrestricted). A rotation copies this field.
    pub restrictions: Restrictions,
}

impl TokenRecord {
    /// The token's status at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::at(now, self.expires_at, self.revoked_at)
    }

    /// Whether the token is active at `now` and expires within `window` of it.
    pub fn expires_soon(&self, now: DateTime<Utc>, window: chrono::Duration) -> bool {
        self.status_at(now) == TokenStatus::Active
            && self.expires_at.is_some_and(|e| e <= now + window)
    }
}

/// Why a token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    /// RevokeToken, the CLI, or by hand in SQL.
    Revoked,
    /// Replaced in a rotation; revoked at the end of the overlap.
    Rotated,
    /// Reported as exposed (ReportExposedTokens).
    Exposed,
    /// Revoked with every token of its user or organisation (RevokeTokens).
    Offboarded,
}

impl RevocationReason {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Exposed => "exposed",
            Self::Offboarded => "offboarded",
        }
    }

    /// The reason of a stored name; an unknown one reads as `revoked`.
    pub fn from_stored(name: &str) -> Self {
        match name {
            "rotated" => Self::Rotated,
            "exposed" => Self::Exposed,
            "offboarded" => Self::Offboarded,
            _ => Self::Revoked,
        }
    }
}

/// A rotation to make: the new token (a copy of the old one with a fresh secret), when
/// the old one stops working, and the caller's idempotency key.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The token being replaced.
    pub old_id: Uuid,
    /// The replacement.
    pub new: NewToken,
    /// The time of the rotation: the old token must be active then.
    pub now: DateTime<Utc>,
    /// The end of the overlap: the old token's revocation time (`now` for no overlap).
    pub old_ends_at: DateTime<Utc>,
    /// The caller's idempotency key, if any.
    pub request: Option<RotationRequest>,
}

/// An idempotency key of a rotation, unique per caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRequest {
    /// `token:<id>` or `cli`.
    pub requested_by: String,
    /// The caller's request id.
    pub request_id: String,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// Rotated now: the old token (revoked at the end of the overlap) and the new one.
    Rotated {
        /// The replaced token.
        old: TokenRecord,
        /// Its replacement.
        new: TokenRecord,
    },
    /// The request id was used before by this caller, for the same token: that rotation's
    /// tokens, unchanged.
    Replayed {
        /// The replaced token.
        old: TokenRecord,
        /// Its replacement.
        new: TokenRecord,
    },
    /// The request id was used before by this caller for another token.
    RequestIdReused {
        /// The token that rotation replaced.
        old_id: Uuid,
    },
    /// No such token.
    NotFound,
    /// The token was revoked or expired at `now`, or is already inside an overlap (then
    /// `replaced_by` says by which token).
    NotActive(TokenRecord),
}

/// Which tokens to revoke when offboarding.
#[derive(Debug, Clone)]
pub struct OwnedTokens {
    /// The organisation.
    pub org_id: OwnerId,
    /// One user, or every user of the organisation.
    pub user_id: Option<OwnerId>,
    /// Tokens granted any of these scopes are left alone (service tokens, for callers who
    /// may not touch them).
    pub except_scopes: Vec<String>,
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

/// Active tokens that expire soon: soonest first, `(expires_at, id)` ascending.
#[derive(Debug, Clone)]
pub struct ExpiringQuery {
    /// One organisation, or every organisation.
    pub org_id: Option<OwnerId>,
    /// Only tokens that expire after this instant (now: expired ones are not active),
    pub after_time: DateTime<Utc>,
    /// and at or before this one.
    pub until: DateTime<Utc>,
    /// Start after this item: the listing's keyset cursor, carrying the item's expiry in
    /// `created_at` (the same page-token codec as ListTokens, ascending here).
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
    /// Inserts a token and its `created` event (one transaction); `Conflict` if its id or
    /// lookup id exists.
    async fn insert(&self, token: NewToken, ctx: &EventContext) -> Result<TokenRecord, StoreError>;
    /// A token by id.
    async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError>;
    /// A token by lookup id.
    async fn find_by_lookup_id(
        &self,
        lookup_id: &LookupId,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// A page of tokens.
    async fn list(&self, query: &ListQuery) -> Result<Vec<TokenRecord>, StoreError>;
    /// Tokens by id, in no particular order; unknown ids are left out.
    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<TokenRecord>, StoreError>;
    /// Changes name/description and records an `updated` event naming the changed fields
    /// (one transaction); `None` if there is no such token. An empty patch changes and
    /// records nothing.
    async fn update(
        &self,
        id: Uuid,
        patch: &TokenPatch,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Revokes at `at` unless already revoked (then unchanged, and no event), records a
    /// `revoked` event and announces the revocation to every replica, all in one
    /// transaction; `None` if there is no such token.
    async fn revoke(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.revoke_for(id, at, RevocationReason::Revoked, ctx)
            .await
    }
    /// As [`TokenStore::revoke`], with a reason (the event's kind follows it). A token
    /// whose revocation time is still in the future (a rotation overlap) is revoked at `at`
    /// instead, keeping its reason.
    async fn revoke_for(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Replaces a token in one transaction: inserts the new one, sets the old one's
    /// revocation time to the end of the overlap and its `replaced_by`, records the
    /// request id, the `rotated` event of the old token and the `created` event of the new
    /// one, and announces the change to every replica.
    async fn rotate(
        &self,
        rotation: Rotation,
        ctx: &EventContext,
    ) -> Result<RotateOutcome, StoreError>;
    /// The rotation this caller made with this request id: `(old id, new id)`.
    async fn find_rotation(
        &self,
        request: &RotationRequest,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError>;
    /// Revokes at `at`, in one transaction, every token of `which` that works at `at`
    /// (tokens inside a rotation overlap included), records one event per token, and
    /// announces it to every replica. Returns the revoked tokens.
    async fn revoke_owned(
        &self,
        which: &OwnedTokens,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Vec<TokenRecord>, StoreError>;
    /// Replaces the stored hash (rehash after a parameter change).
    async fn replace_hash(&self, id: Uuid, hash: &SecretHash) -> Result<(), StoreError>;
    /// Records last-used times in one write; a time never moves backwards. A token whose
    /// last use was unset gets its `first_used` event in the same statement, exactly once
    /// per token however many replicas flush at once. Returns the number of rows written.
    async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError>;
    /// Records an `expired` event (at the expiry instant, actor `system`) for every token
    /// whose expiry is at or before `now` and that was not revoked before it, exactly once
    /// per token whichever replica sweeps first. Resumes where the latest recorded expiry
    /// left off (less a margin), so a sweep reads only what expired since. Returns the
    /// number of events written.
    async fn record_expiries(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// A page of the audit trail, newest first.
    async fn list_events(&self, query: &EventQuery) -> Result<Vec<TokenEvent>, StoreError>;
    /// A page of active tokens expiring in a window, soonest first.
    async fn list_expiring(&self, query: &ExpiringQuery) -> Result<Vec<TokenRecord>, StoreError>;
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

/// The events both stores write for the changes of this trait, built in one place so that
/// the two stores record the same facts. Rotation, offboarding and exposure reports build
/// theirs with [`EventContext::event`] in the same way.
pub mod events {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::{RevocationReason, TokenPatch, TokenRecord};
    use crate::event::{EventContext, EventKind, NewEvent};

    /// `created`: the granted scopes and the expiry (never the name or description: they
    /// are free text).
    pub fn created(record: &TokenRecord, ctx: &EventContext) -> NewEvent {
        ctx.event(
            EventKind::Created,
            record.id,
            &record.owner,
            record.created_at,
            json!({
                "scopes": record.scopes,
                "expires_at": record.expires_at.map(|t| t.to_rfc3339()),
            }),
        )
    }

    /// `updated`: the names of the changed fields, not their values.
    pub fn updated(
        record: &TokenRecord,
        patch: &TokenPatch,
        at: DateTime<Utc>,
        ctx: &EventContext,
    ) -> NewEvent {
        let mut fields = Vec::new();
        if patch.name.is_some() {
            fields.push("name");
        }
        if patch.description.is_some() {
            fields.push("description");
        }
        ctx.event(
            EventKind::Updated,
            record.id,
            &record.owner,
            at,
            json!({ "fields": fields }),
        )
    }

    /// `revoked`, at the revocation time.
    pub fn revoked(record: &TokenRecord, at: DateTime<Utc>, ctx: &EventContext) -> NewEvent {
        ctx.event(EventKind::Revoked, record.id, &record.owner, at, json!({}))
    }

    /// The event of a revocation for `reason`: `revoked`, `exposed`, `offboarded` (or
    /// `revoked` for a rotated token revoked before its overlap ended).
    pub fn revoked_for(
        record: &TokenRecord,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> NewEvent {
        let kind = match reason {
            RevocationReason::Revoked | RevocationReason::Rotated => EventKind::Revoked,
            RevocationReason::Exposed => EventKind::Exposed,
            RevocationReason::Offboarded => EventKind::Offboarded,
        };
        ctx.event(kind, record.id, &record.owner, at, json!({}))
    }

    /// The two events of a rotation: `rotated` on the old token (its replacement and the
    /// end of the overlap) and `created` on the new one (the token it replaces).
    pub fn rotated(
        old: &TokenRecord,
        new: &TokenRecord,
        ends_at: DateTime<Utc>,
        ctx: &EventContext,
    ) -> [NewEvent; 2] {
        [
            ctx.event(
                EventKind::Rotated,
                old.id,
                &old.owner,
                new.created_at,
                json!({
                    "replaced_by": new.id.to_string(),
                    "overlap_ends_at": ends_at.to_rfc3339(),
                }),
            ),
            ctx.event(
                EventKind::Created,
                new.id,
                &new.owner,
                new.created_at,
                json!({
                    "scopes": new.scopes,
                    "expires_at": new.expires_at.map(|t| t.to_rfc3339()),
                    "replaces": old.id.to_string(),
                }),
            ),
        ]
    }

    /// `first_used`, by the service, at the first recorded use.
    pub fn first_used(record: &TokenRecord, at: DateTime<Utc>) -> NewEvent {
        EventContext::system().event(
            EventKind::FirstUsed,
            record.id,
            &record.owner,
            at,
            json!({}),
        )
    }

    /// `expired`, by the service, at the expiry instant.
    pub fn expired(record: &TokenRecord, expires_at: DateTime<Utc>) -> NewEvent {
        EventContext::system().event(
            EventKind::Expired,
            record.id,
            &record.owner,
            expires_at,
            json!({}),
        )
    }
}
