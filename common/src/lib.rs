//! Domain types shared by the worker and the coordinator: component names, and (later) specs,
//! tasks, pruning algorithms and result writers. Nothing here depends on candle or a server.

pub mod component;

pub use component::{Component, ComponentError};
