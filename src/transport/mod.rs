//! Transport adapters: they convert wire types to domain calls and back, and nothing else.
//! - [`grpc`]: our `casola.auth.v1` services, with caller authentication as a tower layer;
//! - [`envoy`]: Envoy's ext_authz `Authorization/Check`, on the same decision path;
//! - [`telemetry`]: the call layer around every gRPC service (span, metrics, log line) and
//!   the Check span's parent rule; [`verdict`]: domain outcomes as telemetry labels;
//! - [`admission`]: the bound on calls in flight and the deadline of each;
//! - [`connections`]: the accept loop of the gRPC port (connection cap, handshake timeout);
//! - [`codec`]: the protobuf codec of the generated services (client garbage is the
//!   client's error).

pub mod admission;
pub mod codec;
pub mod connections;
pub mod envoy;
pub mod grpc;
pub mod telemetry;
pub mod verdict;
