//! The in-memory store: the default without a database URL, for a first try and for tests
//! of the layers above the store. Nothing is kept across restarts.

use std::{
    collections::{HashMap, HashSet},
    sync::RwLock,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ExpiringQuery, ListQuery, NewToken, OwnedTokens, RevocationReason, RotateOutcome, Rotation,
    RotationRequest, StoreError, TokenChange, TokenPatch, TokenRecord, TokenStore, events,
    now_micros,
};
use crate::{
    event::{EventContext, EventFilter, EventKind, EventQuery, NewEvent, TokenEvent},
    token::{LookupId, hash::SecretHash, status::TokenStatus},
};

#[derive(Default)]
struct Tables {
    tokens: HashMap<Uuid, TokenRecord>,
    by_lookup: HashMap<LookupId, Uuid>,
    /// The change log; position = index + 1. Written under the same lock as the change,
    /// so positions are visible in order (the contract the Postgres store keeps too).
    changes: Vec<TokenChange>,
    /// Rotations made with a request id: (caller, request id) -> (old id, new id).
    rotations: HashMap<(String, String), (Uuid, Uuid)>,
    /// The audit trail; event id = index + 1. Appended under the same lock as the change
    /// it describes: the memory store's transaction.
    events: Vec<TokenEvent>,
    /// The once-per-token events written (the Postgres store's unique index).
    once: HashSet<(Uuid, EventKind)>,
}

impl Tables {
    /// Revokes at `at` as the Postgres trigger allows: an unset revocation is set, a future
    /// one moves earlier. Returns whether anything changed (then it is logged, with its
    /// event).
    fn revoke_at(
        &mut self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> bool {
        let Some(record) = self.tokens.get_mut(&id) else {
            return false;
        };
        match record.revoked_at {
            None => {
                record.revoked_at = Some(at);
                record.revocation_reason = Some(reason);
            }
            Some(set) if set > at => record.revoked_at = Some(at),
            Some(_) => return false,
        }
        let event = events::revoked_for(record, at, reason, ctx);
        self.log_change(id);
        self.append_event(event);
        true
    }

    fn insert(&mut self, token: NewToken) -> Result<TokenRecord, StoreError> {
        if self.tokens.contains_key(&token.id) {
            return Err(StoreError::Conflict("token id exists".into()));
        }
        if self.by_lookup.contains_key(&token.lookup_id) {
            return Err(StoreError::Conflict("lookup id exists".into()));
        }
        let record = TokenRecord {
            id: token.id,
            lookup_id: token.lookup_id,
            secret_hash: token.secret_hash,
            name: token.name.as_str().to_owned(),
            description: token.description.as_str().to_owned(),
            scopes: token.scopes,
            owner: token.owner,
            created_at: token.created_at,
            created_by: token.created_by,
            expires_at: token.expires_at,
            last_used_at: None,
            revoked_at: None,
            replaced_by: None,
            revocation_reason: None,
            restrictions: token.restrictions,
        };
        self.by_lookup.insert(record.lookup_id.clone(), record.id);
        self.tokens.insert(record.id, record.clone());
        Ok(record)
    }

    /// Appends an event, unless it is a once-per-token kind (`created`, `first_used`,
    /// `expired`) the token already has: the Postgres store's unique index does the same.
    pub fn append_event(&mut self, event: NewEvent) {
        let once = matches!(
            event.kind,
            EventKind::Created | EventKind::FirstUsed | EventKind::Expired
        );
        if once && !self.once.insert((event.token_id, event.kind)) {
            return;
        }
        let id = self.events.len() as i64 + 1;
        self.events.push(TokenEvent { id, event });
    }

    fn log_change(&mut self, id: Uuid) {
        if let Some(record) = self.tokens.get(&id) {
            let change = TokenChange {
                position: self.changes.len() as u64 + 1,
                token_id: id,
                lookup_id: record.lookup_id.clone(),
            };
            self.changes.push(change);
        }
    }
}

/// Tokens in a map behind a lock.
#[derive(Default)]
pub struct MemoryStore {
    tables: RwLock<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert(&self, token: NewToken, ctx: &EventContext) -> Result<TokenRecord, StoreError> {
        let mut t = self.write();
        let record = t.insert(token)?;
        t.append_event(events::created(&record, ctx));
        Ok(record)
    }

    async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.read().tokens.get(&id).cloned())
    }

    async fn find_by_lookup_id(
        &self,
        lookup_id: &LookupId,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let t = self.read();
        Ok(t.by_lookup
            .get(lookup_id)
            .and_then(|id| t.tokens.get(id))
            .cloned())
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<TokenRecord>, StoreError> {
        let t = self.read();
        Ok(ids
            .iter()
            .filter_map(|id| t.tokens.get(id))
            .cloned()
            .collect())
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let now = Utc::now();
        let t = self.read();
        let mut rows: Vec<_> = t
            .tokens
            .values()
            .filter(|r| r.owner.org_id == q.org_id)
            .filter(|r| q.user_id.as_ref().is_none_or(|u| r.owner.user_id == *u))
            .filter(|r| q.include_revoked || r.revoked_at.is_none_or(|at| at > now))
            .filter(|r| {
                q.after
                    .is_none_or(|c| (r.created_at, r.id) < (c.created_at, c.id))
            })
            .cloned()
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
        rows.truncate(q.limit);
        Ok(rows)
    }

    async fn update(
        &self,
        id: Uuid,
        patch: &TokenPatch,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut t = self.write();
        let Some(record) = t.tokens.get_mut(&id) else {
            return Ok(None);
        };
        if let Some(name) = &patch.name {
            record.name = name.as_str().to_owned();
        }
        if let Some(description) = &patch.description {
            record.description = description.as_str().to_owned();
        }
        let record = record.clone();
        if patch.name.is_some() || patch.description.is_some() {
            t.log_change(id);
            t.append_event(events::updated(&record, patch, now_micros(), ctx));
        }
        Ok(Some(record))
    }

    async fn revoke_for(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut t = self.write();
        t.revoke_at(id, at, reason, ctx);
        Ok(t.tokens.get(&id).cloned())
    }

    async fn rotate(
        &self,
        rotation: Rotation,
        ctx: &EventContext,
    ) -> Result<RotateOutcome, StoreError> {
        let mut t = self.write();
        let key = rotation
            .request
            .as_ref()
            .map(|r| (r.requested_by.clone(), r.request_id.clone()));
        if let Some(&(old_id, new_id)) = key.as_ref().and_then(|k| t.rotations.get(k)) {
            if old_id != rotation.old_id {
                return Ok(RotateOutcome::RequestIdReused { old_id });
            }
            let (Some(old), Some(new)) = (t.tokens.get(&old_id), t.tokens.get(&new_id)) else {
                return Err(StoreError::Internal(
                    "a rotation names a missing token".into(),
                ));
            };
            return Ok(RotateOutcome::Replayed {
                old: old.clone(),
                new: new.clone(),
            });
        }
        let Some(old) = t.tokens.get(&rotation.old_id) else {
            return Ok(RotateOutcome::NotFound);
        };
        if old.revoked_at.is_some() || old.status_at(rotation.now) != TokenStatus::Active {
            return Ok(RotateOutcome::NotActive(old.clone()));
        }
        let new = t.insert(rotation.new)?;
        let old = t.tokens.get_mut(&rotation.old_id).expect("looked up above");
        old.revoked_at = Some(rotation.old_ends_at);
        old.revocation_reason = Some(RevocationReason::Rotated);
        old.replaced_by = Some(new.id);
        let old = old.clone();
        t.log_change(old.id);
        for event in events::rotated(&old, &new, rotation.old_ends_at, ctx) {
            t.append_event(event);
        }
        if let Some(key) = key {
            t.rotations.insert(key, (old.id, new.id));
        }
        Ok(RotateOutcome::Rotated { old, new })
    }

    async fn find_rotation(
        &self,
        request: &RotationRequest,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let key = (request.requested_by.clone(), request.request_id.clone());
        Ok(self.read().rotations.get(&key).copied())
    }

    async fn revoke_owned(
        &self,
        which: &OwnedTokens,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let mut t = self.write();
        let ids: Vec<Uuid> = t
            .tokens
            .values()
            .filter(|r| r.owner.org_id == which.org_id)
            .filter(|r| which.user_id.as_ref().is_none_or(|u| r.owner.user_id == *u))
            .filter(|r| r.status_at(at) == TokenStatus::Active)
            .filter(|r| !r.scopes.iter().any(|s| which.except_scopes.contains(s)))
            .map(|r| r.id)
            .collect();
        let mut revoked = Vec::with_capacity(ids.len());
        for id in ids {
            t.revoke_at(id, at, reason, ctx);
            revoked.extend(t.tokens.get(&id).cloned());
        }
        Ok(revoked)
    }

    async fn replace_hash(&self, id: Uuid, hash: &SecretHash) -> Result<(), StoreError> {
        let mut t = self.write();
        if let Some(record) = t.tokens.get_mut(&id) {
            record.secret_hash = hash.clone();
            t.log_change(id);
        }
        Ok(())
    }

    async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError> {
        let mut t = self.write();
        let mut written = 0;
        for (id, at) in uses {
            if let Some(record) = t.tokens.get_mut(id) {
                let first = record.last_used_at.is_none();
                record.last_used_at = Some(record.last_used_at.map_or(*at, |old| old.max(*at)));
                written += 1;
                if first {
                    let event = events::first_used(record, *at);
                    t.append_event(event);
                }
            }
        }
        Ok(written)
    }

    async fn record_expiries(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut t = self.write();
        let mut due: Vec<_> = t
            .tokens
            .values()
            .filter_map(|r| {
                let expires_at = r.expires_at.filter(|e| *e <= now)?;
                r.revoked_at
                    .is_none_or(|revoked| revoked > expires_at)
                    .then(|| events::expired(r, expires_at))
            })
            .collect();
        // In expiry order, as the Postgres sweep writes them.
        due.sort_by_key(|e| (e.at, e.token_id));
        let before = t.events.len();
        for event in due {
            t.append_event(event);
        }
        Ok((t.events.len() - before) as u64)
    }

    async fn list_events(&self, q: &EventQuery) -> Result<Vec<TokenEvent>, StoreError> {
        let t = self.read();
        Ok(t.events
            .iter()
            .rev()
            .filter(|e| q.before.is_none_or(|before| e.id < before))
            .filter(|e| match &q.filter {
                EventFilter::Token(id) => e.event.token_id == *id,
                EventFilter::Org(org) => e.event.owner.org_id == *org,
            })
            .take(q.limit)
            .cloned()
            .collect())
    }

    async fn list_expiring(&self, q: &ExpiringQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let t = self.read();
        let mut rows: Vec<_> = t
            .tokens
            .values()
            .filter(|r| r.revoked_at.is_none())
            .filter(|r| q.org_id.as_ref().is_none_or(|o| r.owner.org_id == *o))
            .filter(|r| {
                r.expires_at
                    .is_some_and(|e| e > q.after_time && e <= q.until)
            })
            .filter(|r| {
                q.after
                    .is_none_or(|c| (r.expires_at, r.id) > (Some(c.created_at), c.id))
            })
            .cloned()
            .collect();
        rows.sort_by_key(|r| (r.expires_at, r.id));
        rows.truncate(q.limit);
        Ok(rows)
    }

    async fn latest_change(&self) -> Result<u64, StoreError> {
        Ok(self.read().changes.len() as u64)
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TokenChange>, StoreError> {
        let t = self.read();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(t.changes.iter().skip(start).take(limit).cloned().collect())
    }
}
