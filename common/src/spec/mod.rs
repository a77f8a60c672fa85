//! The sweep spec (`circuit-sweep run SPEC.toml`): every field documented in the README,
//! unknown fields refused, values checked before any forward pass with the field named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data_spec::DataSpec;
use crate::edge::GraphShape;
use crate::greedy::Rule;

mod ablation;
mod order_count;
mod sweep;
#[cfg(test)]
mod tests;
mod validate;

pub use ablation::{
    AblationKind, AblationSpec, Direction, Metric, Normalize, kind_name, metric_name,
};
pub use order_count::OrderCount;
pub use sweep::{
    AttributionMethod, AttributionOver, Candidates, DEFAULT_IG_STEPS, EdgeMethod, KvEdges,
    Schedule, SweepKind, SweepKindSpec,
};

/// A whole sweep spec.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The model.
    #[serde(default)]
    pub model: ModelSpec,
    /// The prompts.
    #[serde(default)]
    pub data: DataSpec,
    /// How components are ablated and scored.
    #[serde(default)]
    pub ablation: AblationSpec,
    /// What sweep to run.
    #[serde(default)]
    pub sweep: SweepKindSpec,
    /// Downstream ablation (`kind = "downstream"`): the tasks and their prompts.
    #[serde(default)]
    pub downstream: DownstreamSpec,
    /// Execution settings that do not change results.
    #[serde(default)]
    pub run: RunSpec,
}

/// `[downstream]`: generated arithmetic and interval prompts answered by greedy generation.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownstreamSpec {
    /// Tasks: `add1`, `add2`, `sub1`, `sub2`, `intervalK` (default: all of them with K = 1, 2,
    /// 3, 10).
    #[serde(default = "crate::tasks::downstream::default_tasks")]
    pub tasks: Vec<crate::tasks::downstream::DownTask>,
    /// Prompts per task.
    #[serde(default = "default_down_n")]
    pub n: usize,
    /// Solved examples before each arithmetic question.
    #[serde(default = "default_shots")]
    pub shots: usize,
    /// Seed of the prompts.
    #[serde(default)]
    pub seed: u64,
}

fn default_down_n() -> usize {
    32
}
fn default_shots() -> usize {
    3
}

impl Default for DownstreamSpec {
    fn default() -> Self {
        DownstreamSpec {
            tasks: crate::tasks::downstream::default_tasks(),
            n: default_down_n(),
            shots: default_shots(),
            seed: 0,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A Hugging Face folder or a .gguf file; the default model if omitted.
    pub path: Option<PathBuf>,
    /// `f32`, `f16` or `bf16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            path: None,
            dtype: default_dtype(),
            device: default_device(),
        }
    }
}

/// `[run]`: how the work is executed (never changes the numbers, except through the kernels of
/// the workers that run it: `profile` pins them).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Upper bound of tokens (variants x prompts x positions) in one forward pass. Unset:
    /// [`CPU_BATCH_TOKENS`] on a CPU, and on a GPU what its free memory holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
    /// Only workers of this numeric profile (`cpu-x86-64-v3`, `cuda`, ...: what `status`
    /// shows) compute the job, so that its numbers are those of one kind of kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Tokens of a pass on a CPU when the spec sets none: larger passes are no faster there.
pub const CPU_BATCH_TOKENS: usize = 16384;

/// A spec that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has an unknown field (toml names it, with line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: [{table}] {field}: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The table (`sweep`, `model`, ...).
        table: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl SweepSpec {
    /// Parses TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let spec: SweepSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// Reads and validates a spec file.
    pub fn read(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The files the spec names (dataset, orders, circuit, edge scores): they travel with a
    /// submission.
    pub fn input_files(&self) -> Vec<&PathBuf> {
        [
            self.data.file.as_ref(),
            self.sweep.orders_file.as_ref(),
            self.sweep.circuit_file.as_ref(),
            self.sweep.extends.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.sweep.scores_files.iter().flatten())
        .collect()
    }

    /// `[sweep] positions` as positions in sequences of `seq_len` tokens (sorted, distinct).
    pub fn edge_positions(&self, seq_len: usize) -> Result<Option<Vec<usize>>, String> {
        let Some(ps) = &self.sweep.positions else {
            return Ok(None);
        };
        let mut out = vec![];
        for &p in ps {
            let abs = if p < 0 { seq_len as i64 + p } else { p };
            if abs < 0 || abs >= seq_len as i64 {
                return Err(format!(
                    "[sweep] positions: {p} is outside the {seq_len} positions of the prompts"
                ));
            }
            out.push(abs as usize);
        }
        out.sort_unstable();
        out.dedup();
        Ok(Some(out))
    }

    /// The removal rule of a single pruning run: `tau` nats with KL (default 0.01), else a %
    /// threshold (default 80).
    pub fn rule(&self) -> Rule {
        match self.ablation.metric {
            Metric::Kl => Rule::Tau(self.sweep.tau.unwrap_or(0.01)),
            _ => Rule::Threshold(self.sweep.threshold.unwrap_or(80.0)),
        }
    }

    /// The edge graph of a model of `shape` as this spec asks for it: key/value receivers per
    /// query head or per key/value head, and no `embed` sender with path patching.
    pub fn graph(&self, shape: GraphShape) -> GraphShape {
        GraphShape {
            kv_per_query: self.sweep.kv_edges == KvEdges::QueryHead,
            embed: self.sweep.edge_method == EdgeMethod::Direct,
            ..shape
        }
    }

    /// The rules of a pruning job: one per nested threshold, else the single run's.
    pub fn rules(&self) -> Vec<Rule> {
        match &self.sweep.thresholds {
            Some(ts) => ts.iter().map(|&t| Rule::Threshold(t)).collect(),
            None => vec![self.rule()],
        }
    }
}
