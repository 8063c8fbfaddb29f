//! The one place where outcomes become gRPC status codes: domain errors, refused caller
//! tokens, and the status inside an Envoy CheckResponse.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    authorize::Denial,
    error::{Error, FieldViolation},
    token::redact,
};

/// What a request without a credential is told.
const MISSING_CREDENTIALS: &str = "missing credentials: send `authorization: Bearer <token>`";

/// Most field violations listed in one answer; the rest are counted in a last entry. A
/// request with thousands of unknown scopes once produced 1.43 MB of trailers.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest field path or description echoed, in characters (longer ones are cut).
pub const MAX_ECHO_CHARS: usize = 200;
/// Violations spelled out in the status message itself (all of them, up to
/// [`MAX_VIOLATIONS`], are in the details): enough for a person reading grpcurl's output.
pub const MAX_IN_MESSAGE: usize = 5;

/// Client-supplied text as it may be echoed: token-shaped words cut to their display
/// prefix (`token::redact`), and at most [`MAX_ECHO_CHARS`] characters.
pub fn echo(text: &str) -> String {
    let redacted = redact(text);
    match redacted.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &redacted[..end]),
        None => redacted.into_owned(),
    }
}

/// The `google.rpc.BadRequest` of an INVALID_ARGUMENT: every violation redacted and cut,
/// at most [`MAX_VIOLATIONS`] of them, then one entry saying how many more there were.
/// Returns the status message too: `field: reason; field: reason`, the first
/// [`MAX_IN_MESSAGE`] of them, so that the reasons read without decoding the details.
fn bad_request(violations: Vec<FieldViolation>) -> (String, Vec<tonic_types::FieldViolation>) {
    let total = violations.len();
    let mut listed: Vec<tonic_types::FieldViolation> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|v| tonic_types::FieldViolation::new(echo(&v.field), echo(&v.description)))
        .collect();
    let mut message: Vec<String> = listed
        .iter()
        .take(MAX_IN_MESSAGE)
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    if total > MAX_IN_MESSAGE {
        message.push(format!("and {} more", total - MAX_IN_MESSAGE));
    }
    if total > MAX_VIOLATIONS {
        listed.push(tonic_types::FieldViolation::new(
            "",
            format!("and {} more", total - MAX_VIOLATIONS),
        ));
    }
    (message.join("; "), listed)
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let (message, listed) = bad_request(violations);
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(listed),
                )
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(echo(&message)),
            Error::NotFound(message) => Status::not_found(echo(&message)),
            Error::FailedPrecondition(message) => Status::failed_precondition(echo(&message)),
            Error::AlreadyRotated { id, replaced_by } => {
                let message = Error::AlreadyRotated { id, replaced_by }.to_string();
                let mut details = ErrorDetails::with_precondition_failure_violation(
                    "ROTATED",
                    format!("tokens/{id}"),
                    format!("replaced by token {replaced_by}"),
                );
                details.set_error_info(
                    "TOKEN_ALREADY_ROTATED",
                    ERROR_DOMAIN,
                    [("replaced_by".to_owned(), replaced_by.to_string())]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                );
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::Unavailable => Status::unavailable("token store unavailable, try again"),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            // google.rpc.RetryInfo: gRPC clients and the console read when to come back.
            Error::RateLimited {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                format!("{message}; retry in {} ms", retry_after.as_millis().max(1)),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Error::Internal => Status::internal("internal error"),
        }
    }
}

/// The `domain` of our `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "auth.casola";

/// A report refused because its source sent too many (ReportExposedTokens).
pub fn reports_rate_limited() -> Status {
    Status::resource_exhausted("too many reports from this address; retry later")
}

/// A call refused at admission: too many calls in flight. Retryable, and answered at once.
pub fn overloaded() -> Status {
    Status::resource_exhausted("overloaded: too many calls in flight; retry with backoff")
}

/// A call whose trips through the runtime's queue (`waited` each) would outlast its
/// deadline: shed unanswered, like a call past `max_in_flight`.
pub fn queued_too_long(waited: std::time::Duration) -> Status {
    Status::resource_exhausted(format!(
        "overloaded: waited {} ms for a worker; retry with backoff",
        waited.as_millis()
    ))
}

/// A call whose deadline (the caller's `grpc-timeout`, or the decision ceiling) passed
/// before it was answered; its work was dropped.
pub fn deadline_exceeded(deadline: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "not answered within the deadline of {} ms; the work was dropped",
        deadline.as_millis()
    ))
}

/// A call that needs a caller token came without one.
pub fn missing_credentials() -> Status {
    Status::unauthenticated(MISSING_CREDENTIALS)
}

/// The caller's own token was refused (TokenService): no detail, the reason is logged.
pub fn caller_refused() -> Status {
    Status::unauthenticated("invalid or expired token")
}

/// WhoAmI's answer for a refused token: the stable reason, which its holder may know.
pub fn token_not_accepted(denial: &Denial) -> Status {
    Status::unauthenticated(format!("token not accepted: {}", denial.as_str()))
}

/// The status inside a CheckResponse (Envoy reads only whether it is OK; logs and
/// `grpcurl` show the message).
pub fn check(code: Code, message: &str) -> Status {
    Status::new(code, echo(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::PlainToken;

    fn details_of(status: &Status) -> Vec<tonic_types::FieldViolation> {
        status
            .get_details_bad_request()
            .map(|b| b.field_violations)
            .unwrap_or_default()
    }

    #[test]
    fn a_token_pasted_into_a_field_is_not_echoed() {
        let token = PlainToken::generate();
        let raw = token.expose();
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation::new("scopes[0]", format!("unknown scope {raw:?}")),
            FieldViolation::new("preset", format!("unknown preset {raw:?}")),
        ]));
        let secret = std::str::from_utf8(token.secret_part()).unwrap();
        let everything = format!("{status:?} {:?}", details_of(&status));
        assert!(!everything.contains(secret), "{everything}");
        assert!(everything.contains(&token.lookup_id().display_prefix()));
        let denied = Status::from(Error::PermissionDenied(format!("no {raw}")));
        assert!(!denied.message().contains(secret));
    }

    #[test]
    fn a_flood_of_violations_gives_a_bounded_answer() {
        let violations: Vec<FieldViolation> = (0..21_000)
            .map(|i| FieldViolation::new(format!("scopes[{i}]"), format!("unknown scope \"x{i}\"")))
            .collect();
        let status = Status::from(Error::InvalidArgument(violations));
        let listed = details_of(&status);
        assert_eq!(listed.len(), MAX_VIOLATIONS + 1);
        assert_eq!(listed[MAX_VIOLATIONS].description, "and 20980 more");
        assert!(
            status
                .message()
                .starts_with("scopes[0]: unknown scope \"x0\"; scopes[1]"),
            "{}",
            status.message()
        );
        assert!(status.message().ends_with("; and 20995 more"));
        assert!(status.message().len() < 1024);
        assert!(
            status.details().len() < 4096,
            "{} bytes",
            status.details().len()
        );
    }

    #[test]
    fn the_message_spells_out_each_field_and_reason() {
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation::new("name", "must be at most 100 characters, is 101"),
            FieldViolation::new("preset", "unknown preset \"nope\""),
        ]));
        assert_eq!(
            status.message(),
            "name: must be at most 100 characters, is 101; preset: unknown preset \"nope\""
        );
    }

    #[test]
    fn an_already_rotated_token_names_its_replacement_in_the_details() {
        let (id, replaced_by) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let status = Status::from(Error::AlreadyRotated { id, replaced_by });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains(&replaced_by.to_string()));
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "TOKEN_ALREADY_ROTATED");
        assert_eq!(info.metadata["replaced_by"], replaced_by.to_string());
        let violation = &details.precondition_failure().unwrap().violations[0];
        assert_eq!(violation.subject, format!("tokens/{id}"));
    }

    #[test]
    fn long_descriptions_are_cut() {
        let long = "y".repeat(10_000);
        let status = Status::from(Error::invalid("name", long));
        let listed = details_of(&status);
        assert_eq!(listed[0].description.chars().count(), MAX_ECHO_CHARS + 1);
    }
}
