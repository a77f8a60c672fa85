//! The circuit-sweep coordinator: a gRPC server that plans jobs into shards, leases them to
//! workers, keeps its state in an embedded database, and aggregates results folders; the
//! client side of `submit`/`status`/`cancel`/`results`; the live dashboard; and the coordinator
//! process (`process`: server and dashboard until shutdown), which the CLI only feeds with
//! flags. These never import the worker crate; `local` composes both peers into an in-process
//! cluster for `run`.

pub mod aggregate;
pub mod client;
pub mod dashboard;
pub mod followup;
pub mod incoming;
pub mod local;
pub mod process;
pub mod scheduler;
pub mod server;
pub mod store;
