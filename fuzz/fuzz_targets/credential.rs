//! `PlainToken::parse_credential` (the `Authorization` header) on any header value, and on
//! a valid token wrapped in a scheme and whitespace chosen by the input.
//! Invariants: no panic; an accepted value holds the token it returned, alone or after a
//! Bearer/Key scheme; a valid token behind `Bearer`/`Key` (any case) and any whitespace is
//! accepted, behind any other scheme refused.
#![no_main]

use arbitrary::Arbitrary;
use casola_auth::token::{LOOKUP_ID_LEN, PlainToken, SECRET_LEN, TOKEN_PREFIX, checksum};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Whitespace `trim` and `split_once(char::is_whitespace)` both know.
const SPACES: [char; 6] = [' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}'];

#[derive(Debug, Arbitrary)]
enum Scheme {
    None,
    Bearer { upper: Vec<bool> },
    Key { upper: Vec<bool> },
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Any header value.
    value: String,
    /// A valid token's random part.
    body: [u8; LOOKUP_ID_LEN + SECRET_LEN],
    scheme: Scheme,
    before: Vec<u8>,
    between: Vec<u8>,
    after: Vec<u8>,
}

fn spaces(picks: &[u8]) -> String {
    picks
        .iter()
        .map(|p| SPACES[usize::from(*p) % SPACES.len()])
        .collect()
}

fn cased(word: &str, upper: &[bool]) -> String {
    word.chars()
        .zip(upper.iter().chain(std::iter::repeat(&false)))
        .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
        .collect()
}

fuzz_target!(|input: Input| {
    // Any header value.
    if let Ok(token) = PlainToken::parse_credential(&input.value) {
        let value = input.value.trim();
        let raw = token.expose();
        assert!(value.ends_with(raw), "the token is the value's last word");
        let head = value[..value.len() - raw.len()].trim_end();
        assert!(
            head.is_empty()
                || head.eq_ignore_ascii_case("bearer")
                || head.eq_ignore_ascii_case("key"),
            "only a Bearer or Key scheme may come before the token: {head:?}"
        );
    }

    // A valid token in a wrapper the input chooses.
    let mut body = String::from(TOKEN_PREFIX);
    body.extend(
        input
            .body
            .iter()
            .map(|b| char::from(BASE62[usize::from(*b) % 62])),
    );
    let raw = format!("{body}{}", checksum(&body));
    let mut between = spaces(&input.between);
    if between.is_empty() {
        between.push(' ');
    }
    let (scheme, accepted) = match &input.scheme {
        Scheme::None => (String::new(), true),
        Scheme::Bearer { upper } => (cased("bearer", upper) + &between, true),
        Scheme::Key { upper } => (cased("key", upper) + &between, true),
        Scheme::Other(s) => {
            let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
            let known =
                s.is_empty() || s.eq_ignore_ascii_case("bearer") || s.eq_ignore_ascii_case("key");
            if known {
                return;
            }
            (s + &between, false)
        }
    };
    let value = format!(
        "{}{scheme}{raw}{}",
        spaces(&input.before),
        spaces(&input.after)
    );
    match PlainToken::parse_credential(&value) {
        Ok(token) => {
            assert!(accepted, "{value:?} has an unknown scheme");
            assert_eq!(token.expose(), raw);
        }
        Err(e) => assert!(!accepted, "{value:?} refused: {e}"),
    }
});
