//! Pagination of token listings, in one place: the page size a request may ask for, the
//! keyset cursor the store pages by, and the opaque page token that carries the cursor
//! between calls, bound to the query (filters) it was issued for.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now_micros;

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

    #[test]
    fn page_sizes_default_clamp_and_reject_negatives() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(10_000).unwrap().get(), 500);
        assert!(PageSize::parse(-1).is_err());
    }
}
