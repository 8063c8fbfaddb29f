//! The domain error: one enum for the use cases and the decision path, mapped to gRPC status
//! in one place (`transport::grpc::status`). Messages are safe to show a client; causes
//! that are not (store errors) are logged where they happen and never carry a token. Cheap
//! to clone: the verified-token cache hands one cold lookup's error to every caller that
//! waited on it.

use crate::store::StoreError;

/// One invalid request field, reported as a `google.rpc.BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `name` or `scopes[2]`.
    pub field: String,
    /// What is wrong with it, without echoing secrets.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Errors of the token use cases and of authorization.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// One or more request fields are invalid.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// No caller token, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller may see the resource but not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Not found, or not visible to the caller.
    #[error("{0}")]
    NotFound(String),
    /// The resource is in a state that does not allow this (a revoked token is final).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The token was rotated already: it works until its overlap ends, and `replaced_by`
    /// took its place. A FAILED_PRECONDITION that names the replacement.
    #[error("token {id} was already rotated; it was replaced by token {replaced_by}")]
    AlreadyRotated {
        /// The rotated token.
        id: uuid::Uuid,
        /// Its replacement.
        replaced_by: uuid::Uuid,
    },
    /// The store cannot be reached; never to be reported as an invalid token.
    #[error("token store unavailable")]
    Unavailable,
    /// Too much work queued (argon2 pool full).
    #[error("{0}")]
    ResourceExhausted(&'static str),
    /// A fairness limit refused the call (docs/security.md): retryable after `retry_after`.
    #[error("{message}")]
    RateLimited {
        /// What was limited, safe to show.
        message: &'static str,
        /// When a retry can succeed, at the earliest.
        retry_after: std::time::Duration,
    },
    /// Anything unexpected; the cause was logged.
    #[error("internal error")]
    Internal,
}

impl Error {
    /// A single-field INVALID_ARGUMENT.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "token store unavailable");
                Self::Unavailable
            }
            StoreError::Conflict(what) => {
                tracing::error!(conflict = %what, "unexpected store conflict");
                Self::Internal
            }
            StoreError::Internal(cause) => {
                tracing::error!(error = %cause, "token store error");
                Self::Internal
            }
        }
    }
}
