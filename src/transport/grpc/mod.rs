//! The `casola.auth.v1` gRPC services.

mod auth_layer;
mod authorization_service;
mod convert;
pub(crate) mod status;
mod token_service;

pub use auth_layer::{CallerAuth, CallerAuthLayer};
pub use authorization_service::AuthorizationApi;
pub use convert::{principal_to_proto, timestamp, token_to_proto};
pub use token_service::TokenApi;
