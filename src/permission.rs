//! Who may do what on TokenService (design.md section 5), as pure functions.
//!
//! - own tokens: read with user:read (or admin:read), create/update/revoke with user:write
//!   (revoke also with admin:write);
//! - the caller's organisation: admin:read reads every token, admin:write revokes any;
//! - rotate: whoever may revoke the token (and the copy may not outlive the caller, nor
//!   carry scopes the caller lacks);
//! - offboarding (revoke every token of a user or organisation): admin:write within the
//!   caller's organisation, tokens:issue anywhere;
//! - tokens:issue (the dashboard backend): everything, for any owner;
//! - organisation-wide listings (every token, the audit trail, expiring tokens): admin:read
//!   in the caller's own organisation, tokens:issue in any or across all;
//! - service tokens (those carrying tokens:issue) exist only for tokens:issue callers:
//!   hidden from everyone else, their own owner and organisation admins included, so that
//!   no org admin can list or revoke the dashboard backend's token;
//! - a new token's scopes must be held by the caller (no escalation) and it may not outlive
//!   the caller's token; tokens:issue is never granted through the API.

use chrono::{DateTime, Utc};

use crate::{
    principal::Principal,
    scope::{ADMIN_READ, ADMIN_WRITE, ScopeSet, TOKENS_ISSUE, USER_READ, USER_WRITE},
    token::fields::{Owner, OwnerId},
};

/// An operation on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Get or list.
    Read,
    /// Create a token for the owner.
    Create,
    /// Change name or description.
    Update,
    /// Revoke.
    Revoke,
    /// Replace with a copy (RotateToken): allowed exactly where Revoke is.
    Rotate,
}

/// The answer of [`access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Permitted.
    Allowed,
    /// The caller may see the token but not do this: PERMISSION_DENIED.
    Denied,
    /// The caller may not even see the token: NOT_FOUND, so existence is not revealed.
    Hidden,
}

/// May `caller` perform `action` on a token owned by `owner`?
pub fn access(caller: &Principal, action: Action, owner: &Owner) -> Access {
    if caller.has(TOKENS_ISSUE) {
        return Access::Allowed;
    }
    let own = caller.owner == *owner;
    let same_org = caller.owner.org_id == owner.org_id;
    let allowed = match (action, own) {
        (Action::Read, true) => caller.has(USER_READ) || caller.has(ADMIN_READ),
        (Action::Create | Action::Update, true) => caller.has(USER_WRITE),
        (Action::Revoke | Action::Rotate, true) => {
            caller.has(USER_WRITE) || caller.has(ADMIN_WRITE)
        }
        (Action::Read, false) => same_org && caller.has(ADMIN_READ),
        (Action::Revoke | Action::Rotate, false) => same_org && caller.has(ADMIN_WRITE),
        (Action::Create | Action::Update, false) => false,
    };
    if allowed {
        Access::Allowed
    } else if own || (same_org && caller.has(ADMIN_READ)) {
        Access::Denied
    } else {
        Access::Hidden
    }
}

/// May `caller` read organisation-wide listings of `org` (every user's tokens, the
/// organisation's audit trail, its expiring tokens)? `None` is every organisation at once,
/// which only tokens:issue may read. Service tokens stay hidden inside such a listing from
/// callers without tokens:issue ([`access_token`]).
pub fn org_wide_read(caller: &Principal, org: Option<&OwnerId>) -> bool {
    caller.has(TOKENS_ISSUE)
        || org.is_some_and(|o| caller.owner.org_id == *o && caller.has(ADMIN_READ))
}

/// The token an action is about: its owner, and whether it is a service token (it carries
/// tokens:issue, implications expanded).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Who owns it.
    pub owner: &'a Owner,
    /// It carries tokens:issue.
    pub service: bool,
}

/// May `caller` perform `action` on an existing token? As [`access`], except that a
/// service token is [`Access::Hidden`] from every caller without tokens:issue: it can be
/// neither seen nor touched through the API (the CLI still can).
pub fn access_token(caller: &Principal, action: Action, target: Target<'_>) -> Access {
    if target.service && !caller.has(TOKENS_ISSUE) {
        return Access::Hidden;
    }
    access(caller, action, target.owner)
}

/// Why a new token may not be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// The reserved service scope was asked for.
    Reserved,
    /// Scopes the caller does not hold.
    NotHeld(Vec<String>),
    /// The new token would outlive the caller's, which expires at this time.
    OutlivesCaller(DateTime<Utc>),
}

/// May `caller` revoke every token of organisation `org_id` (one user's, or all of them)?
/// admin:write within its own organisation, tokens:issue anywhere. Service tokens are left
/// out for callers without tokens:issue (see [`access_token`]).
pub fn may_revoke_all(caller: &Principal, org_id: &OwnerId) -> Access {
    if caller.has(TOKENS_ISSUE) || (caller.owner.org_id == *org_id && caller.has(ADMIN_WRITE)) {
        Access::Allowed
    } else if caller.owner.org_id == *org_id {
        Access::Denied
    } else {
        Access::Hidden
    }
}

/// Checks that `caller` may receive a copy of a token with these (expanded) scopes and
/// expiry (RotateToken). As [`may_grant`], except that tokens:issue is no obstacle: the
/// caller can only reach a service token if it holds tokens:issue itself
/// ([`access_token`]), and the copy grants nothing the old token did not.
pub fn may_copy(
    caller: &Principal,
    scopes: &ScopeSet,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), GrantError> {
    match may_grant(caller, scopes, expires_at) {
        Err(GrantError::Reserved) if caller.has(TOKENS_ISSUE) => match caller.expires_at {
            Some(limit) if expires_at.is_none_or(|e| e > limit) => {
                Err(GrantError::OutlivesCaller(limit))
            }
            _ => Ok(()),
        },
        other => other,
    }
}

/// Checks that `caller` may mint a token with these (expanded) scopes and expiry.
pub fn may_grant(
    caller: &Principal,
    requested: &ScopeSet,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), GrantError> {
    if requested.contains(TOKENS_ISSUE) {
        return Err(GrantError::Reserved);
    }
    if !caller.has(TOKENS_ISSUE) {
        let not_held = requested.difference(&caller.scopes);
        if !not_held.is_empty() {
            return Err(GrantError::NotHeld(not_held));
        }
    }
    if let Some(limit) = caller.expires_at
        && expires_at.is_none_or(|e| e > limit)
    {
        return Err(GrantError::OutlivesCaller(limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Catalog;
    use uuid::Uuid;

    fn owner(org: &str, user: &str) -> Owner {
        Owner {
            org_id: OwnerId::parse(org).unwrap(),
            user_id: OwnerId::parse(user).unwrap(),
        }
    }

    fn caller(scopes: &[&str]) -> Principal {
        let c = Catalog::default();
        Principal {
            token_id: Uuid::new_v4(),
            owner: owner("acme", "alice"),
            scopes: c.expand(&c.resolve(scopes).unwrap()),
            expires_at: None,
            restrictions: None,
        }
    }

    use Access::{Allowed as A, Denied as D, Hidden as H};
    use Action::{Create, Read, Revoke, Rotate, Update};

    /// Every single-scope caller x every action x every kind of owner.
    #[test]
    fn permission_table_for_every_scope_and_operation() {
        let own = owner("acme", "alice");
        let colleague = owner("acme", "bob");
        let stranger = owner("globex", "carol");
        //  scope,        action,  own, colleague, other org
        let table: &[(&[&str], Action, Access, Access, Access)] = &[
            (&[], Read, D, H, H),
            (&[], Create, D, H, H),
            (&[], Update, D, H, H),
            (&[], Revoke, D, H, H),
            (&[], Rotate, D, H, H),
            (&[USER_READ], Read, A, H, H),
            (&[USER_READ], Create, D, H, H),
            (&[USER_READ], Update, D, H, H),
            (&[USER_READ], Revoke, D, H, H),
            (&[USER_READ], Rotate, D, H, H),
            (&[USER_WRITE], Read, A, H, H),
            (&[USER_WRITE], Create, A, H, H),
            (&[USER_WRITE], Update, A, H, H),
            (&[USER_WRITE], Revoke, A, H, H),
            (&[USER_WRITE], Rotate, A, H, H),
            (&[ADMIN_READ], Read, A, A, H),
            (&[ADMIN_READ], Create, D, D, H),
            (&[ADMIN_READ], Update, D, D, H),
            (&[ADMIN_READ], Revoke, D, D, H),
            (&[ADMIN_READ], Rotate, D, D, H),
            (&[ADMIN_WRITE], Read, A, A, H),
            (&[ADMIN_WRITE], Create, D, D, H),
            (&[ADMIN_WRITE], Update, D, D, H),
            (&[ADMIN_WRITE], Revoke, A, A, H),
            (&[ADMIN_WRITE], Rotate, A, A, H),
            (&[TOKENS_ISSUE], Read, A, A, A),
            (&[TOKENS_ISSUE], Create, A, A, A),
            (&[TOKENS_ISSUE], Update, A, A, A),
            (&[TOKENS_ISSUE], Revoke, A, A, A),
            (&[TOKENS_ISSUE], Rotate, A, A, A),
        ];
        for &(scopes, action, want_own, want_colleague, want_stranger) in table {
            let c = caller(scopes);
            assert_eq!(
                access(&c, action, &own),
                want_own,
                "{scopes:?} {action:?} own"
            );
            assert_eq!(
                access(&c, action, &colleague),
                want_colleague,
                "{scopes:?} {action:?} colleague"
            );
            assert_eq!(
                access(&c, action, &stranger),
                want_stranger,
                "{scopes:?} {action:?} other org"
            );
        }
    }

    /// A service token (carrying tokens:issue), owned by the caller itself, by a colleague
    /// or by another organisation: every caller without tokens:issue is told NOT_FOUND for
    /// every action, whatever admin scopes it holds.
    #[test]
    fn service_tokens_are_hidden_from_everyone_but_token_issuers() {
        let owners = [
            owner("acme", "alice"),
            owner("acme", "backend"),
            owner("globex", "carol"),
        ];
        //  caller scopes,                         what it gets on a service token
        let table: &[(&[&str], Access)] = &[
            (&[], H),
            (&[USER_READ], H),
            (&[USER_WRITE], H),
            (&[ADMIN_READ], H),
            (&[ADMIN_WRITE], H),
            (&[USER_WRITE, ADMIN_WRITE], H),
            (&[TOKENS_ISSUE], A),
            (&[TOKENS_ISSUE, ADMIN_WRITE], A),
        ];
        for &(scopes, want) in table {
            let c = caller(scopes);
            for action in [Read, Update, Revoke, Rotate] {
                for o in &owners {
                    let target = Target {
                        owner: o,
                        service: true,
                    };
                    assert_eq!(
                        access_token(&c, action, target),
                        want,
                        "{scopes:?} {action:?} {o:?}"
                    );
                }
            }
        }
    }

    /// On an ordinary token, `access_token` is `access`.
    #[test]
    fn ordinary_tokens_follow_the_permission_table() {
        let colleague = owner("acme", "bob");
        for scopes in [
            &[][..],
            &[USER_READ],
            &[ADMIN_READ],
            &[ADMIN_WRITE],
            &[TOKENS_ISSUE],
        ] {
            let c = caller(scopes);
            for action in [Read, Update, Revoke, Rotate] {
                let target = Target {
                    owner: &colleague,
                    service: false,
                };
                assert_eq!(
                    access_token(&c, action, target),
                    access(&c, action, &colleague)
                );
            }
        }
    }

    /// Rotating is allowed exactly where revoking is, for every caller and owner.
    #[test]
    fn whoever_may_revoke_a_token_may_rotate_it() {
        let owners = [
            owner("acme", "alice"),
            owner("acme", "bob"),
            owner("globex", "carol"),
        ];
        for scopes in [
            &[][..],
            &[USER_READ],
            &[USER_WRITE],
            &[ADMIN_READ],
            &[ADMIN_WRITE],
            &[TOKENS_ISSUE],
        ] {
            let c = caller(scopes);
            for o in &owners {
                assert_eq!(
                    access(&c, Rotate, o),
                    access(&c, Revoke, o),
                    "{scopes:?} {o:?}"
                );
            }
        }
    }

    /// Offboarding: every single-scope caller, its own organisation and another.
    #[test]
    fn offboarding_needs_admin_write_in_the_organisation_or_tokens_issue() {
        let acme = OwnerId::parse("acme").unwrap();
        let globex = OwnerId::parse("globex").unwrap();
        //  scope,          own org, other org
        let table: &[(&[&str], Access, Access)] = &[
            (&[], D, H),
            (&[USER_READ], D, H),
            (&[USER_WRITE], D, H),
            (&[ADMIN_READ], D, H),
            (&[ADMIN_WRITE], A, H),
            (&[TOKENS_ISSUE], A, A),
        ];
        for &(scopes, want_own, want_other) in table {
            let c = caller(scopes);
            assert_eq!(may_revoke_all(&c, &acme), want_own, "{scopes:?} own org");
            assert_eq!(
                may_revoke_all(&c, &globex),
                want_other,
                "{scopes:?} other org"
            );
        }
    }

    #[test]
    fn a_rotated_copy_may_carry_tokens_issue_only_for_a_token_issuer_and_never_outlives_it() {
        let now = Utc::now();
        let service = expanded(&[TOKENS_ISSUE]);
        assert_eq!(may_copy(&caller(&[TOKENS_ISSUE]), &service, None), Ok(()));
        assert_eq!(
            may_copy(&caller(&[ADMIN_WRITE]), &service, None),
            Err(GrantError::Reserved)
        );
        let mut issuer = caller(&[TOKENS_ISSUE]);
        issuer.expires_at = Some(now + chrono::Duration::days(1));
        assert_eq!(
            may_copy(&issuer, &service, None),
            Err(GrantError::OutlivesCaller(issuer.expires_at.unwrap()))
        );
        let admin = caller(&[ADMIN_WRITE]);
        assert_eq!(
            may_copy(&admin, &expanded(&[USER_WRITE]), None),
            Err(GrantError::NotHeld(vec![
                USER_READ.into(),
                USER_WRITE.into()
            ]))
        );
        assert_eq!(may_copy(&admin, &expanded(&[ADMIN_READ]), None), Ok(()));
    }

    /// Organisation-wide listings: every single-scope caller x its own organisation,
    /// another one, and every organisation at once.
    #[test]
    fn organisation_wide_listings_for_every_scope() {
        let acme = OwnerId::parse("acme").unwrap();
        let globex = OwnerId::parse("globex").unwrap();
        //  scope,          own org, other org, every org
        let table: &[(&[&str], bool, bool, bool)] = &[
            (&[], false, false, false),
            (&[USER_READ], false, false, false),
            (&[USER_WRITE], false, false, false),
            (&[ADMIN_READ], true, false, false),
            (&[ADMIN_WRITE], true, false, false),
            (&[TOKENS_ISSUE], true, true, true),
        ];
        for &(scopes, own, other, every) in table {
            let c = caller(scopes);
            assert_eq!(org_wide_read(&c, Some(&acme)), own, "{scopes:?} own org");
            assert_eq!(
                org_wide_read(&c, Some(&globex)),
                other,
                "{scopes:?} other org"
            );
            assert_eq!(org_wide_read(&c, None), every, "{scopes:?} every org");
        }
    }

    #[test]
    fn same_user_id_in_another_org_is_a_stranger() {
        let c = caller(&[USER_WRITE, ADMIN_WRITE]);
        assert_eq!(access(&c, Read, &owner("globex", "alice")), H);
    }

    fn expanded(names: &[&str]) -> ScopeSet {
        let c = Catalog::default();
        c.expand(&c.resolve(names).unwrap())
    }

    #[test]
    fn minting_cannot_escalate_scopes() {
        let c = caller(&[USER_WRITE]);
        assert_eq!(may_grant(&c, &expanded(&[USER_READ]), None), Ok(()));
        assert_eq!(may_grant(&c, &expanded(&[USER_WRITE]), None), Ok(()));
        assert_eq!(
            may_grant(&c, &expanded(&[ADMIN_READ, USER_READ]), None),
            Err(GrantError::NotHeld(vec![ADMIN_READ.into()]))
        );
        let reader = caller(&[USER_READ]);
        assert_eq!(
            may_grant(&reader, &expanded(&[USER_WRITE]), None),
            Err(GrantError::NotHeld(vec![USER_WRITE.into()]))
        );
    }

    #[test]
    fn the_service_scope_is_never_granted_through_the_api() {
        let issuer = caller(&[TOKENS_ISSUE]);
        assert_eq!(
            may_grant(&issuer, &expanded(&[TOKENS_ISSUE]), None),
            Err(GrantError::Reserved)
        );
        assert_eq!(may_grant(&issuer, &expanded(&[ADMIN_WRITE]), None), Ok(()));
    }

    #[test]
    fn a_new_token_may_not_outlive_the_minting_one() {
        let now = Utc::now();
        let mut c = caller(&[USER_WRITE]);
        c.expires_at = Some(now + chrono::Duration::days(10));
        let scopes = expanded(&[USER_READ]);
        assert_eq!(
            may_grant(&c, &scopes, None),
            Err(GrantError::OutlivesCaller(c.expires_at.unwrap()))
        );
        assert_eq!(
            may_grant(&c, &scopes, Some(now + chrono::Duration::days(11))),
            Err(GrantError::OutlivesCaller(c.expires_at.unwrap()))
        );
        assert_eq!(
            may_grant(&c, &scopes, Some(now + chrono::Duration::days(9))),
            Ok(())
        );
    }
}
