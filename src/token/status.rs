//! A token's status at a given time: the one place it is derived (the API's `status`
//! field, the CLI's column and the console read it from here).

use std::fmt;

use chrono::{DateTime, Utc};

/// Active, expired or revoked, at a given time. Revoked wins over expired: revocation is
/// an act, expiry only the passing of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked (for good).
    Revoked,
}

impl TokenStatus {
    /// The status at `now` of a token with these times. A token stops working exactly at
    /// `expires_at`, or at `revoked_at` (which is in the future while a rotation overlap
    /// runs).
    pub fn at(
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        revoked_at: Option<DateTime<Utc>>,
    ) -> Self {
        if revoked_at.is_some_and(|r| now >= r) {
            Self::Revoked
        } else if expires_at.is_some_and(|e| now >= e) {
            Self::Expired
        } else {
            Self::Active
        }
    }

    /// The lower-case name (`active`, `expired`, `revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn revoked_wins_and_expiry_is_exact() {
        let now = Utc::now();
        assert_eq!(TokenStatus::at(now, None, None), TokenStatus::Active);
        assert_eq!(TokenStatus::at(now, Some(now), None), TokenStatus::Expired);
        assert_eq!(
            TokenStatus::at(now, Some(now + Duration::seconds(1)), None),
            TokenStatus::Active
        );
        assert_eq!(
            TokenStatus::at(now, Some(now), Some(now)),
            TokenStatus::Revoked
        );
        let later = now + Duration::seconds(1);
        assert_eq!(TokenStatus::at(now, None, Some(later)), TokenStatus::Active);
        assert_eq!(
            TokenStatus::at(later, None, Some(later)),
            TokenStatus::Revoked
        );
    }
}
