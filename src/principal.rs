//! The principal: who a valid token belongs to and what it may do.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{restriction::Restrictions, scope::ScopeSet, token::fields::Owner};

/// The identity behind a valid (not revoked, not expired) token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub token_id: Uuid,
    /// The token's owner.
    pub owner: Owner,
    /// Scopes with implications expanded.
    pub scopes: ScopeSet,
    /// When the token expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// Allowed networks and models; `None` for an unrestricted token (most of them), so
    /// that they cost nothing. Shared with the cache entry.
    pub restrictions: Option<Arc<Restrictions>>,
}

impl Principal {
    /// Whether the (expanded) scopes include `scope`.
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The token's restrictions (none for an unrestricted token).
    pub fn restrictions(&self) -> &Restrictions {
        static NONE: std::sync::OnceLock<Restrictions> = std::sync::OnceLock::new();
        self.restrictions
            .as_deref()
            .unwrap_or_else(|| NONE.get_or_init(Restrictions::none))
    }

    /// The `created_by` value for tokens this principal mints.
    pub fn as_creator(&self) -> String {
        format!("token:{}", self.token_id)
    }
}
