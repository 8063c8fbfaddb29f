//! The integration tests, one crate with a module per area, against a real server (in this
//! process or the real binary), real Postgres and real gRPC clients on loopback. Shared
//! fixtures live in `support`.

mod bad_input;
mod client_garbage;
mod console;
mod fairness;
mod faults;
mod grpc_api;
mod harness;
mod hot_path;
mod lifecycle;
mod observability;
mod overload;
mod postgres_tls;
mod resets;
mod restrictions;
mod rotation;
mod security;
mod store_conformance;
mod support;
