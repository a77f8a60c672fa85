//! Mechanism analyses next to the sweeps: what is shared between tasks' circuits,
//! what heads do (successor and copy scores of their OV circuits), where they attend, when the
//! answer appears (logit lens). This module holds the model-free parts: token sets, set algebra,
//! logit-lens counts.

pub mod compare;
pub mod cross_task;
pub mod lens;
pub mod token_sets;
