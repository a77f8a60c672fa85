//! Domain types shared by the worker and the coordinator: component names and the edge graph,
//! datasets, task generators, the prompt checker, a seeded random generator, specs, metrics,
//! the greedy searches (node and edge pruning, order studies), shard plans, result writers and
//! plots, the model-free parts of the analyses, and MIB's circuit files and faithfulness
//! arithmetic. Nothing here depends on candle or a server.

pub mod analysis;
pub mod check;
pub mod circuit;
pub mod component;
pub mod convergence;
pub mod curves;
pub mod data_spec;
pub mod dataset;
pub mod downstream;
pub mod edge;
pub mod edge_prune;
pub mod extension;
pub mod faithfulness;
pub mod greedy;
pub mod guided;
pub mod inputs;
pub mod limits;
pub mod metric;
pub mod mib;
pub mod orders;
pub mod prune;
pub mod results;
pub mod rng;
pub mod shard;
pub mod spec;
pub mod tasks;

pub use component::{Component, ComponentError};
pub use dataset::{DatasetError, PromptPair};
