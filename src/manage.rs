//! Token lifecycle use cases behind TokenService and the CLI: create, get, list, update,
//! revoke. Each validates its whole request (every bad field reported at once), checks
//! permissions with [`crate::permission`], then calls the store.

use std::sync::Arc;

use uuid::Uuid;

use crate::{
    authorize::{VerifyPool, cache::TokenCache},
    error::{Error, FieldViolation},
    pagination::{Cursor, PageSize},
    permission::{self, Access, Action, GrantError, Target},
    principal::Principal,
    restriction::Restrictions,
    scope::{ADMIN_READ, Catalog, ScopeSet, TOKENS_ISSUE},
    store::{ListQuery, NewToken, StoreError, TokenPatch, TokenRecord, TokenStore, now_micros},
    token::{
        PlainToken,
        fields::{Description, ExpiresInDays, Owner, OwnerId, TokenName},
        hash::{SecretHash, TokenHasher},
    },
};

/// Most scopes on one token.
pub const MAX_SCOPES: usize = 64;

/// Who asks.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A token holder, through the API.
    Token(Principal),
    /// An operator at the CLI, talking to the store directly: no permission checks, may
    /// grant tokens:issue.
    Operator,
}

impl Caller {
    /// The caller's own owner, if it is a token holder.
    fn owner(&self) -> Option<&Owner> {
        match self {
            Caller::Token(p) => Some(&p.owner),
            Caller::Operator => None,
        }
    }
}

/// What to create; raw fields, validated by [`TokenManager::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Label.
    pub name: String,
    /// Notes.
    pub description: String,
    /// Preset id, or empty.
    pub preset: String,
    /// Explicit scopes.
    pub scopes: Vec<String>,
    /// Days to expiry.
    pub expires_in_days: Option<i32>,
    /// Owner organisation, or empty for the caller's.
    pub org_id: String,
    /// Owner user, or empty for the caller's.
    pub user_id: String,
    /// CIDR blocks the token may be used from; empty: any network.
    pub allowed_networks: Vec<String>,
    /// Model names or trailing-wildcard patterns; empty: any model.
    pub allowed_models: Vec<String>,
}

/// A created token: its row and the plain token, shown once.
#[derive(Debug)]
pub struct Created {
    /// The stored token.
    pub record: TokenRecord,
    /// The plain token.
    pub token: PlainToken,
}

/// What to list; raw fields.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Requested page size.
    pub page_size: i32,
    /// Previous page's token.
    pub page_token: String,
    /// Empty (own), a user id, or `-` (every user of the organisation).
    pub user_id: String,
    /// Include revoked tokens.
    pub include_revoked: bool,
    /// Organisation, or empty for the caller's.
    pub org_id: String,
}

/// A page of tokens.
#[derive(Debug, Clone)]
pub struct Page {
    /// Tokens, newest first.
    pub tokens: Vec<TokenRecord>,
    /// Token of the next page, if any.
    pub next_page_token: Option<String>,
}

/// What to update; raw fields and the mask paths.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// Token id.
    pub id: String,
    /// New name.
    pub name: String,
    /// New description.
    pub description: String,
    /// Fields to change; empty: every non-empty field given.
    pub mask: Vec<String>,
}

/// A create request with every field valid.
struct ValidCreate {
    name: TokenName,
    description: Description,
    /// Granted (not expanded).
    scopes: ScopeSet,
    expires: Option<ExpiresInDays>,
    owner: Owner,
    restrictions: Restrictions,
}

/// The token lifecycle. Cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    store: Arc<dyn TokenStore>,
    catalog: Arc<Catalog>,
    hasher: TokenHasher,
    pool: VerifyPool,
    cache: TokenCache,
}

/// An owner id field: the caller's own when empty (an operator has none: then required).
fn owner_id(
    field: &str,
    raw: &str,
    default: Option<&OwnerId>,
    bad: &mut Vec<FieldViolation>,
) -> Option<OwnerId> {
    match (raw.is_empty(), default) {
        (true, Some(own)) => Some(own.clone()),
        (true, None) => {
            bad.push(FieldViolation::new(field, "must not be empty"));
            None
        }
        (false, _) => OwnerId::parse(raw)
            .map_err(|e| bad.push(FieldViolation::new(field, e)))
            .ok(),
    }
}

fn parse_id(raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw.trim()).map_err(|_| Error::invalid("id", "must be a token id (UUID)"))
}

impl TokenManager {
    /// A manager over `store`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        catalog: Arc<Catalog>,
        hasher: TokenHasher,
        pool: VerifyPool,
        cache: TokenCache,
    ) -> Self {
        Self {
            store,
            catalog,
            hasher,
            pool,
            cache,
        }
    }

    /// Creates a token.
    #[tracing::instrument(name = "create_token", skip_all)]
    pub async fn create(&self, caller: &Caller, req: CreateRequest) -> Result<Created, Error> {
        let valid = self.validate_create(caller, req)?;
        let now = now_micros();
        let expires_at = valid.expires.map(|d| now + d.duration());
        let (created_by, restrictions) = match caller {
            Caller::Token(principal) => {
                self.may_create(principal, &valid.owner, &valid.scopes, expires_at)?;
                let restrictions = valid
                    .restrictions
                    .clone()
                    .within(principal.restrictions())
                    .map_err(Error::InvalidArgument)?;
                (principal.as_creator(), restrictions)
            }
            Caller::Operator => ("cli".to_owned(), valid.restrictions.clone()),
        };
        // A lookup-id collision is a 1 in 62^12 event; one retry covers it.
        for _ in 0..2 {
            let (token, secret_hash) = self.new_secret().await?;
            let new = NewToken {
                id: Uuid::new_v4(),
                lookup_id: token.lookup_id().clone(),
                secret_hash,
                name: valid.name.clone(),
                description: valid.description.clone(),
                scopes: valid.scopes.to_vec(),
                owner: valid.owner.clone(),
                created_at: now,
                created_by: created_by.clone(),
                expires_at,
                restrictions: restrictions.clone(),
            };
            match self.store.insert(new).await {
                Ok(record) => {
                    tracing::info!(token.id = %record.id, org.id = %record.owner.org_id, user.id = %record.owner.user_id, created_by = %record.created_by, "token created");
                    return Ok(Created { record, token });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Internal)
    }

    /// Every field of a create request, each bad one reported.
    fn validate_create(&self, caller: &Caller, req: CreateRequest) -> Result<ValidCreate, Error> {
        let mut bad = Vec::new();
        let name = TokenName::parse(&req.name)
            .map_err(|e| bad.push(FieldViolation::new("name", e)))
            .ok();
        let description = Description::parse(&req.description)
            .map_err(|e| bad.push(FieldViolation::new("description", e)))
            .ok();
        let scopes = self.requested_scopes(&req.preset, &req.scopes, &mut bad);
        let expires = req
            .expires_in_days
            .map(ExpiresInDays::parse)
            .transpose()
            .map_err(|e| bad.push(FieldViolation::new("expires_in_days", e)))
            .ok()
            .flatten();
        let owner = self.owner_for(caller, &req.org_id, &req.user_id, &mut bad);
        let restrictions =
            Restrictions::parse(&req.allowed_networks, &req.allowed_models, &mut bad);
        match (name, description, owner, bad.is_empty()) {
            (Some(name), Some(description), Some(owner), true) => Ok(ValidCreate {
                name,
                description,
                scopes,
                expires,
                owner,
                restrictions,
            }),
            _ => Err(Error::InvalidArgument(bad)),
        }
    }

    /// The scopes of a preset plus explicit ones, resolved together once.
    fn requested_scopes(
        &self,
        preset: &str,
        scopes: &[String],
        bad: &mut Vec<FieldViolation>,
    ) -> ScopeSet {
        // The preset's scopes first (always known: the catalog checks presets).
        let mut names: Vec<&str> = Vec::new();
        if !preset.is_empty() {
            match self.catalog.preset(preset) {
                Some(preset) => names.extend(preset.scopes.iter().map(String::as_str)),
                None => bad.push(FieldViolation::new(
                    "preset",
                    format!("unknown preset {preset:?}"),
                )),
            }
        }
        let from_preset = names.len();
        names.extend(scopes.iter().map(String::as_str));
        if scopes.len() > MAX_SCOPES {
            bad.push(FieldViolation::new(
                "scopes",
                format!("at most {MAX_SCOPES} scopes, got {}", scopes.len()),
            ));
        }
        if preset.is_empty() && scopes.is_empty() {
            bad.push(FieldViolation::new(
                "scopes",
                "at least one scope is required (give scopes or a preset)",
            ));
        }
        self.catalog.resolve(&names).unwrap_or_else(|unknown| {
            bad.extend(unknown.violations("scopes", from_preset));
            ScopeSet::default()
        })
    }

    /// Whether `principal` may create a token for `owner` with `scopes` until `expires_at`:
    /// no minting for others without tokens:issue, no escalation, no outliving the caller.
    fn may_create(
        &self,
        principal: &Principal,
        owner: &Owner,
        scopes: &ScopeSet,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), Error> {
        match permission::access(principal, Action::Create, owner) {
            Access::Allowed => {}
            Access::Denied if principal.owner == *owner => {
                return Err(Error::PermissionDenied(
                    "creating tokens needs the user:write scope".into(),
                ));
            }
            _ => {
                return Err(Error::PermissionDenied(format!(
                    "org_id and user_id may name another owner only for callers holding {TOKENS_ISSUE}"
                )));
            }
        }
        match permission::may_grant(principal, &self.catalog.expand(scopes), expires_at) {
            Ok(()) => Ok(()),
            Err(GrantError::Reserved) => Err(Error::PermissionDenied(format!(
                "{TOKENS_ISSUE} is reserved and is granted only by operators (casola-auth token create)"
            ))),
            Err(GrantError::NotHeld(missing)) => Err(Error::PermissionDenied(format!(
                "a token cannot grant scopes its creator lacks: {}",
                missing.join(", ")
            ))),
            Err(GrantError::OutlivesCaller(limit)) => Err(Error::invalid(
                "expires_in_days",
                format!(
                    "the new token may not outlive the calling token, which expires at {}",
                    limit.to_rfc3339()
                ),
            )),
        }
    }

    /// A fresh token and the hash of its secret, computed on the argon2 pool.
    async fn new_secret(&self) -> Result<(PlainToken, SecretHash), Error> {
        let token = PlainToken::generate();
        let hasher = self.hasher.clone();
        let (token, hash) = self
            .pool
            .run(move || {
                let hash = hasher.hash(&token);
                (token, hash)
            })
            .await?;
        let hash = hash.map_err(|e| {
            tracing::error!(error = %e, "hashing a new token failed");
            Error::Internal
        })?;
        Ok((token, hash))
    }

    fn owner_for(
        &self,
        caller: &Caller,
        org: &str,
        user: &str,
        bad: &mut Vec<FieldViolation>,
    ) -> Option<Owner> {
        // Both or neither: an org_id alone would otherwise mint a token for the caller's
        // own user id inside another organisation.
        match (org.is_empty(), user.is_empty()) {
            (false, true) => {
                bad.push(FieldViolation::new(
                    "user_id",
                    "must be given together with org_id (or leave both empty for your own)",
                ));
                return None;
            }
            (true, false) => {
                bad.push(FieldViolation::new(
                    "org_id",
                    "must be given together with user_id (or leave both empty for your own)",
                ));
                return None;
            }
            _ => {}
        }
        let own = caller.owner();
        let org_id = owner_id("org_id", org, own.map(|o| &o.org_id), bad);
        let user_id = owner_id("user_id", user, own.map(|o| &o.user_id), bad);
        Some(Owner {
            org_id: org_id?,
            user_id: user_id?,
        })
    }

    /// Whether `record` is a service token (carries tokens:issue, implications expanded).
    fn is_service(&self, record: &TokenRecord) -> bool {
        let names: Vec<&str> = record.scopes.iter().map(String::as_str).collect();
        // A stored scope the catalog no longer knows cannot grant tokens:issue; the plain
        // name check covers the direct grant either way.
        record.scopes.iter().any(|s| s == TOKENS_ISSUE)
            || self
                .catalog
                .resolve(&names)
                .is_ok_and(|set| self.catalog.expand(&set).contains(TOKENS_ISSUE))
    }

    async fn visible(
        &self,
        caller: &Caller,
        id: Uuid,
        action: Action,
    ) -> Result<TokenRecord, Error> {
        let not_found = || Error::NotFound(format!("token {id} not found"));
        let record = self.store.get(id).await?.ok_or_else(not_found)?;
        if let Caller::Token(principal) = caller {
            let target = Target {
                owner: &record.owner,
                service: self.is_service(&record),
            };
            match permission::access_token(principal, action, target) {
                Access::Allowed => {}
                Access::Hidden => return Err(not_found()),
                Access::Denied => {
                    return Err(Error::PermissionDenied(format!(
                        "the calling token may not {} this token",
                        match action {
                            Action::Read => "read",
                            Action::Create => "create",
                            Action::Update => "update",
                            Action::Revoke => "revoke",
                        }
                    )));
                }
            }
        }
        Ok(record)
    }

    /// One token.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<TokenRecord, Error> {
        let id = parse_id(id)?;
        self.visible(caller, id, Action::Read).await
    }

    /// A page of tokens.
    pub async fn list(&self, caller: &Caller, req: ListRequest) -> Result<Page, Error> {
        let (query, size, fingerprint) = Self::list_query(caller, &req)?;
        if let Caller::Token(principal) = caller {
            Self::may_list(principal, &query)?;
        }
        let mut tokens = self.store.list(&query).await?;
        let next_page_token = if tokens.len() > size.get() {
            tokens.truncate(size.get());
            tokens.last().map(|last| {
                Cursor {
                    created_at: last.created_at,
                    id: last.id,
                }
                .to_page_token(&fingerprint)
            })
        } else {
            None
        };
        // Service tokens exist only for tokens:issue callers. Filtered after the page is
        // cut, so the cursor still moves past them: a page may come back shorter than
        // asked (AIP-158 allows it), never with a service token in it.
        if let Caller::Token(p) = caller
            && !p.has(TOKENS_ISSUE)
        {
            tokens.retain(|t| !self.is_service(t));
        }
        Ok(Page {
            tokens,
            next_page_token,
        })
    }

    /// The store query of a list request, its page size, and the description of its filters
    /// that binds its page tokens.
    fn list_query(
        caller: &Caller,
        req: &ListRequest,
    ) -> Result<(ListQuery, PageSize, String), Error> {
        let mut bad = Vec::new();
        let size = PageSize::parse(req.page_size)
            .map_err(|e| bad.push(FieldViolation::new("page_size", e)))
            .ok();
        let own = caller.owner();
        let org_id = owner_id("org_id", &req.org_id, own.map(|o| &o.org_id), &mut bad);
        // `-` lists every user of the organisation (AIP-159's wildcard).
        let user_id = if req.user_id == "-" {
            None
        } else {
            owner_id("user_id", &req.user_id, own.map(|o| &o.user_id), &mut bad)
        };
        let fingerprint = format!(
            "{}\0{}\0{}",
            org_id.as_ref().map_or("", OwnerId::as_str),
            user_id.as_ref().map_or("-", OwnerId::as_str),
            req.include_revoked
        );
        let after = (!req.page_token.is_empty())
            .then(|| Cursor::from_page_token(&req.page_token, &fingerprint))
            .transpose()
            .map_err(|e| bad.push(FieldViolation::new("page_token", e.to_string())))
            .ok()
            .flatten();
        let (Some(size), Some(org_id), true) = (size, org_id, bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        let query = ListQuery {
            org_id,
            user_id,
            include_revoked: req.include_revoked,
            after,
            limit: size.get() + 1,
        };
        Ok((query, size, fingerprint))
    }

    /// Whether `p` may list what `query` asks for.
    fn may_list(p: &Principal, query: &ListQuery) -> Result<(), Error> {
        let org_id = &query.org_id;
        let allowed = match &query.user_id {
            None => p.has(TOKENS_ISSUE) || (p.owner.org_id == *org_id && p.has(ADMIN_READ)),
            Some(user_id) => {
                let owner = Owner {
                    org_id: org_id.clone(),
                    user_id: user_id.clone(),
                };
                permission::access(p, Action::Read, &owner) == Access::Allowed
            }
        };
        if allowed {
            return Ok(());
        }
        let own_tokens =
            p.owner.org_id == *org_id && query.user_id.as_ref() == Some(&p.owner.user_id);
        Err(Error::PermissionDenied(if own_tokens {
            "listing tokens needs the user:read scope".into()
        } else if p.owner.org_id == *org_id {
            "listing another user's tokens needs the admin:read scope".into()
        } else {
            format!("listing another organisation's tokens needs {TOKENS_ISSUE}")
        }))
    }

    /// Changes name and/or description.
    pub async fn update(&self, caller: &Caller, req: UpdateRequest) -> Result<TokenRecord, Error> {
        let mut bad = Vec::new();
        let id = parse_id(&req.id)
            .map_err(|_| bad.push(FieldViolation::new("id", "must be a token id (UUID)")))
            .ok();
        let (mut want_name, mut want_description) = (false, false);
        if req.mask.is_empty() {
            want_name = !req.name.is_empty();
            want_description = !req.description.is_empty();
        }
        for path in &req.mask {
            match path.as_str() {
                "name" => want_name = true,
                "description" => want_description = true,
                other => bad.push(FieldViolation::new(
                    "update_mask",
                    format!("{other:?} cannot be updated; only name and description can"),
                )),
            }
        }
        if !want_name && !want_description && bad.is_empty() {
            bad.push(FieldViolation::new("update_mask", "nothing to update"));
        }
        let patch = TokenPatch {
            name: want_name
                .then(|| {
                    TokenName::parse(&req.name)
                        .map_err(|e| bad.push(FieldViolation::new("name", e)))
                        .ok()
                })
                .flatten(),
            description: want_description
                .then(|| {
                    Description::parse(&req.description)
                        .map_err(|e| bad.push(FieldViolation::new("description", e)))
                        .ok()
                })
                .flatten(),
        };
        let (Some(id), true) = (id, bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        let current = self.visible(caller, id, Action::Update).await?;
        if current.revoked_at.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "token {id} is revoked; a revoked token cannot be changed"
            )));
        }
        let record = self
            .store
            .update(id, &patch)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id} not found")))?;
        tracing::info!(token.id = %id, "token updated");
        Ok(record)
    }

    /// Revokes, at once and for good; a revoked token is returned unchanged.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<TokenRecord, Error> {
        let id = parse_id(id)?;
        self.visible(caller, id, Action::Revoke).await?;
        let record = self
            .store
            .revoke(id, now_micros())
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id} not found")))?;
        // This replica stops accepting it now; the others hear the store's notice.
        self.cache.revoked(record.lookup_id.clone());
        tracing::info!(token.id = %id, "token revoked");
        Ok(record)
    }

    /// The catalog, for ListScopes.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        authorize::VerifyPoolOptions, config::CacheConfig, store::memory::MemoryStore,
        token::hash::HashParams,
    };
    use proptest::prelude::*;

    fn manager() -> TokenManager {
        TokenManager::new(
            Arc::new(MemoryStore::new()),
            Arc::new(Catalog::default()),
            TokenHasher::new(HashParams::default()).unwrap(),
            VerifyPool::new(VerifyPoolOptions {
                workers: 1,
                queue: 1,
            }),
            TokenCache::new(CacheConfig::default(), true),
        )
    }

    #[test]
    fn a_page_token_that_does_not_decode_is_an_invalid_argument_on_page_token() {
        let manager = manager();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&any::<String>(), |raw| {
                // Anything but a token issued for this very query.
                prop_assume!(
                    !raw.is_empty() && Cursor::from_page_token(&raw, "org-1\0-\0false").is_err()
                );
                let req = ListRequest {
                    page_size: 10,
                    page_token: raw,
                    user_id: "-".into(),
                    org_id: "org-1".into(),
                    ..Default::default()
                };
                let err = runtime
                    .block_on(manager.list(&Caller::Operator, req))
                    .unwrap_err();
                let Error::InvalidArgument(fields) = err else {
                    return Err(TestCaseError::fail(format!(
                        "not INVALID_ARGUMENT: {err:?}"
                    )));
                };
                prop_assert_eq!(fields.len(), 1);
                prop_assert_eq!(&fields[0].field, "page_token");
                Ok(())
            })
            .unwrap();
    }
}
