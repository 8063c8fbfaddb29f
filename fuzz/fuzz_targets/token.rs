//! `PlainToken::parse` on any string, and on well-formed tokens built from the input.
//! Invariants: no panic; a parsed token re-encodes to exactly its input, and its parts are
//! the documented slices; the error names the first check that failed; a body with its
//! checksum always parses; `Debug` never shows the secret.
#![no_main]

use casola_auth::token::{
    CHECKSUM_LEN, LOOKUP_ID_LEN, ParseError, PlainToken, SECRET_LEN, TOKEN_LEN, TOKEN_PREFIX,
    checksum,
};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn check_parsed(raw: &str, token: &PlainToken) {
    assert_eq!(
        token.expose(),
        raw,
        "a parsed token re-encodes to its input"
    );
    assert_eq!(raw.len(), TOKEN_LEN);
    let rest = &raw[TOKEN_PREFIX.len()..];
    assert_eq!(token.lookup_id().as_str(), &rest[..LOOKUP_ID_LEN]);
    assert_eq!(
        token.secret_part(),
        rest[LOOKUP_ID_LEN..LOOKUP_ID_LEN + SECRET_LEN].as_bytes()
    );
    assert_eq!(
        checksum(&raw[..TOKEN_LEN - CHECKSUM_LEN]),
        raw[TOKEN_LEN - CHECKSUM_LEN..]
    );
    let shown = format!("{token:?}");
    assert!(!shown.contains(std::str::from_utf8(token.secret_part()).unwrap()));
    let again = PlainToken::parse(token.expose()).expect("a parsed token parses again");
    assert_eq!(again.lookup_id(), token.lookup_id());
}

fuzz_target!(|data: &[u8]| {
    // Any string.
    let raw = String::from_utf8_lossy(data);
    match PlainToken::parse(&raw) {
        Ok(token) => check_parsed(&raw, &token),
        Err(ParseError::Prefix) => assert!(!raw.starts_with(TOKEN_PREFIX)),
        Err(ParseError::Length) => {
            assert!(raw.starts_with(TOKEN_PREFIX) && raw.len() != TOKEN_LEN)
        }
        Err(ParseError::Alphabet) => assert!(
            raw.len() == TOKEN_LEN
                && !raw[TOKEN_PREFIX.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric())
        ),
        Err(ParseError::Checksum) => {
            assert!(raw.len() == TOKEN_LEN && raw.is_char_boundary(TOKEN_LEN - CHECKSUM_LEN))
        }
    }

    // A well-formed body from the input's bytes, with its checksum: must parse.
    let mut body = String::from(TOKEN_PREFIX);
    body.extend(
        data.iter()
            .cycle()
            .take(LOOKUP_ID_LEN + SECRET_LEN)
            .map(|b| char::from(BASE62[usize::from(*b) % 62])),
    );
    if body.len() == TOKEN_LEN - CHECKSUM_LEN {
        let sum = checksum(&body);
        let whole = format!("{body}{sum}");
        let token = PlainToken::parse(&whole).expect("a body with its checksum parses");
        check_parsed(&whole, &token);
    }
});
