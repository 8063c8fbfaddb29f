//! Token fields as domain types, parsed once at the edge ("parse, don't validate").
//! Each `parse` returns the description of what is wrong; the caller adds the field name.

use std::fmt;

/// Longest token name, in characters, after trimming.
pub const NAME_MAX_CHARS: usize = 100;
/// Longest description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1000;
/// Longest owner id (org or user), in characters.
pub const OWNER_ID_MAX_CHARS: usize = 128;
/// Longest expiry, in days (ten years).
pub const EXPIRES_IN_DAYS_MAX: i32 = 3650;

/// Bidirectional embedding, override and isolate controls: they make a string display as
/// something else (a token name that reads "prod" in a dashboard and is not).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that draw nothing: white space, zero-width and other format characters,
/// fillers, variation selectors and tags.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Text a person will read in a dashboard or a log: no bidirectional controls, and, when
/// not empty, at least one character that draws something.
fn displayable(text: &str) -> Result<(), String> {
    if let Some(c) = text.chars().find(|c| is_bidi_control(*c)) {
        return Err(format!(
            "must not contain bidirectional control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    if !text.is_empty() && text.chars().all(is_invisible) {
        return Err("must contain a visible character".into());
    }
    Ok(())
}

/// A token's label: 1-100 characters after trimming, no control characters, no
/// bidirectional controls, not only invisible characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    /// Parses a name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > NAME_MAX_CHARS {
            return Err(format!(
                "must be at most {NAME_MAX_CHARS} characters, is {chars}"
            ));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        displayable(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Optional notes: up to 1000 characters; newlines and tabs allowed, other controls not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    /// Parses a description (surrounding white space is trimmed).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let text = raw.trim();
        let chars = text.chars().count();
        if chars > DESCRIPTION_MAX_CHARS {
            return Err(format!(
                "must be at most {DESCRIPTION_MAX_CHARS} characters, is {chars}"
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("must not contain control characters other than newline and tab".into());
        }
        displayable(text)?;
        Ok(Self(text.to_owned()))
    }

    /// The description (empty when none).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Days until expiry: 1-3650.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiresInDays(u16);

impl ExpiresInDays {
    /// Parses a day count.
    pub fn parse(days: i32) -> Result<Self, String> {
        if !(1..=EXPIRES_IN_DAYS_MAX).contains(&days) {
            return Err(format!(
                "must be between 1 and {EXPIRES_IN_DAYS_MAX} days, is {days}"
            ));
        }
        Ok(Self(u16::try_from(days).expect("range checked above")))
    }

    /// The expiry as a duration.
    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.0))
    }

    /// The day count.
    pub fn days(self) -> u16 {
        self.0
    }
}

/// An opaque owner id from the platform's user service (organisation or user):
/// 1-128 characters, no white space, control, invisible or bidirectional-control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(String);

impl OwnerId {
    /// Parses an owner id.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > OWNER_ID_MAX_CHARS {
            return Err(format!(
                "must be at most {OWNER_ID_MAX_CHARS} characters, is {chars}"
            ));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain white space or control characters".into());
        }
        if raw.chars().any(|c| is_invisible(c) || is_bidi_control(c)) {
            return Err("must not contain invisible or bidirectional control characters".into());
        }
        if raw == "-" {
            return Err("`-` is reserved".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// Wraps an id read from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Organisation.
    pub org_id: OwnerId,
    /// User within it.
    pub user_id: OwnerId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded_by_characters_not_bytes() {
        assert_eq!(
            TokenName::parse("  CI pipeline ").unwrap().as_str(),
            "CI pipeline"
        );
        assert!(TokenName::parse("   ").is_err());
        assert!(TokenName::parse(&"é".repeat(100)).is_ok());
        assert!(TokenName::parse(&"a".repeat(101)).is_err());
        assert!(TokenName::parse("line\nbreak").is_err());
    }

    #[test]
    fn descriptions_allow_newlines_up_to_a_thousand_characters() {
        assert!(Description::parse("first\nsecond\tthird").is_ok());
        assert!(Description::parse(&"x".repeat(1000)).is_ok());
        assert!(Description::parse(&"x".repeat(1001)).is_err());
        assert!(Description::parse("bell\u{7}").is_err());
    }

    #[test]
    fn expiry_is_one_to_3650_days() {
        assert!(ExpiresInDays::parse(0).is_err());
        assert!(ExpiresInDays::parse(-5).is_err());
        assert_eq!(ExpiresInDays::parse(1).unwrap().days(), 1);
        assert_eq!(ExpiresInDays::parse(3650).unwrap().days(), 3650);
        assert!(ExpiresInDays::parse(3651).is_err());
    }

    #[test]
    fn text_that_would_display_as_something_else_is_refused() {
        // Right-to-left override: "prod" followed by reversed text.
        let err = TokenName::parse("CI \u{202E}dorp").unwrap_err();
        assert!(err.contains("U+202E"), "{err}");
        assert!(TokenName::parse("a\u{2067}b").is_err());
        assert!(Description::parse("x\u{202A}y").is_err());
        assert!(OwnerId::parse("acme\u{2069}").is_err());
        assert!(OwnerId::parse("ac\u{200B}me").is_err());
    }

    #[test]
    fn names_of_only_invisible_characters_are_refused() {
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{2060}\u{FEFF}",
            "\u{3164}",
            "\u{00AD}",
        ] {
            assert!(TokenName::parse(invisible).is_err(), "{invisible:?}");
            assert!(Description::parse(invisible).is_err(), "{invisible:?}");
        }
        assert!(TokenName::parse("CI\u{200D}bot").is_ok());
        assert!(Description::parse("").is_ok());
    }

    #[test]
    fn owner_ids_are_single_words() {
        assert!(OwnerId::parse("org_123").is_ok());
        assert!(OwnerId::parse("").is_err());
        assert!(OwnerId::parse("a b").is_err());
        assert!(OwnerId::parse("-").is_err());
        assert!(OwnerId::parse(&"u".repeat(129)).is_err());
    }
}
