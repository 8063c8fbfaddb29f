//! casola-auth: issues and verifies API tokens for the Casola platform.
//!
//! The crate is laid out by concept:
//! - domain: [`token`] (format, hashing, fields), [`scope`] (catalog, presets, expansion),
//!   [`principal`], [`restriction`] (allowed networks and models), [`permission`] (who may
//!   do what), [`authorize`] (the decision path) and [`manage`] (token lifecycle use cases),
//!   [`event`] (the audit trail), [`pagination`]. None of these know tonic or diesel.
//! - [`store`]: one trait, a Postgres and an in-memory implementation.
//! - [`transport`]: adapters that only convert and delegate: our gRPC API and Envoy ext_authz.
//! - the edge: [`config`], [`server`] wiring, [`admin`] HTTP port, [`cli`].
//! - [`telemetry`]: logs, traces and metrics, across all of the above.

pub mod admin;
pub mod authorize;
pub mod cli;
pub mod config;
pub mod console;
pub mod deadline;
pub mod error;
pub mod event;
pub mod manage;
pub mod pagination;
pub mod permission;
pub mod principal;
pub mod proto;
pub mod restriction;
pub mod scope;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod transport;
