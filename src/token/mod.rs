//! The token format (design.md section 3).
//!
//! `csl_` + lookup id (12 base62, random) + secret (32 base62, OS CSPRNG) + checksum
//! (6 base62: CRC32 of everything before it). 54 characters, one word, greppable by
//! secret scanners. A [`PlainToken`] is only built by [`PlainToken::generate`] or
//! [`PlainToken::parse`]; its `Debug` shows the display prefix, never the secret.

pub mod fields;
pub mod hash;
pub mod status;

use std::fmt;

use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};
use secrecy::{ExposeSecret, SecretString};

/// The fixed token prefix. It must never change: secret scanners and every issued token
/// depend on it.
pub const TOKEN_PREFIX: &str = "csl_";
/// Length of the random lookup id that finds the row (not secret).
pub const LOOKUP_ID_LEN: usize = 12;
/// Length of the secret part (about 190 bits).
pub const SECRET_LEN: usize = 32;
/// Length of the base62 CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Total token length.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + LOOKUP_ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// How many characters of the lookup id the display prefix shows.
pub const DISPLAY_PREFIX_CHARS: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a token. Deliberately coarse: callers learn only that it is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Does not start with `csl_`.
    #[error("token does not start with {TOKEN_PREFIX}")]
    Prefix,
    /// Not 54 characters.
    #[error("token has the wrong length")]
    Length,
    /// A character outside base62.
    #[error("token has a character outside base62")]
    Alphabet,
    /// The checksum does not match.
    #[error("token checksum does not match")]
    Checksum,
}

/// The public lookup id of a token: finds its row, is not secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(String);

impl LookupId {
    /// Wraps a stored lookup id (already validated when it was issued).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The lookup id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The display prefix, `csl_` + the first six characters.
    pub fn display_prefix(&self) -> String {
        display_prefix(&self.0)
    }
}

impl fmt::Display for LookupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The display prefix for a stored lookup id, e.g. `csl_a3f9Qk`.
pub fn display_prefix(lookup_id: &str) -> String {
    let end = lookup_id
        .char_indices()
        .nth(DISPLAY_PREFIX_CHARS)
        .map_or(lookup_id.len(), |(i, _)| i);
    format!("{TOKEN_PREFIX}{}", &lookup_id[..end])
}

/// A whole token in plain text. Only [`generate`](Self::generate) and [`parse`](Self::parse)
/// build one; `Debug` prints the display prefix only.
pub struct PlainToken {
    full: SecretString,
    lookup_id: LookupId,
}

impl PlainToken {
    /// A new random token from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut rng = UnwrapErr(SysRng);
        let mut body = String::with_capacity(TOKEN_LEN);
        body.push_str(TOKEN_PREFIX);
        for _ in 0..LOOKUP_ID_LEN + SECRET_LEN {
            let i = rng.random_range(0..BASE62.len());
            body.push(char::from(BASE62[i]));
        }
        body.push_str(&checksum(&body));
        let lookup_id = LookupId(body[TOKEN_PREFIX.len()..][..LOOKUP_ID_LEN].to_owned());
        Self {
            full: SecretString::from(body),
            lookup_id,
        }
    }

    /// Parses a raw token: prefix, length, alphabet and checksum are checked before anything
    /// touches a store or a hash.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let rest = raw.strip_prefix(TOKEN_PREFIX).ok_or(ParseError::Prefix)?;
        if raw.len() != TOKEN_LEN {
            return Err(ParseError::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ParseError::Alphabet);
        }
        let (body, given) = raw.split_at(TOKEN_LEN - CHECKSUM_LEN);
        // The checksum is not secret (anyone can compute it); a plain comparison is fine.
        if given != checksum(body) {
            return Err(ParseError::Checksum);
        }
        Ok(Self {
            full: SecretString::from(raw.to_owned()),
            lookup_id: LookupId(rest[..LOOKUP_ID_LEN].to_owned()),
        })
    }

    /// Parses an `Authorization` header value (`Bearer <t>` or `Key <t>`, scheme
    /// case-insensitive) or a raw token.
    pub fn parse_credential(value: &str) -> Result<Self, ParseError> {
        let value = value.trim();
        let token = match value.split_once(char::is_whitespace) {
            Some((scheme, rest))
                if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("key") =>
            {
                rest.trim_start()
            }
            _ => value,
        };
        Self::parse(token)
    }

    /// The lookup id (not secret).
    pub fn lookup_id(&self) -> &LookupId {
        &self.lookup_id
    }

    /// The secret part, the input of the argon2id hash.
    pub fn secret_part(&self) -> &[u8] {
        let full = self.full.expose_secret().as_bytes();
        &full[TOKEN_PREFIX.len() + LOOKUP_ID_LEN..TOKEN_LEN - CHECKSUM_LEN]
    }

    /// The whole token, for the one response that hands it out and for keyed cache hashes.
    pub fn expose(&self) -> &str {
        self.full.expose_secret()
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainToken({}…)", self.lookup_id.display_prefix())
    }
}

/// The checksum part for a token body (`csl_` + lookup id + secret): CRC32 (IEEE) as six
/// base62 digits, most significant first. Public so tools and tests can build well-formed
/// strings; a [`PlainToken`] still only comes from `generate` or `parse`.
pub fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    // 62^6 > 2^32: six digits always hold the whole CRC.
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_parse_and_have_the_documented_shape() {
        let token = PlainToken::generate();
        let raw = token.expose().to_owned();
        assert_eq!(raw.len(), 54);
        assert!(raw.starts_with("csl_"));
        assert!(raw[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        let parsed = PlainToken::parse(&raw).expect("a generated token parses");
        assert_eq!(parsed.lookup_id(), token.lookup_id());
        assert_eq!(parsed.secret_part(), token.secret_part());
        assert_eq!(token.secret_part().len(), SECRET_LEN);
    }

    #[test]
    fn generated_tokens_differ() {
        let a = PlainToken::generate();
        let b = PlainToken::generate();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.lookup_id(), b.lookup_id());
    }

    #[test]
    fn debug_shows_the_prefix_and_never_the_secret() {
        let token = PlainToken::generate();
        let shown = format!("{token:?}");
        assert!(shown.contains(&token.lookup_id().display_prefix()));
        let secret = std::str::from_utf8(token.secret_part()).unwrap();
        assert!(!shown.contains(secret));
        assert!(!shown.contains(token.expose()));
    }

    #[test]
    fn display_prefix_is_csl_and_six_characters() {
        assert_eq!(display_prefix("a3f9QkZZZZZZ"), "csl_a3f9Qk");
    }

    #[test]
    fn parse_rejects_each_malformation_with_its_reason() {
        let good = PlainToken::generate().expose().to_owned();
        assert_eq!(
            PlainToken::parse(&good.replacen("csl_", "csx_", 1)).unwrap_err(),
            ParseError::Prefix
        );
        assert_eq!(
            PlainToken::parse(&good[..53]).unwrap_err(),
            ParseError::Length
        );
        assert_eq!(
            PlainToken::parse(&format!("{good}0")).unwrap_err(),
            ParseError::Length
        );
        let mut bad_alphabet = good.clone().into_bytes();
        bad_alphabet[10] = b'-';
        assert_eq!(
            PlainToken::parse(std::str::from_utf8(&bad_alphabet).unwrap()).unwrap_err(),
            ParseError::Alphabet
        );
        assert_eq!(PlainToken::parse("").unwrap_err(), ParseError::Prefix);
    }

    #[test]
    fn credentials_accept_bearer_and_key_in_any_case() {
        let token = PlainToken::generate();
        let raw = token.expose();
        for value in [
            raw.to_owned(),
            format!("Bearer {raw}"),
            format!("bearer  {raw}"),
            format!("KEY {raw}"),
            format!("Key {raw}"),
        ] {
            let parsed = PlainToken::parse_credential(&value).expect("credential parses");
            assert_eq!(parsed.lookup_id(), token.lookup_id());
        }
        assert!(PlainToken::parse_credential(&format!("Basic {raw}")).is_err());
    }

    proptest! {
        /// Every single-character substitution anywhere in a token is caught, by the
        /// prefix, alphabet or checksum check.
        #[test]
        fn every_single_character_change_is_caught(pos in 0usize..TOKEN_LEN, replacement in 0usize..62) {
            let token = PlainToken::generate();
            let mut bytes = token.expose().as_bytes().to_vec();
            let new = BASE62[replacement];
            prop_assume!(bytes[pos] != new);
            bytes[pos] = new;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(PlainToken::parse(&changed).is_err());
        }
    }

    #[test]
    fn every_position_and_every_base62_substitution_is_caught_exhaustively() {
        let token = PlainToken::generate();
        let original = token.expose().as_bytes().to_vec();
        for pos in 0..TOKEN_LEN {
            for &new in BASE62.iter() {
                if original[pos] == new {
                    continue;
                }
                let mut bytes = original.clone();
                bytes[pos] = new;
                let changed = String::from_utf8(bytes).unwrap();
                assert!(
                    PlainToken::parse(&changed).is_err(),
                    "change at {pos} not caught"
                );
            }
        }
    }
}
