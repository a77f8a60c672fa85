//! The circuit-sweep coordinator: a gRPC server that plans jobs into shards, leases them to
//! workers, keeps its state in an embedded database, and aggregates results folders; the
//! client side of `submit`/`status`/`cancel`/`results`; and the live dashboard. These never
//! import the worker crate; `local` composes both peers into an in-process cluster for `run`
//! (as the CLI does).

pub mod aggregate;
pub mod client;
pub mod dashboard;
pub mod incoming;
pub mod local;
pub mod scheduler;
pub mod server;
pub mod store;
