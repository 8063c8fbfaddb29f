//! The in-memory store: the default without a database URL, for a first try and for tests
//! of the layers above the store. Nothing is kept across restarts.

use std::{collections::HashMap, sync::RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ListQuery, NewToken, StoreError, TokenChange, TokenPatch, TokenRecord, TokenStore};
use crate::token::{LookupId, hash::SecretHash};

#[derive(Default)]
struct Tables {
    tokens: HashMap<Uuid, TokenRecord>,
    by_lookup: HashMap<LookupId, Uuid>,
    /// The change log; position = index + 1. Written under the same lock as the change,
    /// so positions are visible in order (the contract the Postgres store keeps too).
    changes: Vec<TokenChange>,
}

impl Tables {
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

    async fn insert(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let mut t = self.write();
        if t.tokens.contains_key(&token.id) {
            return Err(StoreError::Conflict("token id exists".into()));
        }
        if t.by_lookup.contains_key(&token.lookup_id) {
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
            restrictions: token.restrictions,
        };
        t.by_lookup.insert(record.lookup_id.clone(), record.id);
        t.tokens.insert(record.id, record.clone());
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

    async fn list(&self, q: &ListQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let t = self.read();
        let mut rows: Vec<_> = t
            .tokens
            .values()
            .filter(|r| r.owner.org_id == q.org_id)
            .filter(|r| q.user_id.as_ref().is_none_or(|u| r.owner.user_id == *u))
            .filter(|r| q.include_revoked || r.revoked_at.is_none())
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
        }
        Ok(Some(record))
    }

    async fn revoke(&self, id: Uuid, at: DateTime<Utc>) -> Result<Option<TokenRecord>, StoreError> {
        let mut t = self.write();
        let Some(record) = t.tokens.get_mut(&id) else {
            return Ok(None);
        };
        let newly = record.revoked_at.is_none();
        record.revoked_at.get_or_insert(at);
        let record = record.clone();
        if newly {
            t.log_change(id);
        }
        Ok(Some(record))
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
                record.last_used_at = Some(record.last_used_at.map_or(*at, |old| old.max(*at)));
                written += 1;
            }
        }
        Ok(written)
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
