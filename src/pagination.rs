//! Pagination of token listings, in one place: the page size a request may ask for, the
//! keyset cursors the store pages by (by time and id, or by a sequence number), and the
//! opaque page token that carries a cursor between calls, bound to the query (filters) it
//! was issued for.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 500;

/// A list page size: 0 means the default, larger than the maximum is served the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(usize);

impl PageSize {
    /// Parses a requested page size.
    pub fn parse(requested: i32) -> Result<Self, String> {
        match usize::try_from(requested) {
            Err(_) => Err(format!("must not be negative, is {requested}")),
            Ok(0) => Ok(Self(DEFAULT_PAGE_SIZE)),
            Ok(n) => Ok(Self(n.min(MAX_PAGE_SIZE))),
        }
    }

    /// The number of items.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Position in a listing (newest first, `(created_at, id)` descending): the last item of
/// the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its creation time.
    pub created_at: DateTime<Utc>,
    /// Its id (ties on created_at).
    pub id: Uuid,
}

/// Why a page token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a token this API issued.
    #[error("not a page token of this API")]
    Malformed,
    /// Issued for other filters.
    #[error("was issued for another query (its filters changed); start again without a page token")]
    OtherQuery,
}

/// A fingerprint of a listing's filters, carried in its page tokens: a token is only
/// accepted by the query it was issued for.
fn fingerprint(query: &str) -> String {
    let hash = blake3::hash(query.as_bytes());
    hash.as_bytes()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Cursor {
    /// The opaque page token of this position in the listing whose filters `query`
    /// describes (URL-safe base64 of a versioned text).
    pub fn to_page_token(&self, query: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v1:{}:{}:{}",
            self.created_at.timestamp_micros(),
            self.id,
            fingerprint(query)
        ))
    }

    /// The position a page token carries, if it was issued for `query`.
    pub fn from_page_token(token: &str, query: &str) -> Result<Self, PageTokenError> {
        let (cursor, issued_for) = Self::decode(token).ok_or(PageTokenError::Malformed)?;
        if issued_for != fingerprint(query) {
            return Err(PageTokenError::OtherQuery);
        }
        Ok(cursor)
    }

    fn decode(token: &str) -> Option<(Self, String)> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = raw.splitn(4, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let fingerprint = parts.next()?.to_owned();
        Some((Self { created_at, id }, fingerprint))
    }
}

/// Position in a listing by a growing sequence number, newest first (the audit trail, by
/// event id): the last item of the previous page. Its page token is bound to the query as
/// [`Cursor`]'s is, and has its own version tag, so one listing's token is refused by the
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqCursor(pub i64);

impl SeqCursor {
    /// The opaque page token of this position in the listing whose filters `query`
    /// describes.
    pub fn to_page_token(&self, query: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("s1:{}:{}", self.0, fingerprint(query)))
    }

    /// The position a page token carries, if it was issued for `query`.
    pub fn from_page_token(token: &str, query: &str) -> Result<Self, PageTokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(PageTokenError::Malformed)?;
        let mut parts = raw.splitn(3, ':');
        let (Some("s1"), Some(seq), Some(issued_for)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(PageTokenError::Malformed);
        };
        let seq = seq.parse().map_err(|_| PageTokenError::Malformed)?;
        if issued_for != fingerprint(query) {
            return Err(PageTokenError::OtherQuery);
        }
        Ok(Self(seq))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::now_micros;

    /// Cursors as listings make them: microsecond times anywhere chrono can hold, any id.
    fn cursors() -> impl Strategy<Value = Cursor> {
        (any::<i64>(), any::<u128>()).prop_filter_map("out of chrono's range", |(micros, id)| {
            Some(Cursor {
                created_at: DateTime::from_timestamp_micros(micros)?,
                id: Uuid::from_u128(id),
            })
        })
    }

    proptest! {
        #[test]
        fn every_cursor_round_trips_through_its_page_token(c in cursors(), query in ".{0,40}") {
            let token = c.to_page_token(&query);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::from_page_token(&token, &query), Ok(c));
        }

        /// Strings, and base64 of strings that look like a token: never a panic; whatever
        /// decodes re-encodes to the same cursor.
        #[test]
        fn any_page_token_is_refused_or_round_trips(
            raw in prop_oneof![
                any::<String>(),
                "v[0-9]:-?[0-9]{0,20}:[0-9a-fA-F-]{0,40}:[0-9a-f]{0,12}"
                    .prop_map(|s| URL_SAFE_NO_PAD.encode(s)),
                "[A-Za-z0-9_=+/-]{0,80}",
            ],
            query in ".{0,20}",
        ) {
            if let Ok(c) = Cursor::from_page_token(&raw, &query) {
                prop_assert_eq!(Cursor::from_page_token(&c.to_page_token(&query), &query), Ok(c));
            }
        }
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::new_v4(),
        };
        let query = "acme\0alice\0false";
        assert_eq!(
            Cursor::from_page_token(&c.to_page_token(query), query),
            Ok(c)
        );
        assert_eq!(
            Cursor::from_page_token("garbage", query),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(
            Cursor::from_page_token(&URL_SAFE_NO_PAD.encode("v2:1:x"), query),
            Err(PageTokenError::Malformed)
        );
    }

    #[test]
    fn a_page_token_is_refused_by_another_query() {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::new_v4(),
        };
        let token = c.to_page_token("acme\0alice\0false");
        assert_eq!(
            Cursor::from_page_token(&token, "acme\0alice\0true"),
            Err(PageTokenError::OtherQuery)
        );
    }

    proptest! {
        #[test]
        fn every_sequence_position_round_trips_and_is_bound_to_its_query(
            seq in any::<i64>(),
            query in ".{0,40}",
        ) {
            let token = SeqCursor(seq).to_page_token(&query);
            prop_assert_eq!(SeqCursor::from_page_token(&token, &query), Ok(SeqCursor(seq)));
            prop_assert_eq!(
                SeqCursor::from_page_token(&token, &format!("{query}x")),
                Err(PageTokenError::OtherQuery)
            );
        }

        #[test]
        fn any_string_is_refused_or_round_trips_as_a_sequence_token(raw in any::<String>()) {
            if let Ok(c) = SeqCursor::from_page_token(&raw, "q") {
                prop_assert_eq!(SeqCursor::from_page_token(&c.to_page_token("q"), "q"), Ok(c));
            }
        }
    }

    #[test]
    fn a_listing_refuses_the_page_tokens_of_the_other_kind() {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::new_v4(),
        };
        assert_eq!(
            SeqCursor::from_page_token(&c.to_page_token("q"), "q"),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(
            Cursor::from_page_token(&SeqCursor(7).to_page_token("q"), "q"),
            Err(PageTokenError::Malformed)
        );
    }

    #[test]
    fn page_sizes_default_clamp_and_reject_negatives() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(10_000).unwrap().get(), 500);
        assert!(PageSize::parse(-1).is_err());
    }
}
