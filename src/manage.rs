//! Token lifecycle use cases behind TokenService and the CLI: create, get, list, update,
//! revoke, rotate, offboard (revoke all), and reports of exposed tokens. Each validates its
//! whole request (every bad field reported at once), checks permissions with
//! [`crate::permission`], then calls the store.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    authorize::{VerifyPool, cache::TokenCache, fairness::FairnessLimits},
    error::{Error, FieldViolation},
    event::{Actor, EventContext, EventFilter, EventQuery, Origin, TokenEvent},
    pagination::{Cursor, PageSize, SeqCursor},
    permission::{self, Access, Action, GrantError, Target},
    principal::Principal,
    restriction::Restrictions,
    scope::{Catalog, ScopeSet, TOKENS_ISSUE},
    store::{
        ExpiringQuery, ListQuery, NewToken, OwnedTokens, RevocationReason, RotateOutcome, Rotation,
        RotationRequest, StoreError, TokenPatch, TokenRecord, TokenStore, now_micros,
    },
    token::{
        PlainToken, contains_token,
        fields::{Description, ExpiresInDays, Owner, OwnerId, TokenName},
        hash::{SecretHash, TokenHasher, Verification},
        redact,
        status::TokenStatus,
    },
};

/// Longest rotation overlap, in seconds (7 days).
pub const MAX_OVERLAP_SECONDS: i64 = 7 * 24 * 3600;
/// Longest rotation request id, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Most tokens in one exposure report.
pub const MAX_REPORTED_TOKENS: usize = 1000;
/// Longest `source_url` of an exposure report, in characters.
pub const MAX_SOURCE_URL_CHARS: usize = 2048;
/// Exposure reports processed at once by default; past it, RESOURCE_EXHAUSTED.
pub const DEFAULT_REPORT_SLOTS: usize = 4;

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
    /// Who the audit trail names for a change by this caller to a token of `target`: the
    /// CLI, an organisation admin (a token acting on a colleague's token), or a token (its
    /// owner's own, or a service token acting for any owner).
    pub fn actor_on(&self, target: &Owner) -> Actor {
        match self {
            Caller::Operator => Actor::Cli,
            Caller::Token(p) if p.owner != *target && !p.has(TOKENS_ISSUE) => {
                Actor::OrgAdmin(p.token_id)
            }
            Caller::Token(p) => Actor::Token(p.token_id),
        }
    }

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

/// What events to list; raw fields. Exactly one of `token_id` and `org_id`.
#[derive(Debug, Clone, Default)]
pub struct EventsRequest {
    /// One token's events.
    pub token_id: String,
    /// An organisation's events.
    pub org_id: String,
    /// Requested page size.
    pub page_size: i32,
    /// Previous page's token.
    pub page_token: String,
}

/// A page of the audit trail.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// Events, newest first.
    pub events: Vec<TokenEvent>,
    /// Token of the next page, if any.
    pub next_page_token: Option<String>,
}

/// Which expiring tokens to list; raw fields.
#[derive(Debug, Clone, Default)]
pub struct ExpiringRequest {
    /// Days ahead, 1-3650; 0 for the configured notice window.
    pub within_days: i32,
    /// Requested page size.
    pub page_size: i32,
    /// Previous page's token.
    pub page_token: String,
    /// Empty (own organisation), another organisation, or `-` (every organisation).
    pub org_id: String,
}

/// Most days ListExpiringTokens looks ahead (the longest expiry a token can have).
pub const MAX_WITHIN_DAYS: i32 = 3650;

/// What to rotate; raw fields, validated by [`TokenManager::rotate`].
#[derive(Debug, Clone, Default)]
pub struct RotateRequest {
    /// Token id.
    pub id: String,
    /// Seconds the old token keeps working, 0 to [`MAX_OVERLAP_SECONDS`].
    pub overlap_seconds: i64,
    /// Idempotency key, or empty.
    pub request_id: String,
}

/// A rotation: the replaced token, its replacement, and the replacement's plain token
/// (`None` on a retry: the secret was shown once, in the first answer).
#[derive(Debug)]
pub struct Rotated {
    /// The replaced token (revoked at the end of the overlap).
    pub old: TokenRecord,
    /// The new token.
    pub new: TokenRecord,
    /// The new plain token, shown once.
    pub token: Option<PlainToken>,
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
    /// The create pool: its own argon2 workers, so that hashing for creates never queues
    /// ahead of the gate's verifies.
    pool: VerifyPool,
    cache: TokenCache,
    /// Exposure reports being processed (each holds a permit until it is done).
    reports: Arc<Semaphore>,
    expires_soon: chrono::Duration,
    fairness: FairnessLimits,
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

/// A rotation request id: empty (none), or 1-128 characters without control characters and
/// without a pasted token.
fn check_request_id(raw: &str) -> Result<(), String> {
    let chars = raw.chars().count();
    if chars > MAX_REQUEST_ID_CHARS {
        return Err(format!(
            "must be at most {MAX_REQUEST_ID_CHARS} characters, is {chars}"
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if contains_token(raw) {
        return Err("looks like a token; use an opaque id such as a UUID".into());
    }
    Ok(())
}

fn request_id_reused(old_id: Uuid) -> Error {
    Error::invalid(
        "request_id",
        format!("was already used by this caller to rotate another token ({old_id})"),
    )
}

fn parse_id(raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw.trim()).map_err(|_| Error::invalid("id", "must be a token id (UUID)"))
}

impl TokenManager {
    /// A manager over `store`; `pool` hashes new secrets (not the verify pool of the gate),
    /// `fairness` holds the per-caller create limit.
    pub fn new(
        store: Arc<dyn TokenStore>,
        catalog: Arc<Catalog>,
        hasher: TokenHasher,
        pool: VerifyPool,
        cache: TokenCache,
        fairness: FairnessLimits,
    ) -> Self {
        Self {
            store,
            catalog,
            hasher,
            pool,
            cache,
            reports: Arc::new(Semaphore::new(DEFAULT_REPORT_SLOTS)),
            expires_soon: crate::config::ExpiryConfig::default().soon(),
            fairness,
        }
    }

    /// The same manager, processing at most `slots` exposure reports at once.
    pub fn with_report_slots(mut self, slots: usize) -> Self {
        self.reports = Arc::new(Semaphore::new(slots.max(1)));
        self
    }

    /// The same manager with another `expires_soon` window (`expiry.soon_days`).
    pub fn with_expires_soon(mut self, window: chrono::Duration) -> Self {
        self.expires_soon = window;
        self
    }

    /// A token expiring within this window of now is flagged `expires_soon`.
    pub fn expires_soon_window(&self) -> chrono::Duration {
        self.expires_soon
    }

    /// Creates a token.
    #[tracing::instrument(name = "create_token", skip_all)]
    pub async fn create(
        &self,
        caller: &Caller,
        origin: &Origin,
        req: CreateRequest,
    ) -> Result<Created, Error> {
        let valid = self.validate_create(caller, req)?;
        let ctx = EventContext::from_origin(caller.actor_on(&valid.owner), origin);
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
                // Per calling token, before any hashing: one caller's flood is refused here
                // instead of filling the create pool's queue for everyone.
                self.fairness
                    .take_create(principal.token_id)
                    .map_err(|limited| Error::RateLimited {
                        message: "too many tokens created by this caller",
                        retry_after: limited.retry_after,
                    })?;
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
            match self.store.insert(new, &ctx).await {
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

    /// A fresh token and the hash of its secret, computed on the create pool.
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
                            Action::Rotate => "rotate",
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
            None => permission::org_wide_read(p, Some(org_id)),
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

    /// Replaces a token with a copy that has a fresh secret; the old one works until the
    /// end of the overlap, which the store holds (see the `token_rotation` migration).
    #[tracing::instrument(name = "rotate_token", skip_all)]
    pub async fn rotate(
        &self,
        caller: &Caller,
        origin: &Origin,
        req: RotateRequest,
    ) -> Result<Rotated, Error> {
        let mut bad = Vec::new();
        let id = parse_id(&req.id)
            .map_err(|_| bad.push(FieldViolation::new("id", "must be a token id (UUID)")))
            .ok();
        if !(0..=MAX_OVERLAP_SECONDS).contains(&req.overlap_seconds) {
            bad.push(FieldViolation::new(
                "overlap_seconds",
                format!(
                    "must be between 0 and {MAX_OVERLAP_SECONDS} (7 days), is {}",
                    req.overlap_seconds
                ),
            ));
        }
        let request_id = req.request_id.trim();
        if let Err(e) = check_request_id(request_id) {
            bad.push(FieldViolation::new("request_id", e));
        }
        let (Some(id), true) = (id, bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        let request = (!request_id.is_empty()).then(|| RotationRequest {
            requested_by: match caller {
                Caller::Token(p) => p.as_creator(),
                Caller::Operator => "cli".to_owned(),
            },
            request_id: request_id.to_owned(),
        });
        let old = self.visible(caller, id, Action::Rotate).await?;
        // A retry is answered before any hashing, whatever has happened to the old token
        // since (it is inside its overlap now, or past it).
        if let Some(request) = &request
            && let Some((old_id, new_id)) = self.store.find_rotation(request).await?
        {
            return self.replayed(id, old_id, new_id).await;
        }
        let now = now_micros();
        Self::rotatable(&old, now)?;
        let (created_by, restrictions) = match caller {
            Caller::Token(principal) => {
                let names: Vec<&str> = old.scopes.iter().map(String::as_str).collect();
                let scopes = self.catalog.expand(&self.catalog.from_stored(&names));
                match permission::may_copy(principal, &scopes, old.expires_at) {
                    Ok(()) => {}
                    Err(GrantError::Reserved) => {
                        return Err(Error::PermissionDenied(format!(
                            "rotating a token that carries {TOKENS_ISSUE} needs {TOKENS_ISSUE}"
                        )));
                    }
                    Err(GrantError::NotHeld(missing)) => {
                        return Err(Error::PermissionDenied(format!(
                            "the calling token receives the new secret, so it must hold the token's scopes; it lacks: {}",
                            missing.join(", ")
                        )));
                    }
                    Err(GrantError::OutlivesCaller(limit)) => {
                        return Err(Error::FailedPrecondition(format!(
                            "the new token would outlive the calling token, which expires at {}",
                            limit.to_rfc3339()
                        )));
                    }
                }
                // Receiving the new secret is minting: a restricted caller cannot rotate its
                // way out of its own networks and models. A copy is never narrowed behind
                // its owner's back either: a token wider than the caller is refused.
                let inside = old
                    .restrictions
                    .clone()
                    .within(principal.restrictions())
                    .is_ok_and(|narrowed| narrowed == old.restrictions);
                if !inside {
                    return Err(Error::PermissionDenied(
                        "the calling token receives the new secret, so the token's allowed \
                         networks and models must lie inside the calling token's"
                            .to_owned(),
                    ));
                }
                (principal.as_creator(), old.restrictions.clone())
            }
            Caller::Operator => ("cli".to_owned(), old.restrictions.clone()),
        };
        let (name, description) = (
            TokenName::parse(&old.name).map_err(|_| Error::Internal)?,
            Description::parse(&old.description).map_err(|_| Error::Internal)?,
        );
        let old_ends_at = now + chrono::Duration::seconds(req.overlap_seconds);
        let ctx = EventContext::from_origin(caller.actor_on(&old.owner), origin);
        for _ in 0..2 {
            let (token, secret_hash) = self.new_secret().await?;
            let rotation = Rotation {
                old_id: id,
                new: NewToken {
                    id: Uuid::new_v4(),
                    lookup_id: token.lookup_id().clone(),
                    secret_hash,
                    name: name.clone(),
                    description: description.clone(),
                    scopes: old.scopes.clone(),
                    owner: old.owner.clone(),
                    created_at: now,
                    created_by: created_by.clone(),
                    // Never later than the old one's: the same.
                    expires_at: old.expires_at,
                    // Never wider: the same networks and models (inside a restricted
                    // caller's: see above).
                    restrictions: restrictions.clone(),
                },
                now,
                old_ends_at,
                request: request.clone(),
            };
            let outcome = match self.store.rotate(rotation, &ctx).await {
                Ok(outcome) => outcome,
                // A lookup-id collision, or a concurrent retry that recorded the request
                // id first: the next round (or find_rotation) sorts it out.
                Err(StoreError::Conflict(_)) => {
                    if let Some(request) = &request
                        && let Some((old_id, new_id)) = self.store.find_rotation(request).await?
                    {
                        return self.replayed(id, old_id, new_id).await;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            return match outcome {
                RotateOutcome::Rotated { old, new } => {
                    // This replica re-reads the old token now; the others hear the store's
                    // notice and change log, written in the same transaction.
                    self.cache.revoked(old.lookup_id.clone());
                    tracing::info!(token.id = %old.id, new_token.id = %new.id, overlap_seconds = req.overlap_seconds, "token rotated");
                    Ok(Rotated {
                        old,
                        new,
                        token: Some(token),
                    })
                }
                RotateOutcome::Replayed { old, new } => Ok(Rotated {
                    old,
                    new,
                    token: None,
                }),
                RotateOutcome::RequestIdReused { old_id } => Err(request_id_reused(old_id)),
                RotateOutcome::NotFound => Err(Error::NotFound(format!("token {id} not found"))),
                RotateOutcome::NotActive(record) => {
                    Self::rotatable(&record, now)?;
                    Err(Error::Internal)
                }
            };
        }
        Err(Error::Internal)
    }

    /// The answer to a retried rotation: the tokens of the first attempt, no secret.
    async fn replayed(&self, id: Uuid, old_id: Uuid, new_id: Uuid) -> Result<Rotated, Error> {
        if old_id != id {
            return Err(request_id_reused(old_id));
        }
        let (Some(old), Some(new)) = (self.store.get(old_id).await?, self.store.get(new_id).await?)
        else {
            tracing::error!(token.id = %old_id, new_token.id = %new_id, "a recorded rotation names a missing token");
            return Err(Error::Internal);
        };
        Ok(Rotated {
            old,
            new,
            token: None,
        })
    }

    /// Whether `record` may be rotated at `now`: active, and not inside an overlap.
    fn rotatable(record: &TokenRecord, now: DateTime<Utc>) -> Result<(), Error> {
        let id = record.id;
        match record.status_at(now) {
            TokenStatus::Revoked => Err(Error::FailedPrecondition(format!(
                "token {id} is revoked; only an active token can be rotated"
            ))),
            TokenStatus::Expired => Err(Error::FailedPrecondition(format!(
                "token {id} has expired; only an active token can be rotated"
            ))),
            TokenStatus::Active => match (record.revoked_at, record.replaced_by) {
                (None, _) => Ok(()),
                (Some(_), Some(replaced_by)) => Err(Error::AlreadyRotated { id, replaced_by }),
                (Some(at), None) => Err(Error::FailedPrecondition(format!(
                    "token {id} is revoked from {}; it cannot be rotated",
                    at.to_rfc3339()
                ))),
            },
        }
    }

    /// Revokes every working token of one user (or, with user_id `-`, of a whole
    /// organisation) in one transaction; returns how many. Service tokens are left alone
    /// unless the caller holds tokens:issue (or is the CLI).
    #[tracing::instrument(name = "revoke_tokens", skip_all)]
    pub async fn revoke_all(
        &self,
        caller: &Caller,
        origin: &Origin,
        org_id: &str,
        user_id: &str,
    ) -> Result<Vec<TokenRecord>, Error> {
        let mut bad = Vec::new();
        let own = caller.owner();
        let org = owner_id("org_id", org_id.trim(), own.map(|o| &o.org_id), &mut bad);
        let user = match user_id.trim() {
            "-" => None,
            "" => {
                bad.push(FieldViolation::new(
                    "user_id",
                    "must be a user id, or - for every user of the organisation",
                ));
                None
            }
            raw => OwnerId::parse(raw)
                .map_err(|e| bad.push(FieldViolation::new("user_id", e)))
                .ok(),
        };
        let (Some(org), true) = (org, bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        let mut except_scopes = Vec::new();
        if let Caller::Token(p) = caller {
            match permission::may_revoke_all(p, &org) {
                Access::Allowed => {}
                Access::Denied => {
                    return Err(Error::PermissionDenied(
                        "revoking every token of a user or organisation needs admin:write".into(),
                    ));
                }
                Access::Hidden => {
                    return Err(Error::PermissionDenied(format!(
                        "revoking tokens of another organisation needs {TOKENS_ISSUE}"
                    )));
                }
            }
            if !p.has(TOKENS_ISSUE) {
                except_scopes = self.service_scopes();
            }
        }
        // The caller's own tokens (a user offboarding itself) name it as a token; anyone
        // else's, as an organisation admin (or the service token, or the CLI).
        let actor = match (caller, &user) {
            (Caller::Token(_), Some(user)) => caller.actor_on(&Owner {
                org_id: org.clone(),
                user_id: user.clone(),
            }),
            (Caller::Token(p), None) if !p.has(TOKENS_ISSUE) => Actor::OrgAdmin(p.token_id),
            (Caller::Token(p), None) => Actor::Token(p.token_id),
            (Caller::Operator, _) => Actor::Cli,
        };
        let ctx = EventContext::from_origin(actor, origin);
        let which = OwnedTokens {
            org_id: org,
            user_id: user,
            except_scopes,
        };
        let revoked = self
            .store
            .revoke_owned(&which, now_micros(), RevocationReason::Offboarded, &ctx)
            .await?;
        for record in &revoked {
            self.cache.revoked(record.lookup_id.clone());
        }
        tracing::info!(org.id = %which.org_id, user.id = which.user_id.as_ref().map_or("-", OwnerId::as_str), count = revoked.len(), "tokens revoked (offboarding)");
        Ok(revoked)
    }

    /// The catalog's scopes that grant tokens:issue (directly or through implications).
    fn service_scopes(&self) -> Vec<String> {
        self.catalog
            .categories()
            .iter()
            .flat_map(|c| c.scopes.iter())
            .filter(|s| {
                self.catalog
                    .expand(&self.catalog.from_stored(std::slice::from_ref(&s.name)))
                    .contains(TOKENS_ISSUE)
            })
            .map(|s| s.name.clone())
            .chain(std::iter::once(TOKENS_ISSUE.to_owned()))
            .collect()
    }

    /// Accepts a report of exposed tokens: checks its shape, then revokes each valid token
    /// in the background, so that neither the answer nor its timing depends on which of
    /// the strings were valid tokens. Returns how many strings were received. The strings
    /// are never logged or stored.
    #[tracing::instrument(name = "report_exposed_tokens", skip_all)]
    pub fn report_exposed(
        &self,
        origin: &Origin,
        tokens: Vec<String>,
        source_url: &str,
    ) -> Result<usize, Error> {
        let mut bad = Vec::new();
        if tokens.len() > MAX_REPORTED_TOKENS {
            bad.push(FieldViolation::new(
                "tokens",
                format!(
                    "at most {MAX_REPORTED_TOKENS} tokens per report, got {}",
                    tokens.len()
                ),
            ));
        }
        let url_chars = source_url.chars().count();
        if url_chars > MAX_SOURCE_URL_CHARS {
            bad.push(FieldViolation::new(
                "source_url",
                format!("must be at most {MAX_SOURCE_URL_CHARS} characters, is {url_chars}"),
            ));
        } else if source_url.chars().any(char::is_control) {
            bad.push(FieldViolation::new(
                "source_url",
                "must not contain control characters",
            ));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let received = tokens.len();
        let Ok(permit) = self.reports.clone().try_acquire_owned() else {
            return Err(Error::ResourceExhausted(
                "too many exposure reports in progress; retry later",
            ));
        };
        // Only well-formed tokens go on; what is not one is dropped here, unlooked-at.
        let mut parsed: Vec<PlainToken> = tokens
            .iter()
            .filter_map(|t| PlainToken::parse(t.trim()).ok())
            .collect();
        drop(tokens);
        parsed.sort_by(|a, b| a.expose().cmp(b.expose()));
        parsed.dedup_by(|a, b| a.expose() == b.expose());
        let this = self.clone();
        let ctx = EventContext::from_origin(Actor::Anonymous, origin);
        // A source URL may hold a pasted token: logged redacted.
        let source = redact(source_url).into_owned();
        tokio::spawn(async move {
            let revoked = this.revoke_exposed(parsed, &ctx).await;
            tracing::info!(received, revoked, source_url = %source, "exposure report processed");
            drop(permit);
        });
        Ok(received)
    }

    /// Revokes each of `tokens` that is a valid token; returns how many were.
    async fn revoke_exposed(&self, tokens: Vec<PlainToken>, ctx: &EventContext) -> usize {
        let mut revoked = 0;
        for token in tokens {
            match self.revoke_if_valid(token, ctx).await {
                Ok(true) => revoked += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "an exposed token could not be checked"),
            }
        }
        revoked
    }

    async fn revoke_if_valid(&self, token: PlainToken, ctx: &EventContext) -> Result<bool, Error> {
        let Some(record) = self.store.find_by_lookup_id(token.lookup_id()).await? else {
            return Ok(false);
        };
        let now = now_micros();
        // Revoked for good already: nothing to do. A token inside a rotation overlap still
        // works, so it is revoked now.
        if record.status_at(now) != TokenStatus::Active {
            return Ok(false);
        }
        if !self.verified(token, record.secret_hash.clone()).await? {
            return Ok(false);
        }
        let record = self
            .store
            .revoke_for(record.id, now, RevocationReason::Exposed, ctx)
            .await?;
        if let Some(record) = record {
            self.cache.revoked(record.lookup_id.clone());
            tracing::warn!(token.id = %record.id, "token revoked: reported as exposed");
        }
        Ok(true)
    }

    /// Whether `token` matches `stored`, on the argon2 pool; a full pool is waited out
    /// (briefly, a bounded number of times) rather than dropping the report.
    async fn verified(&self, token: PlainToken, stored: SecretHash) -> Result<bool, Error> {
        let token = Arc::new(token);
        for attempt in 0..50 {
            let (hasher, t, s) = (self.hasher.clone(), token.clone(), stored.clone());
            match self.pool.run(move || hasher.verify(&t, &s)).await {
                Ok(verification) => {
                    return Ok(matches!(verification, Ok(Verification::Match { .. })));
                }
                Err(Error::ResourceExhausted(_)) if attempt < 49 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::ResourceExhausted("verify pool full"))
    }

    /// Changes name and/or description.
    pub async fn update(
        &self,
        caller: &Caller,
        origin: &Origin,
        req: UpdateRequest,
    ) -> Result<TokenRecord, Error> {
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
        // A token inside a rotation overlap still works, and may still be renamed.
        if current.status_at(now_micros()) == TokenStatus::Revoked {
            return Err(Error::FailedPrecondition(format!(
                "token {id} is revoked; a revoked token cannot be changed"
            )));
        }
        let ctx = EventContext::from_origin(caller.actor_on(&current.owner), origin);
        let record = self
            .store
            .update(id, &patch, &ctx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id} not found")))?;
        tracing::info!(token.id = %id, "token updated");
        Ok(record)
    }

    /// Revokes, at once and for good; a revoked token is returned unchanged.
    pub async fn revoke(
        &self,
        caller: &Caller,
        origin: &Origin,
        id: &str,
    ) -> Result<TokenRecord, Error> {
        let id = parse_id(id)?;
        let current = self.visible(caller, id, Action::Revoke).await?;
        let ctx = EventContext::from_origin(caller.actor_on(&current.owner), origin);
        let record = self
            .store
            .revoke(id, now_micros(), &ctx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id} not found")))?;
        // This replica stops accepting it now; the others hear the store's notice.
        self.cache.revoked(record.lookup_id.clone());
        tracing::info!(token.id = %id, "token revoked");
        Ok(record)
    }

    /// A page of the audit trail: of one token (whoever may read it), or of an
    /// organisation (as ListTokens of every user: admin:read there, or tokens:issue).
    /// Events of service tokens are left out for callers without tokens:issue.
    pub async fn events(&self, caller: &Caller, req: EventsRequest) -> Result<EventPage, Error> {
        let mut bad = Vec::new();
        let size = PageSize::parse(req.page_size)
            .map_err(|e| bad.push(FieldViolation::new("page_size", e)))
            .ok();
        let filter = match (req.token_id.trim().is_empty(), req.org_id.is_empty()) {
            (false, true) => parse_id(&req.token_id)
                .map_err(|_| bad.push(FieldViolation::new("token_id", "must be a token id (UUID)")))
                .ok()
                .map(EventFilter::Token),
            (true, false) => OwnerId::parse(&req.org_id)
                .map_err(|e| bad.push(FieldViolation::new("org_id", e)))
                .ok()
                .map(EventFilter::Org),
            (true, true) => {
                bad.push(FieldViolation::new(
                    "token_id",
                    "give token_id (one token's events) or org_id (an organisation's)",
                ));
                None
            }
            (false, false) => {
                bad.push(FieldViolation::new(
                    "org_id",
                    "give either token_id or org_id, not both",
                ));
                None
            }
        };
        let fingerprint = match &filter {
            Some(EventFilter::Token(id)) => format!("events\0token\0{id}"),
            Some(EventFilter::Org(org)) => format!("events\0org\0{org}"),
            None => String::new(),
        };
        let before = (!req.page_token.is_empty())
            .then(|| SeqCursor::from_page_token(&req.page_token, &fingerprint))
            .transpose()
            .map_err(|e| bad.push(FieldViolation::new("page_token", e.to_string())))
            .ok()
            .flatten();
        let (Some(size), Some(filter), true) = (size, filter, bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        if let Caller::Token(principal) = caller {
            match &filter {
                EventFilter::Token(id) => {
                    self.visible(caller, *id, Action::Read).await?;
                }
                EventFilter::Org(org) if !permission::org_wide_read(principal, Some(org)) => {
                    return Err(Error::PermissionDenied(if principal.owner.org_id == *org {
                        "listing an organisation's events needs the admin:read scope".into()
                    } else {
                        format!("listing another organisation's events needs {TOKENS_ISSUE}")
                    }));
                }
                EventFilter::Org(_) => {}
            }
        }
        let mut events = self
            .store
            .list_events(&EventQuery {
                filter: filter.clone(),
                before: before.map(|c| c.0),
                limit: size.get() + 1,
            })
            .await?;
        let next_page_token = if events.len() > size.get() {
            events.truncate(size.get());
            events
                .last()
                .map(|last| SeqCursor(last.id).to_page_token(&fingerprint))
        } else {
            None
        };
        // As in `list`: filtered after the page is cut, so the cursor moves past them.
        if let (Caller::Token(p), EventFilter::Org(_)) = (caller, &filter)
            && !p.has(TOKENS_ISSUE)
        {
            let mut ids: Vec<Uuid> = events.iter().map(|e| e.event.token_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let service: std::collections::HashSet<Uuid> = self
                .store
                .get_many(&ids)
                .await?
                .iter()
                .filter(|t| self.is_service(t))
                .map(|t| t.id)
                .collect();
            events.retain(|e| !service.contains(&e.event.token_id));
        }
        Ok(EventPage {
            events,
            next_page_token,
        })
    }

    /// A page of active tokens expiring within a window, soonest first: organisation-wide
    /// (admin:read in the caller's organisation), or any or every organisation
    /// (tokens:issue). Service tokens are left out for callers without tokens:issue.
    pub async fn expiring(&self, caller: &Caller, req: ExpiringRequest) -> Result<Page, Error> {
        let mut bad = Vec::new();
        let size = PageSize::parse(req.page_size)
            .map_err(|e| bad.push(FieldViolation::new("page_size", e)))
            .ok();
        let window = match req.within_days {
            0 => Some(self.expires_soon),
            d if (1..=MAX_WITHIN_DAYS).contains(&d) => Some(chrono::Duration::days(d.into())),
            d => {
                bad.push(FieldViolation::new(
                    "within_days",
                    format!(
                        "must be between 1 and {MAX_WITHIN_DAYS} (or 0 for the default), is {d}"
                    ),
                ));
                None
            }
        };
        // `-`: every organisation (AIP-159's wildcard); `None` below.
        let org_id = if req.org_id == "-" {
            Some(None)
        } else {
            owner_id(
                "org_id",
                &req.org_id,
                caller.owner().map(|o| &o.org_id),
                &mut bad,
            )
            .map(Some)
        };
        let fingerprint = format!(
            "expiring\0{}\0{}",
            req.within_days,
            org_id
                .as_ref()
                .and_then(|o| o.as_ref())
                .map_or("-", OwnerId::as_str)
        );
        let after = (!req.page_token.is_empty())
            .then(|| Cursor::from_page_token(&req.page_token, &fingerprint))
            .transpose()
            .map_err(|e| bad.push(FieldViolation::new("page_token", e.to_string())))
            .ok()
            .flatten();
        let (Some(size), Some(window), Some(org_id), true) = (size, window, org_id, bad.is_empty())
        else {
            return Err(Error::InvalidArgument(bad));
        };
        if let Caller::Token(p) = caller
            && !permission::org_wide_read(p, org_id.as_ref())
        {
            return Err(Error::PermissionDenied(match &org_id {
                Some(org) if p.owner.org_id == *org => {
                    "listing an organisation's expiring tokens needs the admin:read scope".into()
                }
                _ => format!("listing another organisation's expiring tokens needs {TOKENS_ISSUE}"),
            }));
        }
        let now = now_micros();
        let mut tokens = self
            .store
            .list_expiring(&ExpiringQuery {
                org_id,
                after_time: now,
                until: now + window,
                after,
                limit: size.get() + 1,
            })
            .await?;
        let next_page_token = if tokens.len() > size.get() {
            tokens.truncate(size.get());
            tokens.last().and_then(|last| {
                Some(
                    Cursor {
                        created_at: last.expires_at?,
                        id: last.id,
                    }
                    .to_page_token(&fingerprint),
                )
            })
        } else {
            None
        };
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
            })
            .unwrap(),
            TokenCache::new(CacheConfig::default(), true),
            FairnessLimits::new(crate::config::LimitsConfig::default().fairness()),
        )
    }

    /// Who the audit trail names: the CLI, a token on its owner's tokens or a service token
    /// anywhere, an organisation admin on a colleague's.
    #[test]
    fn the_actor_of_a_change_depends_on_whose_token_it_touches() {
        let catalog = Catalog::default();
        let owner = |org: &str, user: &str| Owner {
            org_id: OwnerId::parse(org).unwrap(),
            user_id: OwnerId::parse(user).unwrap(),
        };
        let principal = |scopes: &[&str]| Principal {
            token_id: Uuid::new_v4(),
            owner: owner("acme", "alice"),
            scopes: catalog.expand(&catalog.resolve(scopes).unwrap()),
            expires_at: None,
            restrictions: None,
        };
        let alice = owner("acme", "alice");
        let bob = owner("acme", "bob");
        assert_eq!(Caller::Operator.actor_on(&bob), Actor::Cli);
        let user = principal(&["user:write"]);
        assert_eq!(
            Caller::Token(user.clone()).actor_on(&alice),
            Actor::Token(user.token_id)
        );
        let admin = principal(&["admin:write"]);
        assert_eq!(
            Caller::Token(admin.clone()).actor_on(&bob),
            Actor::OrgAdmin(admin.token_id)
        );
        let issuer = principal(&[TOKENS_ISSUE]);
        assert_eq!(
            Caller::Token(issuer.clone()).actor_on(&owner("globex", "carol")),
            Actor::Token(issuer.token_id)
        );
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
