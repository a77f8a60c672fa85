//! The sweep spec (`circuit-sweep run SPEC.toml`): every field documented in the README,
//! unknown fields refused, values checked before any forward pass with the field named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data_spec::DataSpec;
use crate::edge::GraphShape;
use crate::greedy::Rule;

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

/// The sweeps.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SweepKind {
    /// Every head and MLP ablated alone.
    #[default]
    Nodes,
    /// Greedy iterative pruning.
    Prune,
    /// Pruning over many orders.
    Orders,
    /// Every edge ablated alone (path patching).
    Edges,
    /// Greedy pruning over edges.
    EdgePrune,
    /// Generation accuracy on downstream tasks with head sets ablated (a circuit and random
    /// sets as the control).
    Downstream,
}

impl SweepKind {
    /// Whether the sweep is over edges.
    pub fn is_edges(self) -> bool {
        matches!(self, SweepKind::Edges | SweepKind::EdgePrune)
    }

    /// Whether the sweep scores prompt pairs of `[data]` (all but downstream ablation).
    pub fn uses_data(self) -> bool {
        self != SweepKind::Downstream
    }
}

/// Pass orders of pruning.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Backward, forward, ... until a pass removes nothing.
    #[default]
    Paper,
    /// Backward passes only.
    Backward,
    /// Forward passes only.
    Forward,
}

/// `[sweep]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepKindSpec {
    /// nodes | prune | orders.
    #[serde(default)]
    pub kind: SweepKind,
    /// Pruning threshold in % of the full model (default 80).
    pub threshold: Option<f64>,
    /// Pruning with `metric = "kl"`: remove a component (edge) when the circuit's KL from the
    /// full model grows by less than this many nats (default 0.01).
    pub tau: Option<f64>,
    /// Nested thresholds (`[97, 90, 80, 70]`), each continuing from the previous circuit.
    pub thresholds: Option<Vec<f64>>,
    /// Pass schedule of pruning.
    #[serde(default)]
    pub schedule: Schedule,
    /// Order study (`orders`, or `edge_prune` over edge orders): how many seeded random orders.
    pub orders: Option<usize>,
    /// Seed of the random orders.
    #[serde(default)]
    pub seed: u64,
    /// Order study: explicit orders (a JSON list of lists of component names).
    pub orders_file: Option<PathBuf>,
    /// Edge sweeps: restrict the graph to this node circuit (component names); every node
    /// outside it stays ablated.
    pub circuit: Option<Vec<crate::Component>>,
    /// Edge sweeps: the node circuit from a file: a JSON list of component names, or a
    /// `result.json` of a pruning run (its last circuit).
    pub circuit_file: Option<PathBuf>,
    /// Edge sweeps: ablate edges at these positions only (negative counts from the end: -1 is
    /// the last position); every position when omitted.
    pub positions: Option<Vec<i64>>,
    /// Edge sweeps: `direct` edges (default) or the paper's `path` patching.
    #[serde(default, skip_serializing_if = "is_default")]
    pub edge_method: EdgeMethod,
    /// Edge sweeps with grouped-query attention: key/value receivers per `query_head`
    /// (default) or per `kv_head`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kv_edges: KvEdges,
    /// Downstream: random head sets, the control (default 20).
    pub random_sets: Option<usize>,
    /// Downstream: heads per random set (default: the circuit's heads, else 10).
    pub set_size: Option<usize>,
}

/// How an edge is ablated.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeMethod {
    /// The receiver alone reads the residual stream with the sender's write replaced by its
    /// ablated write, in this very pass (ACDC, auto-circuit).
    #[default]
    Direct,
    /// Path patching as in the paper: the sender takes its ablated value, every other head is
    /// frozen at its unablated value and MLPs are recomputed; the receiver alone then reads
    /// what that run gives it. Scored one edge at a time; pruning is one thresholded pass.
    Path,
}

/// Which key and value inputs are edge receivers under grouped-query attention.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KvEdges {
    /// Each query head's own key and value input (auto-circuit, EAP-IG, MIB).
    #[default]
    QueryHead,
    /// The key/value heads' inputs, shared by the query heads of a group.
    KvHead,
}

/// `[run]`: how the work is executed (never changes the numbers).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Upper bound of tokens (variants x prompts x positions) in one forward pass.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

fn default_batch_tokens() -> usize {
    16384
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            batch_tokens: default_batch_tokens(),
        }
    }
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

    /// The files the spec names (dataset, orders, circuit): they travel with a submission.
    pub fn input_files(&self) -> Vec<&PathBuf> {
        [
            self.data.file.as_ref(),
            self.sweep.orders_file.as_ref(),
            self.sweep.circuit_file.as_ref(),
        ]
        .into_iter()
        .flatten()
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

    /// Checks values that serde cannot.
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let bad = |table: &'static str, field: &'static str, reason: String| SpecError::Field {
            path: path.to_path_buf(),
            table,
            field,
            reason,
        };
        if !["f32", "f16", "bf16"].contains(&self.model.dtype.as_str()) {
            return Err(bad(
                "model",
                "dtype",
                format!("`{}` is not f32, f16 or bf16", self.model.dtype),
            ));
        }
        let d = self.model.device.as_str();
        let cuda_ok = d
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if d != "cpu" && !cuda_ok {
            return Err(bad(
                "model",
                "device",
                format!("`{d}` is not cpu or cuda:N"),
            ));
        }
        let in_range = |t: f64| t > 0.0 && t <= 100.0;
        if let Some(t) = self.sweep.threshold
            && !in_range(t)
        {
            return Err(bad(
                "sweep",
                "threshold",
                format!("{t} is outside (0, 100]"),
            ));
        }
        if let Some(ts) = &self.sweep.thresholds {
            if ts.is_empty() {
                return Err(bad("sweep", "thresholds", "is empty".into()));
            }
            if let Some(t) = ts.iter().find(|t| !in_range(**t)) {
                return Err(bad(
                    "sweep",
                    "thresholds",
                    format!("{t} is outside (0, 100]"),
                ));
            }
            if ts.windows(2).any(|w| w[1] > w[0]) {
                return Err(bad(
                    "sweep",
                    "thresholds",
                    "must not increase (97, 90, 80, 70): each circuit continues from the previous"
                        .into(),
                ));
            }
            if self.sweep.threshold.is_some() {
                return Err(bad(
                    "sweep",
                    "thresholds",
                    "give `threshold` or `thresholds`, not both".into(),
                ));
            }
        }
        let kl = self.ablation.metric == Metric::Kl;
        let prunes = matches!(
            self.sweep.kind,
            SweepKind::Prune | SweepKind::Orders | SweepKind::EdgePrune
        );
        if kl && prunes {
            let field = if self.sweep.thresholds.is_some() {
                "thresholds"
            } else {
                "threshold"
            };
            if self.sweep.threshold.is_some() || self.sweep.thresholds.is_some() {
                return Err(bad(
                    "sweep",
                    field,
                    "a % threshold does not apply with [ablation] metric = \"kl\" (scores are KL divergences in nats, lower is better): give `tau`, the nats the KL may grow by when a component is removed (default 0.01)".into(),
                ));
            }
        }
        if let Some(tau) = self.sweep.tau {
            if !kl {
                return Err(bad(
                    "sweep",
                    "tau",
                    format!(
                        "applies to [ablation] metric = \"kl\" (here `{}`, scored in %): give `threshold`",
                        metric_name(self.ablation.metric)
                    ),
                ));
            }
            if !prunes {
                return Err(bad(
                    "sweep",
                    "tau",
                    "applies to pruning (kind = \"prune\", \"orders\" or \"edge_prune\")".into(),
                ));
            }
            if !(tau.is_finite() && tau >= 0.0) {
                return Err(bad(
                    "sweep",
                    "tau",
                    format!("{tau} is not a non-negative number of nats"),
                ));
            }
        }
        if kl && self.ablation.normalize != Normalize::Full {
            return Err(bad(
                "ablation",
                "normalize",
                "does not apply to metric = \"kl\": scores are the KL divergence from the full model in nats".into(),
            ));
        }
        let edges = self.sweep.kind.is_edges();
        if !edges && self.sweep.edge_method != EdgeMethod::Direct {
            return Err(bad(
                "sweep",
                "edge_method",
                "only applies to edge sweeps (kind = \"edges\" or \"edge_prune\")".into(),
            ));
        }
        if !edges && self.sweep.kv_edges != KvEdges::QueryHead {
            return Err(bad(
                "sweep",
                "kv_edges",
                "only applies to edge sweeps (kind = \"edges\" or \"edge_prune\")".into(),
            ));
        }
        if self.sweep.edge_method == EdgeMethod::Path {
            if self.sweep.orders.is_some() {
                return Err(bad(
                    "sweep",
                    "orders",
                    "edge_method = \"path\" prunes in one pass over single-edge scores, which no visiting order changes: an order study has nothing to measure".into(),
                ));
            }
            if self.ablation.normalize == Normalize::Empty {
                return Err(bad(
                    "ablation",
                    "normalize",
                    "\"empty\" does not apply to edge_method = \"path\": path patching scores one edge at a time and has no empty circuit".into(),
                ));
            }
        }
        if self.sweep.orders == Some(0) {
            return Err(bad("sweep", "orders", "must be at least 1".into()));
        }
        if self.sweep.kind != SweepKind::Orders && self.sweep.orders_file.is_some() {
            return Err(bad(
                "sweep",
                "orders_file",
                "only applies to kind = \"orders\"".into(),
            ));
        }
        if !matches!(self.sweep.kind, SweepKind::Orders | SweepKind::EdgePrune)
            && self.sweep.orders.is_some()
        {
            return Err(bad(
                "sweep",
                "orders",
                "only applies to kind = \"orders\" or \"edge_prune\" (an edge order study)".into(),
            ));
        }
        if matches!(self.sweep.kind, SweepKind::Nodes | SweepKind::Edges)
            && (self.sweep.threshold.is_some() || self.sweep.thresholds.is_some())
        {
            return Err(bad(
                "sweep",
                "threshold",
                "does not apply to a sweep without pruning (kind = \"nodes\" or \"edges\")".into(),
            ));
        }
        if self.sweep.kind == SweepKind::EdgePrune && self.sweep.thresholds.is_some() {
            return Err(bad(
                "sweep",
                "thresholds",
                "nested thresholds apply to kind = \"prune\"; edge pruning takes `threshold`"
                    .into(),
            ));
        }
        let downstream = self.sweep.kind == SweepKind::Downstream;
        if !self.sweep.kind.is_edges()
            && !downstream
            && (self.sweep.circuit.is_some() || self.sweep.circuit_file.is_some())
        {
            return Err(bad(
                "sweep",
                "circuit",
                "only applies to edge sweeps (kind = \"edges\" or \"edge_prune\") and to kind = \"downstream\"".into(),
            ));
        }
        if !downstream && (self.sweep.random_sets.is_some() || self.sweep.set_size.is_some()) {
            let field = if self.sweep.random_sets.is_some() {
                "random_sets"
            } else {
                "set_size"
            };
            return Err(bad(
                "sweep",
                field,
                "only applies to kind = \"downstream\"".into(),
            ));
        }
        if self.sweep.set_size == Some(0) {
            return Err(bad("sweep", "set_size", "must be at least 1".into()));
        }
        if downstream {
            if self.sweep.threshold.is_some() || self.sweep.thresholds.is_some() {
                return Err(bad(
                    "sweep",
                    "threshold",
                    "does not apply to kind = \"downstream\"".into(),
                ));
            }
            if self.data != DataSpec::default() {
                return Err(bad(
                    "data",
                    "task",
                    "kind = \"downstream\" takes its prompts from [downstream], not [data]".into(),
                ));
            }
            if self.ablation.kind == AblationKind::Resample
                || self.ablation.direction == Direction::Denoising
            {
                return Err(bad(
                    "ablation",
                    "kind",
                    "downstream ablation is zero or mean noising (generated prompts have no corrupt pairs)".into(),
                ));
            }
            if self.downstream.tasks.is_empty() {
                return Err(bad("downstream", "tasks", "is empty".into()));
            }
            if self.downstream.n == 0 {
                return Err(bad("downstream", "n", "must be at least 1".into()));
            }
        } else if self.downstream != DownstreamSpec::default() {
            return Err(bad(
                "downstream",
                "tasks",
                "only applies to kind = \"downstream\"".into(),
            ));
        }
        if !self.sweep.kind.is_edges() && self.sweep.positions.is_some() {
            return Err(bad(
                "sweep",
                "positions",
                "only applies to edge sweeps (kind = \"edges\" or \"edge_prune\")".into(),
            ));
        }
        if self.sweep.positions.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("sweep", "positions", "is empty".into()));
        }
        if self.sweep.circuit.is_some() && self.sweep.circuit_file.is_some() {
            return Err(bad(
                "sweep",
                "circuit",
                "give `circuit` or `circuit_file`, not both".into(),
            ));
        }
        if self.sweep.circuit.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("sweep", "circuit", "is empty".into()));
        }
        if self.sweep.kind.is_edges() && self.ablation.direction == Direction::Denoising {
            return Err(bad(
                "ablation",
                "direction",
                "edge sweeps are implemented for noising".into(),
            ));
        }
        if self.ablation.direction == Direction::Denoising
            && self.ablation.kind != AblationKind::Resample
            && !downstream
        {
            return Err(bad(
                "ablation",
                "kind",
                format!(
                    "`{}` does not apply to direction = \"denoising\": denoising runs the corrupt prompts, gives every component of the circuit its paired clean activation and lets every other component compute on the corrupt prompt, so the ablated side's value is the paired corrupt run's (kind = \"resample\"); a {} there would freeze every component and leave only direct effects",
                    kind_name(self.ablation.kind),
                    if self.ablation.kind == AblationKind::Mean {
                        "per-position mean"
                    } else {
                        "zero"
                    }
                ),
            ));
        }
        if self.ablation.fold_value_bias && self.ablation.kind != AblationKind::Zero {
            return Err(bad(
                "ablation",
                "fold_value_bias",
                format!(
                    "only changes zero ablation (here kind = `{}`): a mean or a resampled activation carries the value bias either way",
                    kind_name(self.ablation.kind)
                ),
            ));
        }
        if self.run.batch_tokens == 0 {
            return Err(bad("run", "batch_tokens", "must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SweepSpec, SpecError> {
        SweepSpec::parse(text, Path::new("s.toml"))
    }

    #[test]
    fn the_readme_example_parses() {
        let s = parse(
            r#"
            [model]
            path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
            dtype = "f32"
            device = "cpu"
            [data]
            task = "months"
            n = 16
            seed = 0
            corruption = "rand_all"
            [ablation]
            kind = "mean"
            direction = "noising"
            metric = "logit_diff"
            normalize = "full"
            [sweep]
            kind = "prune"
            threshold = 80.0
            schedule = "paper"
            "#,
        )
        .unwrap();
        assert_eq!(s.sweep.kind, SweepKind::Prune);
        assert_eq!(s.rule(), Rule::Threshold(80.0));
        assert_eq!(parse("").unwrap(), SweepSpec::default());
    }

    #[test]
    fn a_downstream_spec_parses_with_its_defaults() {
        let s = parse("[sweep]\nkind = \"downstream\"\ncircuit = [\"h1.2\"]\n[downstream]\ntasks = [\"add1\", \"interval10\"]").unwrap();
        assert_eq!(s.sweep.kind, SweepKind::Downstream);
        assert!(!s.sweep.kind.uses_data());
        assert_eq!(s.downstream.tasks.len(), 2);
        assert_eq!((s.downstream.n, s.downstream.shots), (32, 3));
        let d = parse("[sweep]\nkind = \"downstream\"").unwrap();
        assert_eq!(d.downstream.tasks.len(), 8);
    }

    #[test]
    fn edge_positions_count_from_the_end_when_negative() {
        let s = parse("[sweep]\nkind = \"edges\"\npositions = [-1, 0, 22, -1]").unwrap();
        assert_eq!(s.edge_positions(23).unwrap(), Some(vec![0, 22]));
        let e = s.edge_positions(20).unwrap_err();
        assert!(e.contains("22 is outside the 20 positions"), "{e}");
        assert_eq!(parse("").unwrap().edge_positions(5).unwrap(), None);
    }

    #[test]
    fn kl_prunes_by_tau_and_percent_metrics_by_threshold() {
        let kl = parse("[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"edge_prune\"").unwrap();
        assert_eq!(kl.rule(), Rule::Tau(0.01));
        let t =
            parse("[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"orders\"\ntau = 0.05").unwrap();
        assert_eq!(t.rules(), vec![Rule::Tau(0.05)]);
        let p = parse("[sweep]\nkind = \"prune\"\nthresholds = [90, 70]").unwrap();
        assert_eq!(
            p.rules(),
            vec![Rule::Threshold(90.0), Rule::Threshold(70.0)]
        );
        assert_eq!(parse("").unwrap().rule(), Rule::Threshold(80.0));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            ("[sweep]\nkind = \"prune\"\nthreshhold = 80", "threshhold"),
            ("[model]\nweights = \"x\"", "weights"),
            (
                "[sweep]\nkind = \"prune\"\nthreshold = 0",
                "[sweep] threshold: 0 is outside (0, 100]",
            ),
            (
                "[sweep]\nkind = \"prune\"\nthreshold = 120",
                "[sweep] threshold",
            ),
            (
                "[sweep]\nkind = \"prune\"\nthresholds = [80, 90]",
                "[sweep] thresholds: must not increase",
            ),
            ("[sweep]\nkind = \"paths\"", "kind"),
            (
                "[sweep]\nkind = \"nodes\"\ncircuit = [\"h0.1\"]",
                "[sweep] circuit: only applies",
            ),
            ("[sweep]\nkind = \"edges\"\ncircuit = [\"h0.x\"]", "h0.x"),
            (
                "[sweep]\nkind = \"edges\"\nthreshold = 80",
                "[sweep] threshold",
            ),
            (
                "[sweep]\nkind = \"edge_prune\"\ncircuit = [\"m1\"]\ncircuit_file = \"r.json\"",
                "not both",
            ),
            ("[model]\ndtype = \"f64\"", "[model] dtype"),
            ("[model]\ndevice = \"gpu\"", "[model] device"),
            (
                "[ablation]\nkind = \"zero\"\ndirection = \"denoising\"",
                "[ablation] kind: `zero` does not apply to direction = \"denoising\"",
            ),
            (
                "[ablation]\ndirection = \"denoising\"",
                "[ablation] kind: `mean` does not apply to direction = \"denoising\"",
            ),
            (
                "[sweep]\nedge_method = \"path\"",
                "[sweep] edge_method: only applies to edge sweeps",
            ),
            (
                "[sweep]\nkv_edges = \"kv_head\"",
                "[sweep] kv_edges: only applies to edge sweeps",
            ),
            (
                "[sweep]\nkind = \"edge_prune\"\nedge_method = \"path\"\norders = 4",
                "[sweep] orders: edge_method = \"path\" prunes in one pass",
            ),
            (
                "[ablation]\nnormalize = \"empty\"\n[sweep]\nkind = \"edges\"\nedge_method = \"path\"",
                "[ablation] normalize: \"empty\" does not apply to edge_method = \"path\"",
            ),
            ("[sweep]\nkind = \"edges\"\nedge_method = \"acdc\"", "acdc"),
            (
                "[ablation]\nfold_value_bias = true",
                "[ablation] fold_value_bias: only changes zero ablation (here kind = `mean`)",
            ),
            ("[sweep]\norders = 5", "[sweep] orders: only applies"),
            ("[ablation]\nmetric = \"loss\"", "metric"),
            (
                "[sweep]\nrandom_sets = 3",
                "[sweep] random_sets: only applies",
            ),
            (
                "[data]\ntask = \"months\"\n[sweep]\nkind = \"downstream\"",
                "[data] task: kind = \"downstream\" takes its prompts from [downstream]",
            ),
            (
                "[ablation]\nkind = \"resample\"\n[sweep]\nkind = \"downstream\"",
                "[ablation] kind",
            ),
            (
                "[sweep]\nkind = \"downstream\"\n[downstream]\ntasks = [\"mul\"]",
                "mul",
            ),
            (
                "[sweep]\nkind = \"downstream\"\n[downstream]\nn = 0",
                "[downstream] n",
            ),
            ("[downstream]\nn = 5", "[downstream] tasks: only applies"),
            (
                "[sweep]\nkind = \"downstream\"\nthreshold = 80",
                "[sweep] threshold",
            ),
            (
                "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"prune\"\nthreshold = 80",
                "[sweep] threshold: a % threshold does not apply with [ablation] metric = \"kl\"",
            ),
            (
                "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"prune\"\nthresholds = [90, 80]",
                "[sweep] thresholds: a % threshold",
            ),
            (
                "[sweep]\nkind = \"prune\"\ntau = 0.01",
                "[sweep] tau: applies to [ablation] metric = \"kl\" (here `logit_diff`",
            ),
            (
                "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"nodes\"\ntau = 0.01",
                "[sweep] tau: applies to pruning",
            ),
            (
                "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"orders\"\ntau = -1",
                "[sweep] tau: -1 is not",
            ),
            (
                "[ablation]\nmetric = \"kl\"\nnormalize = \"clean_corrupt\"",
                "[ablation] normalize: does not apply to metric = \"kl\"",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with("s.toml: ") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
    }
}
