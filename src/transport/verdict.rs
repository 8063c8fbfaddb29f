//! Decisions as telemetry records them. The transports turn domain outcomes into bounded
//! labels here (the domain's stable denial names, [`reasons`]), so telemetry never sees a
//! domain type.

use crate::{
    authorize::{Authenticated, Decision, Denial},
    error::Error,
    telemetry::{self, Verdict, metrics::reasons},
};

/// Which entry point decided: the `rpc` label of the decision metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// AuthorizationService/Authorize.
    Authorize,
    /// Envoy ext_authz Check.
    Check,
    /// TokenService caller authentication.
    CallerAuth,
    /// AuthorizationService/WhoAmI.
    WhoAmI,
}

impl Entry {
    /// The `rpc` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Check => "check",
            Self::CallerAuth => "caller_auth",
            Self::WhoAmI => "who_am_i",
        }
    }
}

/// Records `verdict` as decided at `entry`.
pub fn record(entry: Entry, verdict: Verdict) {
    telemetry::record(entry.as_str(), verdict);
}

/// The verdict of a denial (naming the token when the denial knows it).
pub fn of_denial(denial: &Denial) -> Verdict {
    let verdict = Verdict::deny(denial.as_str());
    match denial.principal() {
        Some(principal) => verdict.about(principal.token_id),
        None => verdict,
    }
}

/// No decision, because of `err`.
pub fn of_error(err: &Error) -> Verdict {
    Verdict::error(match err {
        Error::Unavailable => reasons::UNAVAILABLE,
        Error::ResourceExhausted(_) => reasons::OVERLOADED,
        Error::RateLimited { .. } => reasons::RATE_LIMITED,
        _ => reasons::INTERNAL,
    })
}

/// The verdict of `Authorizer::authorize`.
pub fn of_decision(result: &Result<Decision, Error>) -> Verdict {
    match result {
        Ok(Decision::Allow(principal)) => Verdict::allow(principal.token_id),
        Ok(Decision::Deny(denial)) => of_denial(denial),
        Err(e) => of_error(e),
    }
}

/// The verdict of `Authorizer::authenticate`.
pub fn of_authentication(result: &Result<Result<Authenticated, Denial>, Error>) -> Verdict {
    match result {
        Ok(Ok(authenticated)) => Verdict::allow(authenticated.principal.token_id),
        Ok(Err(denial)) => of_denial(denial),
        Err(e) => of_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::call::DecisionKind;

    #[test]
    fn service_trouble_is_no_decision_with_a_bounded_reason() {
        assert_eq!(of_error(&Error::Unavailable).decision, DecisionKind::Error);
        assert_eq!(
            of_error(&Error::ResourceExhausted("full")).reason,
            reasons::OVERLOADED
        );
        assert_eq!(of_error(&Error::Internal).reason, reasons::INTERNAL);
    }

    #[test]
    fn denials_use_the_domain_names() {
        assert_eq!(of_denial(&Denial::Revoked), Verdict::deny("revoked"));
        assert_eq!(of_denial(&Denial::Malformed).reason, "malformed");
    }
}
