//! Redaction of token-shaped text: the one function every place that echoes or logs
//! client-supplied text goes through, so that a token pasted into a wrong field (a scope
//! name, a preset, an update mask, a route's `casola.scopes`) never comes back in an error
//! or reaches a log line.

use std::borrow::Cow;

use super::{DISPLAY_PREFIX_CHARS, TOKEN_PREFIX};

/// Characters that end a token-shaped word. Everything else after `csl_` counts as part
/// of it, so that a token with a typo (a `-` in the middle, a missing character) is still
/// cut to its display prefix instead of leaking the rest.
fn ends_word(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>'
        )
}

/// Whether `text` holds anything [`redact`] would change.
pub fn contains_token(text: &str) -> bool {
    matches!(redact(text), Cow::Owned(_))
}

/// `text` with every token-shaped word (`csl_` followed by more than the display prefix's
/// six characters) cut to its display prefix and an ellipsis: `csl_a3f9Qk…`. A display
/// prefix itself is left as it is (the function is idempotent), and text without `csl_` is
/// returned without copying.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains(TOKEN_PREFIX) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find(TOKEN_PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + TOKEN_PREFIX.len()..];
        let word_len = after.find(ends_word).unwrap_or(after.len());
        let word = &after[..word_len];
        let shown_end = word
            .char_indices()
            .nth(DISPLAY_PREFIX_CHARS)
            .map(|(i, _)| i);
        out.push_str(TOKEN_PREFIX);
        match shown_end {
            // Longer than a display prefix: keep the prefix only. The ellipsis keeps a
            // redacted word recognisable and makes a second pass change nothing.
            Some(end) if &word[end..] != "…" => {
                out.push_str(&word[..end]);
                out.push('…');
                changed = true;
            }
            _ => out.push_str(word),
        }
        rest = &after[word_len..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::PlainToken;

    #[test]
    fn a_whole_token_is_cut_to_its_display_prefix() {
        let token = PlainToken::generate();
        let raw = token.expose();
        let shown = redact(&format!("unknown scope {raw:?}, and {raw}")).into_owned();
        let prefix = token.lookup_id().display_prefix();
        assert_eq!(shown, format!("unknown scope \"{prefix}…\", and {prefix}…"));
        assert!(!shown.contains(std::str::from_utf8(token.secret_part()).unwrap()));
    }

    #[test]
    fn a_damaged_token_is_cut_too() {
        let raw = PlainToken::generate().expose().to_owned();
        for damaged in [
            format!("{}-{}", &raw[..20], &raw[21..]),
            raw[..40].to_owned(),
            format!("{raw}xyz"),
            format!("{}%2F{}", &raw[..20], &raw[20..]),
        ] {
            let shown = redact(&damaged);
            assert_eq!(shown, format!("{}…", &raw[..10]), "{damaged}");
        }
    }

    #[test]
    fn display_prefixes_and_plain_text_are_left_alone() {
        for text in [
            "user:read",
            "csl_a3f9Qk",
            "csl_a3f9Qk…",
            "token csl_a3f9Qk… revoked",
            "csl_",
            "",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
            assert!(!contains_token(text), "{text}");
        }
    }

    #[test]
    fn redaction_is_idempotent_and_handles_many_tokens() {
        let a = PlainToken::generate();
        let b = PlainToken::generate();
        let text = format!("[{},{}]", a.expose(), b.expose());
        let once = redact(&text).into_owned();
        assert!(contains_token(&text));
        assert_eq!(redact(&once), once.as_str());
        assert!(!once.contains(a.expose()) && !once.contains(b.expose()));
    }
}
