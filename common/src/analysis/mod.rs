//! Mechanism analyses next to the sweeps: what is shared between tasks' circuits,
//! what heads do (successor and copy scores of their OV circuits), where they attend, when the
//! answer appears (logit lens), and what ablating heads does to downstream tasks. This module
//! holds the model-free parts: token sets, downstream prompts and their scoring, set algebra.

pub mod cross_task;
pub mod downstream;
pub mod lens;
pub mod token_sets;
