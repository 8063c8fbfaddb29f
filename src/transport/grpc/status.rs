//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

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
            Error::Unavailable => Status::unavailable("token store unavailable, try again"),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Internal => Status::internal("internal error"),
        }
    }
}
