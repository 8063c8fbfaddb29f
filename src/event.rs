//! The audit trail of a token's life (issue 12): what happened, when, who did it and from
//! where. Events are written by the store in the same transaction as the change they
//! describe, and are append-only (the Postgres table refuses UPDATE and DELETE).
//!
//! An event never holds a secret or a full token: its detail carries field names, scopes
//! and times, never client-supplied free text, and the request id is redacted
//! ([`crate::token::redact`]) before it is kept.

use std::{fmt, net::IpAddr, str::FromStr};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::token::{fields::Owner, redact};

/// What happened to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Minted.
    Created,
    /// Name or description changed.
    Updated,
    /// Replaced by a new token (rotation).
    Rotated,
    /// Revoked by a caller.
    Revoked,
    /// Authenticated a request for the first time.
    FirstUsed,
    /// Its expiry was reached.
    Expired,
    /// Reported as exposed (and revoked for it).
    Exposed,
    /// Revoked with every token of its user or organisation (offboarding).
    Offboarded,
}

impl EventKind {
    /// Every kind, in lifecycle order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Updated,
        EventKind::Rotated,
        EventKind::Revoked,
        EventKind::FirstUsed,
        EventKind::Expired,
        EventKind::Exposed,
        EventKind::Offboarded,
    ];

    /// The stored name (the `token_events.kind` check constraint lists the same names).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Rotated => "rotated",
            EventKind::Revoked => "revoked",
            EventKind::FirstUsed => "first_used",
            EventKind::Expired => "expired",
            EventKind::Exposed => "exposed",
            EventKind::Offboarded => "offboarded",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {:?}", redact(s)))
    }
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A token acting on its owner's tokens, or a service token (tokens:issue) acting for
    /// any owner: `token:<id>`.
    Token(Uuid),
    /// An organisation admin's token acting on a colleague's token: `admin:<id>`.
    OrgAdmin(Uuid),
    /// An operator at the CLI: `cli`.
    Cli,
    /// The service itself, noticing a fact (first use, expiry): `system`.
    System,
    /// A caller without a token (an exposure report): `anonymous`.
    Anonymous,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Token(id) => write!(f, "token:{id}"),
            Actor::OrgAdmin(id) => write!(f, "admin:{id}"),
            Actor::Cli => f.write_str("cli"),
            Actor::System => f.write_str("system"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

impl FromStr for Actor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = |raw: &str| Uuid::parse_str(raw).map_err(|_| format!("bad actor id in {s:?}"));
        match s {
            "cli" => Ok(Actor::Cli),
            "system" => Ok(Actor::System),
            "anonymous" => Ok(Actor::Anonymous),
            _ => match s.split_once(':') {
                Some(("token", raw)) => id(raw).map(Actor::Token),
                Some(("admin", raw)) => id(raw).map(Actor::OrgAdmin),
                _ => Err(format!("unknown actor {:?}", redact(s))),
            },
        }
    }
}

/// Longest request id kept; longer ones are cut (the column allows 128 characters).
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A request id as kept in an event: printable ASCII without spaces, at most
/// [`MAX_REQUEST_ID_CHARS`], any token-shaped word cut to its display prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The request id of `raw` (an `x-request-id` value or a trace id); `None` when
    /// nothing printable is left.
    pub fn parse(raw: &str) -> Option<Self> {
        let kept: String = raw
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(MAX_REQUEST_ID_CHARS)
            .collect();
        // Redaction only shortens (a cut token is 11 characters, the ellipsis included).
        let kept = redact(&kept).into_owned();
        (!kept.is_empty()).then_some(Self(kept))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a request came from, as the transport knows it: attached to the events of the
/// changes the request makes. Empty for the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// `x-request-id` of the call, or its trace id.
    pub request_id: Option<RequestId>,
    /// The peer's address, where known.
    pub source_addr: Option<IpAddr>,
}

/// Who asks for a change, and where the request came from: passed into every store write
/// so that the store records the event in the same transaction as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// Who.
    pub actor: Actor,
    /// `x-request-id` of the call, or its trace id.
    pub request_id: Option<RequestId>,
    /// The peer's address, where known.
    pub source_addr: Option<IpAddr>,
}

impl EventContext {
    /// A context with only an actor (no request id, no address).
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            request_id: None,
            source_addr: None,
        }
    }

    /// The context of `actor` acting through a request from `origin`.
    pub fn from_origin(actor: Actor, origin: &Origin) -> Self {
        Self {
            actor,
            request_id: origin.request_id.clone(),
            source_addr: origin.source_addr,
        }
    }

    /// The context of an operator at the CLI.
    pub fn cli() -> Self {
        Self::new(Actor::Cli)
    }

    /// The context of a fact the service notices itself (first use, expiry).
    pub fn system() -> Self {
        Self::new(Actor::System)
    }

    /// The same context with a request id.
    pub fn with_request_id(mut self, request_id: Option<RequestId>) -> Self {
        self.request_id = request_id;
        self
    }

    /// The same context with a source address.
    pub fn with_source_addr(mut self, addr: Option<IpAddr>) -> Self {
        self.source_addr = addr;
        self
    }

    /// The event of `kind` about `token_id` (owned by `owner`) at `at`, in this context.
    pub fn event(
        &self,
        kind: EventKind,
        token_id: Uuid,
        owner: &Owner,
        at: DateTime<Utc>,
        detail: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            token_id,
            owner: owner.clone(),
            kind,
            at,
            actor: self.actor,
            request_id: self.request_id.clone(),
            source_addr: self.source_addr,
            detail,
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The token it is about.
    pub token_id: Uuid,
    /// The token's owner.
    pub owner: Owner,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: Actor,
    /// Request id, if any.
    pub request_id: Option<RequestId>,
    /// Peer address, if known.
    pub source_addr: Option<IpAddr>,
    /// Kind-specific facts: field names, scopes, times; never client-supplied free text.
    pub detail: serde_json::Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// Event id: grows with every event (listings page by it).
    pub id: i64,
    /// The event itself.
    pub event: NewEvent,
}

/// Which events to list: newest first, by event id descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// One token's events.
    Token(Uuid),
    /// Every event of an organisation's tokens.
    Org(crate::token::fields::OwnerId),
}

/// A page request over the audit trail.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Whose events.
    pub filter: EventFilter,
    /// Only events with an id below this one (the last id of the previous page).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::PlainToken;

    #[test]
    fn kinds_and_actors_round_trip_through_their_stored_names() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        let id = Uuid::new_v4();
        for actor in [
            Actor::Token(id),
            Actor::OrgAdmin(id),
            Actor::Cli,
            Actor::System,
            Actor::Anonymous,
        ] {
            assert_eq!(actor.to_string().parse::<Actor>(), Ok(actor));
        }
        assert!("token:nope".parse::<Actor>().is_err());
        assert!("deleted".parse::<EventKind>().is_err());
    }

    #[test]
    fn a_token_pasted_into_a_request_id_is_cut_to_its_prefix() {
        let token = PlainToken::generate();
        let id = RequestId::parse(&format!("req-{}", token.expose())).unwrap();
        assert!(!id.as_str().contains(token.expose()));
        assert!(id.as_str().starts_with("req-csl_"));
    }

    #[test]
    fn request_ids_are_bounded_printable_and_may_be_absent() {
        let long = "x".repeat(1000);
        assert_eq!(
            RequestId::parse(&long).unwrap().as_str().len(),
            MAX_REQUEST_ID_CHARS
        );
        assert_eq!(RequestId::parse("a b\nc").unwrap().as_str(), "abc");
        assert_eq!(RequestId::parse(" \t"), None);
    }
}
