//! The one place where outcomes become gRPC status codes: domain errors, refused caller
//! tokens, and the status inside an Envoy CheckResponse.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{authorize::Denial, error::Error};

/// What a request without a credential is told.
const MISSING_CREDENTIALS: &str = "missing credentials: send `authorization: Bearer <token>`";

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let fields: Vec<String> = violations.iter().map(|v| v.field.clone()).collect();
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {}", fields.join(", ")),
                    details,
                )
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::NotFound(message) => Status::not_found(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unavailable => Status::unavailable("token store unavailable, try again"),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Internal => Status::internal("internal error"),
        }
    }
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
    Status::new(code, message)
}
