//! `result.json`, typed: what a run was asked (the spec), what it ran on (model, dataset,
//! baselines) and what it found (one section per sweep kind). Aggregation writes it and the
//! analyses read it. Schema 1: the layout of every release so far; a pruning run's `prune` is
//! one run, or a list of runs for nested thresholds, and both shapes read back.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Component;
use crate::downstream::Spread;
use crate::edge_prune::{EdgeOrderStudy, EdgePruneResult};
use crate::orders::OrderStudy;
use crate::prune::PruneResult;
use crate::results::{NodeScores, SCHEMA, WriteError, write_result_json};
use crate::spec::SweepSpec;

/// A results folder's `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultDoc {
    /// Layout version ([`SCHEMA`]).
    pub schema: u32,
    /// The spec the run was given, defaults filled in.
    pub spec: SweepSpec,
    /// The model file or folder and its facts.
    pub model: ModelRecord,
    /// The checked dataset: its hash, prompt and token counts, BOS handling.
    pub dataset: serde_json::Value,
    /// Metric of the full model on the clean prompts (not for downstream studies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<f64>,
    /// Metric of the full model on the corrupt prompts (not for downstream studies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<f64>,
    /// Metric of the empty circuit, where `normalize = "empty"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<f64>,
    /// Node sweeps and pruning: every head and MLP ablated alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeScores>,
    /// Pruning: the circuit(s) found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneRuns>,
    /// Order studies: every order's circuit and how much they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders: Option<OrderStudy>,
    /// Edge sweeps: every edge ablated alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<EdgeScores>,
    /// Edge pruning: the edge circuit found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_prune: Option<EdgePruneResult>,
    /// Edge order studies: every order's edge circuit and how much they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_orders: Option<EdgeOrderStudy>,
    /// Downstream studies: accuracy of every head set on every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<DownstreamStudy>,
    /// Attribution: estimated scores of every edge (or node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionScores>,
    /// Faithfulness curves of edge scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<FaithfulnessCurves>,
    /// Wall time and shard counts: the only part that differs between two runs of one spec.
    pub timing: Timing,
}

/// The model a run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The file or folder the worker loaded.
    pub path: String,
    /// Architecture, shape and dtype.
    pub info: serde_json::Value,
}

/// The runs of a pruning job: one, or one per nested threshold (largest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PruneRuns {
    /// A single rule.
    One(Box<PruneResult>),
    /// Nested thresholds, each run starting from the previous circuit.
    Nested(Vec<PruneResult>),
}

impl PruneRuns {
    /// The runs as a list.
    pub fn runs(&self) -> &[PruneResult] {
        match self {
            PruneRuns::One(r) => std::slice::from_ref(r),
            PruneRuns::Nested(rs) => rs,
        }
    }

    /// The last (smallest) circuit's run.
    pub fn last(&self) -> Option<&PruneResult> {
        self.runs().last()
    }

    /// One run as itself, several as a list (the layout of schema 1).
    pub fn of(mut runs: Vec<PruneResult>) -> Self {
        if runs.len() == 1 {
            PruneRuns::One(Box::new(runs.remove(0)))
        } else {
            PruneRuns::Nested(runs)
        }
    }
}

/// Single-edge scores of an edge sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeScores {
    /// Edge names in graph order.
    pub names: Vec<String>,
    /// Score of each edge ablated alone.
    pub scores: Vec<f64>,
    /// The node circuit the graph is restricted to.
    pub circuit: Option<Vec<Component>>,
    /// That circuit's score.
    pub circuit_score: Option<f64>,
}

/// Attribution's estimated scores, in the unit of exact ones (% of the full model, or KL in
/// nats): the score each edge (node) would get ablated alone, to first order (EAP) or along
/// the path where everything is ablated together (EAP-IG).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionScores {
    /// `eap` or `eap_ig`.
    pub method: crate::spec::AttributionMethod,
    /// Passes per prompt (integration steps; 1 for EAP).
    pub steps: usize,
    /// Edge names in graph order (`over = "edges"`), or node names (`embed`, heads, MLPs).
    pub names: Vec<String>,
    /// Estimated score of each.
    pub scores: Vec<f64>,
    /// With edges: every node's score too (`embed`, then heads and MLPs in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NamedScores>,
}

/// Faithfulness curves: circuits of the top edges of each file's scores at shares of the
/// graph, evaluated by exact patching, `f = (m(C) - m(empty)) / (m(full) - m(empty))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaithfulnessCurves {
    /// Shares of the graph's edges, as fractions.
    pub fractions: Vec<f64>,
    /// Edges in the graph.
    pub graph_edges: usize,
    /// Metric of the empty circuit (every edge ablated).
    pub empty: f64,
    /// Metric of the full graph (nothing ablated).
    pub full: f64,
    /// Two curves per file: by signed score (the edges the behaviour needs most first), then
    /// by absolute score.
    pub curves: Vec<FaithfulnessCurve>,
}

/// One curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaithfulnessCurve {
    /// The file of edge scores, as the spec names it.
    pub file: String,
    /// Edges selected by absolute score.
    pub absolute: bool,
    /// Edges each circuit keeps (after keeping only those on input-to-logits paths).
    pub edges: Vec<u64>,
    /// Metric of each circuit.
    pub metrics: Vec<f64>,
    /// Faithfulness of each circuit.
    pub faithfulness: Vec<f64>,
    /// Area under the curve (MIB's CPR, of the signed curve; higher is better).
    pub cpr: f64,
    /// Area between the curve and 1 (MIB's CMD, of the absolute curve; lower is better).
    pub cmd: f64,
}

/// Names and their scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedScores {
    /// Names.
    pub names: Vec<String>,
    /// Scores.
    pub scores: Vec<f64>,
}

/// A downstream study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamStudy {
    /// Task names.
    pub tasks: Vec<String>,
    /// Every set, in study order.
    pub sets: Vec<DownstreamSet>,
    /// Per task, the random sets' accuracy spread (`null` without random sets).
    pub random: BTreeMap<String, Option<Spread>>,
    /// Per task, the share of random sets doing no better than the circuit.
    pub circuit_p_value: BTreeMap<String, f64>,
    /// How heads were ablated (`ablation`, and `mean_over` for mean ablation).
    #[serde(flatten)]
    pub ablation: BTreeMap<String, serde_json::Value>,
}

/// One head set of a downstream study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamSet {
    /// `full model`, `circuit heads` or `random N`.
    pub name: String,
    /// The ablated components.
    pub components: Vec<String>,
    /// Accuracy per task, in %.
    pub accuracy: BTreeMap<String, f64>,
}

/// How long a job took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// From submission to aggregation.
    pub seconds: f64,
    /// Shards planned (with `prepare`).
    pub shards: usize,
    /// Attempts started over all shards.
    pub shard_attempts: u32,
    /// The numeric profiles of the workers that computed the shards (one when the job
    /// required one, or the cluster has one kind of worker).
    #[serde(default)]
    pub profiles: Vec<String>,
}

/// `result.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a `result.json` of this layout.
    #[error("{path}: {why}")]
    Layout {
        /// The file.
        path: std::path::PathBuf,
        /// What did not fit.
        why: String,
    },
}

impl ResultDoc {
    /// Reads `path` (a `result.json`).
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ReadError> {
        let layout = |why: String| ReadError::Layout {
            path: path.to_path_buf(),
            why,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| layout(format!("not JSON: {e}")))?;
        if v["schema"] != SCHEMA {
            return Err(layout(format!(
                "schema {} (this build reads schema {SCHEMA})",
                v["schema"]
            )));
        }
        serde_json::from_value(v).map_err(|e| layout(e.to_string()))
    }

    /// The document as JSON (keys in a fixed order).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("results serialize")
    }

    /// Writes `result.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), WriteError> {
        write_result_json(dir, &self.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(score: f64) -> PruneResult {
        PruneResult {
            threshold: Some(80.0),
            tau: None,
            heads: vec!["h0.1".into()],
            mlps: vec!["m0".into()],
            score,
            evaluations: 3,
            passes: 2,
            decisions: vec![],
            guided: None,
        }
    }

    #[test]
    fn prune_reads_back_in_both_shapes() {
        let one: PruneRuns =
            serde_json::from_value(serde_json::to_value(run(81.0)).unwrap()).unwrap();
        assert_eq!(one.last().unwrap().score, 81.0);
        let two = PruneRuns::of(vec![run(90.0), run(81.0)]);
        let back: PruneRuns = serde_json::from_value(serde_json::to_value(&two).unwrap()).unwrap();
        assert_eq!(back, two);
        assert_eq!(back.runs().len(), 2);
        assert_eq!(
            serde_json::to_value(PruneRuns::of(vec![run(1.0)])).unwrap(),
            serde_json::to_value(run(1.0)).unwrap()
        );
    }

    #[test]
    fn another_schema_is_refused_with_the_file() {
        let e = ResultDoc::parse("{\"schema\": 2}", Path::new("r/result.json")).unwrap_err();
        assert!(e.to_string().starts_with("r/result.json:"), "{e}");
    }
}
