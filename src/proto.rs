//! Generated protobuf and gRPC code for `casola.auth.v1`.

#![allow(clippy::all, reason = "generated code")]

/// `casola.auth.v1` messages and services.
pub mod casola_auth_v1 {
    tonic::include_proto!("casola.auth.v1");
}

pub use casola_auth_v1::*;

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("casola_auth_descriptor");
