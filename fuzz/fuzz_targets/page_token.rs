//! List page tokens (`manage::decode_cursor`, `manage::encode_cursor`) on any string and on
//! any cursor.
//! Invariants: no panic; a token that decodes re-encodes to one that decodes to the same
//! cursor; every cursor a listing can produce (microsecond times, any id) round-trips; an
//! encoded token is URL-safe text.
#![no_main]

use arbitrary::Arbitrary;
use casola_auth::{
    manage::{decode_cursor, encode_cursor},
    store::Cursor,
};
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

#[derive(Debug, Arbitrary)]
struct Input {
    token: String,
    micros: i64,
    id: [u8; 16],
}

fn url_safe(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fuzz_target!(|input: Input| {
    if let Some(cursor) = decode_cursor(&input.token) {
        let again = encode_cursor(&cursor);
        assert!(url_safe(&again));
        assert_eq!(decode_cursor(&again), Some(cursor));
    }
    if let Some(created_at) = DateTime::from_timestamp_micros(input.micros) {
        let cursor = Cursor {
            created_at,
            id: Uuid::from_bytes(input.id),
        };
        let token = encode_cursor(&cursor);
        assert!(url_safe(&token));
        assert_eq!(decode_cursor(&token), Some(cursor));
    }
});
