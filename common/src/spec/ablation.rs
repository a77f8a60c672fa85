//! `[ablation]`: how an ablated component's activation is replaced, which run is patched, what
//! is measured and how it becomes a score.

use serde::{Deserialize, Serialize};

/// How an ablated component's activation is replaced.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AblationKind {
    /// Per-position mean over the corrupt prompts (the paper's).
    #[default]
    Mean,
    /// Zeros.
    Zero,
    /// The paired corrupt prompt's activation.
    Resample,
}

/// Which run is patched.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Run the clean prompts, replace the ablated components.
    #[default]
    Noising,
    /// Run the corrupt prompts, patch each kept component's paired clean activation into it;
    /// the other components compute on the corrupt prompt.
    Denoising,
}

/// What is measured.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean of logit(answer) - logit(wrong) at the last position.
    #[default]
    LogitDiff,
    /// Mean KL divergence of the next-token distribution from the full model's (nats; 0 is
    /// the full model, lower is better; scores are the KL itself).
    Kl,
    /// Share of prompts whose top-1 is the answer.
    Accuracy,
}

/// How a metric becomes a score.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// `100 * metric / full` (the paper's).
    #[default]
    Full,
    /// `100 * (metric - corrupt) / (full - corrupt)`: 0 is the corrupt run.
    CleanCorrupt,
    /// `100 * (metric - empty) / (full - empty)`: 0 is the empty circuit, every node (node
    /// sweeps) or every edge (edge sweeps) ablated with the same ablation (MIB's faithfulness).
    Empty,
}

/// `[ablation]`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AblationSpec {
    /// mean | zero | resample.
    #[serde(default)]
    pub kind: AblationKind,
    /// noising | denoising.
    #[serde(default)]
    pub direction: Direction,
    /// logit_diff | kl | accuracy.
    #[serde(default)]
    pub metric: Metric,
    /// full | clean_corrupt | empty.
    #[serde(default)]
    pub normalize: Normalize,
    /// Zero ablation: replace a head's output by its value bias instead of zeros, as
    /// TransformerLens does once it has folded `b_V` into `b_O` (`hook_z` then excludes `b_V`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fold_value_bias: bool,
}

/// An ablation kind's name as the spec spells it.
pub fn kind_name(k: AblationKind) -> &'static str {
    match k {
        AblationKind::Mean => "mean",
        AblationKind::Zero => "zero",
        AblationKind::Resample => "resample",
    }
}

/// A metric's name as the spec spells it.
pub fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::LogitDiff => "logit_diff",
        Metric::Kl => "kl",
        Metric::Accuracy => "accuracy",
    }
}
