//! Pagination of token listings, in one place: the page size a request may ask for, the
//! keyset cursor the store pages by, and the opaque page token that carries the cursor
//! between calls.

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

impl Cursor {
    /// The opaque page token of this position (URL-safe base64 of a versioned text).
    pub fn to_page_token(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v1:{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    /// The position a page token carries; `None` for anything this API did not issue.
    pub fn from_page_token(token: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = raw.splitn(3, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        Some(Self { created_at, id })
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
        assert_eq!(Cursor::from_page_token(&c.to_page_token()), Some(c));
        assert_eq!(Cursor::from_page_token("garbage"), None);
        assert_eq!(
            Cursor::from_page_token(&URL_SAFE_NO_PAD.encode("v2:1:x")),
            None
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
