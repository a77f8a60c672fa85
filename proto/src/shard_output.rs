//! What a shard returns, typed: the other half of the worker-coordinator contract
//! ([`ShardTask`] is the first). One codec turns an output into the wire tensors a worker
//! streams and back, with every check a receiver needs before it stores a result: shapes that
//! fit the task and the model, run counts, components and edges that exist in the model.
//!
//! Adding a sweep kind adds one [`ShardOutput`] arm, its tensors in [`ShardOutput::encode`] and
//! its checks in [`ShardOutput::decode`].

use circuit_sweep_common::Component;
use circuit_sweep_common::edge::Edge;
use circuit_sweep_common::edge_prune::EdgePruneResult;
use circuit_sweep_common::prune::PruneResult;
use circuit_sweep_common::shard::{JobMeta, NodeShard, ShardTask};
use circuit_sweep_common::spec::SweepSpec;

use crate::tensor::{self, WireTensor};

/// A shard's result.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutput {
    /// `prepare`: the model's shape, the checked prompts and the unablated metrics.
    Prepared(Box<JobMeta>),
    /// A node shard: per layer, head scores and the MLP score.
    Nodes(NodeShard),
    /// Pruning runs (one per threshold of `prune`, one per order of `orders`).
    Runs(Vec<PruneResult>),
    /// Single-edge scores of `edges first..first + count`, in graph order.
    Edges(Vec<f64>),
    /// Edge pruning runs (one for `edge_prune`, one per order of `edge_orders`).
    EdgeRuns(Vec<EdgePruneResult>),
    /// Downstream accuracy `[set][task]` in %.
    Accuracy(Vec<Vec<f64>>),
    /// Attribution sums of a range of prompts: estimated metric changes per edge (graph
    /// order; none when nodes are scored) and per node (the embedding, then every head and
    /// MLP in order).
    Attribution {
        /// Per edge.
        edges: Vec<f64>,
        /// Per node.
        nodes: Vec<f64>,
    },
    /// One circuit's score (an order study's consensus), in the unit of pruning's scores.
    Score(f64),
    /// Faithfulness: per circuit of the shard, its metric and how many edges it keeps.
    Circuits {
        /// Metric with every edge outside the circuit ablated.
        metrics: Vec<f64>,
        /// Edges kept.
        kept: Vec<u64>,
    },
}

/// A result that does not fit its shard.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<tensor::TensorError> for Malformed {
    fn from(e: tensor::TensorError) -> Self {
        Malformed(e.to_string())
    }
}

/// Tensor names, spelled once.
mod names {
    pub const META: &str = "meta";
    pub const HEADS: &str = "heads";
    pub const MLPS: &str = "mlps";
    pub const SCORES: &str = "scores";
    pub const RUNS: &str = "runs";
    pub const EDGES: &str = "edges";
    pub const EDGE_RUNS: &str = "edge_runs";
    pub const ACCURACY: &str = "accuracy";
    pub const ATTRIBUTION_EDGES: &str = "attribution_edges";
    pub const ATTRIBUTION_NODES: &str = "attribution_nodes";
    pub const METRICS: &str = "metrics";
    pub const KEPT: &str = "kept";
    pub const SCORE: &str = "score";
}

/// Edges and nodes an attribution shard of a job of `spec` reports.
pub fn attribution_counts(spec: &SweepSpec, meta: &JobMeta) -> (usize, usize) {
    let edges = if spec.sweep.scores_edges() {
        meta.graph_shape(spec).edge_count(None)
    } else {
        0
    };
    (edges, 1 + meta.n_layers * (meta.n_heads + 1))
}

fn json_tensor<T: serde::Serialize + ?Sized>(name: &str, value: &T) -> WireTensor {
    WireTensor::json(
        name,
        serde_json::to_string(value).expect("results serialize"),
    )
}

fn json_of<T: serde::de::DeserializeOwned>(ts: &[WireTensor], name: &str) -> Result<T, Malformed> {
    let text = tensor::find(ts, name)?.to_json_text()?;
    serde_json::from_str(text).map_err(|e| Malformed(format!("tensor `{name}`: {e}")))
}

fn f64_of(ts: &[WireTensor], name: &str, shape: &[usize]) -> Result<Vec<f64>, Malformed> {
    Ok(tensor::find(ts, name)?.to_f64(shape)?)
}

/// The model's shape, which every output but `prepare`'s is checked against.
fn shape_of(meta: Option<&JobMeta>) -> Result<&JobMeta, Malformed> {
    meta.ok_or_else(|| Malformed("no prepare result yet".into()))
}

/// Runs' scores travel twice (in the runs and as a score tensor): they must agree bit for bit.
fn same_scores(runs: impl Iterator<Item = f64>, scores: &[f64]) -> Result<(), Malformed> {
    for (r, s) in runs.zip(scores) {
        if r.to_bits() != s.to_bits() {
            return Err(Malformed(format!(
                "run score {r} differs from score tensor {s}"
            )));
        }
    }
    Ok(())
}

impl ShardOutput {
    /// The wire tensors of this output.
    pub fn encode(&self) -> Vec<WireTensor> {
        match self {
            ShardOutput::Prepared(meta) => vec![json_tensor(names::META, meta)],
            ShardOutput::Nodes(n) => {
                let n_heads = n.heads.first().map_or(0, Vec::len);
                let heads: Vec<f64> = n.heads.iter().flatten().copied().collect();
                vec![
                    WireTensor::f64(names::HEADS, &[n.layers.len(), n_heads], &heads),
                    WireTensor::f64(names::MLPS, &[n.layers.len()], &n.mlps),
                ]
            }
            ShardOutput::Runs(runs) => {
                let scores: Vec<f64> = runs.iter().map(|r| r.score).collect();
                vec![
                    WireTensor::f64(names::SCORES, &[runs.len()], &scores),
                    json_tensor(names::RUNS, runs),
                ]
            }
            ShardOutput::Edges(scores) => {
                vec![WireTensor::f64(names::EDGES, &[scores.len()], scores)]
            }
            ShardOutput::EdgeRuns(runs) => {
                let scores: Vec<f64> = runs.iter().map(|r| r.score).collect();
                vec![
                    WireTensor::f64(names::SCORES, &[runs.len()], &scores),
                    json_tensor(names::EDGE_RUNS, runs),
                ]
            }
            ShardOutput::Accuracy(acc) => {
                let tasks = acc.first().map_or(0, Vec::len);
                let flat: Vec<f64> = acc.iter().flatten().copied().collect();
                vec![WireTensor::f64(names::ACCURACY, &[acc.len(), tasks], &flat)]
            }
            ShardOutput::Circuits { metrics, kept } => {
                let k: Vec<f64> = kept.iter().map(|&x| x as f64).collect();
                vec![
                    WireTensor::f64(names::METRICS, &[metrics.len()], metrics),
                    WireTensor::f64(names::KEPT, &[kept.len()], &k),
                ]
            }
            ShardOutput::Score(score) => vec![WireTensor::f64(names::SCORE, &[1], &[*score])],
            ShardOutput::Attribution { edges, nodes } => vec![
                WireTensor::f64(names::ATTRIBUTION_EDGES, &[edges.len()], edges),
                WireTensor::f64(names::ATTRIBUTION_NODES, &[nodes.len()], nodes),
            ],
        }
    }

    /// The output of `task` of a job of `spec` from its wire tensors, refused unless it fits
    /// the task and the model `meta` describes (`None` before the prepare shard is done).
    pub fn decode(
        task: &ShardTask,
        spec: &SweepSpec,
        meta: Option<&JobMeta>,
        ts: &[WireTensor],
    ) -> Result<Self, Malformed> {
        for t in ts {
            t.validate()?;
        }
        match task {
            ShardTask::Prepare => {
                let meta: JobMeta = json_of(ts, names::META)?;
                // The coordinator plans from this shape: a worker must not make it allocate
                // for a model no one has.
                use circuit_sweep_common::limits::{MAX_HEADS, MAX_LAYERS};
                if !(1..=MAX_LAYERS).contains(&meta.n_layers)
                    || !(1..=MAX_HEADS).contains(&meta.n_heads)
                    || meta.n_kv_heads > meta.n_heads
                {
                    return Err(Malformed(format!(
                        "model of {} layers, {} heads and {} key-value heads (1 to {MAX_LAYERS} \
                         layers and 1 to {MAX_HEADS} heads, key-value heads at most the heads)",
                        meta.n_layers, meta.n_heads, meta.n_kv_heads
                    )));
                }
                Ok(ShardOutput::Prepared(Box::new(meta)))
            }
            ShardTask::Nodes { layers } => {
                let n_heads = shape_of(meta)?.n_heads;
                let heads = f64_of(ts, names::HEADS, &[layers.len(), n_heads])?;
                let mlps = f64_of(ts, names::MLPS, &[layers.len()])?;
                Ok(ShardOutput::Nodes(NodeShard {
                    layers: layers.clone(),
                    heads: heads.chunks(n_heads.max(1)).map(<[f64]>::to_vec).collect(),
                    mlps,
                }))
            }
            ShardTask::Edges { count, .. } => {
                Ok(ShardOutput::Edges(f64_of(ts, names::EDGES, &[*count])?))
            }
            ShardTask::Downstream { count, .. } => {
                let tasks = spec.downstream.tasks.len();
                let flat = f64_of(ts, names::ACCURACY, &[*count, tasks])?;
                if let Some(v) = flat.iter().find(|v| !(0.0..=100.0).contains(*v)) {
                    return Err(Malformed(format!("accuracy {v} outside 0..=100")));
                }
                Ok(ShardOutput::Accuracy(
                    flat.chunks(tasks.max(1)).map(<[f64]>::to_vec).collect(),
                ))
            }
            ShardTask::Circuits { count, .. } => {
                let metrics = f64_of(ts, names::METRICS, &[*count])?;
                let kept = f64_of(ts, names::KEPT, &[*count])?;
                let total = shape_of(meta)?.graph_shape(spec).edge_count(None) as f64;
                if let Some(v) = metrics.iter().find(|v| !v.is_finite()) {
                    return Err(Malformed(format!("circuit metric {v} is not finite")));
                }
                if let Some(k) = kept
                    .iter()
                    .find(|k| !(k.fract() == 0.0 && **k >= 0.0 && **k <= total))
                {
                    return Err(Malformed(format!("{k} kept edges of a graph of {total}")));
                }
                Ok(ShardOutput::Circuits {
                    metrics,
                    kept: kept.into_iter().map(|k| k as u64).collect(),
                })
            }
            ShardTask::Consensus { .. } | ShardTask::EdgeConsensus { .. } => {
                let score = f64_of(ts, names::SCORE, &[1])?[0];
                if !score.is_finite() {
                    return Err(Malformed(format!("circuit score {score} is not finite")));
                }
                Ok(ShardOutput::Score(score))
            }
            ShardTask::Attribution { .. } => {
                let (n_edges, n_nodes) = attribution_counts(spec, shape_of(meta)?);
                let edges = f64_of(ts, names::ATTRIBUTION_EDGES, &[n_edges])?;
                let nodes = f64_of(ts, names::ATTRIBUTION_NODES, &[n_nodes])?;
                if let Some(v) = edges.iter().chain(&nodes).find(|v| !v.is_finite()) {
                    return Err(Malformed(format!("attribution sum {v} is not finite")));
                }
                Ok(ShardOutput::Attribution { edges, nodes })
            }
            ShardTask::EdgePrune | ShardTask::EdgeOrders { .. } => {
                let want = match task {
                    ShardTask::EdgeOrders { count, .. } => *count,
                    _ => 1,
                };
                let runs: Vec<EdgePruneResult> = json_of(ts, names::EDGE_RUNS)?;
                let scores = f64_of(ts, names::SCORES, &[want])?;
                if runs.len() != want {
                    return Err(Malformed(format!(
                        "{} edge pruning runs, expected {want}",
                        runs.len()
                    )));
                }
                let graph = shape_of(meta)?.graph_shape(spec);
                same_scores(runs.iter().map(|r| r.score), &scores)?;
                for r in &runs {
                    for e in &r.edges {
                        let edge: Edge = e.parse().map_err(|x| Malformed(format!("{x}")))?;
                        graph.check(&edge).map_err(|x| Malformed(x.to_string()))?;
                    }
                }
                Ok(ShardOutput::EdgeRuns(runs))
            }
            ShardTask::Prune | ShardTask::Orders { .. } => {
                let want = match task {
                    ShardTask::Orders { orders, .. } => orders.len(),
                    _ => spec.rules().len(),
                };
                let runs: Vec<PruneResult> = json_of(ts, names::RUNS)?;
                if runs.len() != want {
                    return Err(Malformed(format!("{} runs, expected {want}", runs.len())));
                }
                let scores = f64_of(ts, names::SCORES, &[want])?;
                let m = shape_of(meta)?;
                same_scores(runs.iter().map(|r| r.score), &scores)?;
                for r in &runs {
                    for c in r.heads.iter().chain(&r.mlps) {
                        let comp: Component = c.parse().map_err(|e| Malformed(format!("{e}")))?;
                        comp.check(m.n_layers, m.n_heads)
                            .map_err(|e| Malformed(e.to_string()))?;
                    }
                }
                Ok(ShardOutput::Runs(runs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        SweepSpec::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    fn meta() -> JobMeta {
        JobMeta::synthetic("m", 2, 3)
    }

    #[test]
    fn outputs_survive_the_wire() {
        let s = spec("[sweep]\nkind = \"nodes\"\n");
        let m = meta();
        let nodes = ShardOutput::Nodes(NodeShard {
            layers: vec![1],
            heads: vec![vec![1.0, 2.0, 3.0]],
            mlps: vec![4.0],
        });
        let task = ShardTask::Nodes { layers: vec![1] };
        let back = ShardOutput::decode(&task, &s, Some(&m), &nodes.encode()).unwrap();
        assert_eq!(back, nodes);
        let prep = ShardOutput::Prepared(Box::new(m.clone()));
        let back = ShardOutput::decode(&ShardTask::Prepare, &s, None, &prep.encode()).unwrap();
        assert_eq!(back, prep);
        let score = ShardOutput::Score(81.25);
        let task = ShardTask::EdgeConsensus { edges: vec![0, 3] };
        let back = ShardOutput::decode(&task, &s, Some(&m), &score.encode()).unwrap();
        assert_eq!(back, score);
        let nan = ShardOutput::Score(f64::NAN).encode();
        assert!(ShardOutput::decode(&task, &s, Some(&m), &nan).is_err());
        let edges = ShardOutput::Edges(vec![1.0, 2.5]);
        let task = ShardTask::Edges { first: 4, count: 2 };
        let back = ShardOutput::decode(&task, &s, Some(&m), &edges.encode()).unwrap();
        assert_eq!(back, edges);
    }

    #[test]
    fn outputs_that_do_not_fit_their_shard_are_refused() {
        let s = spec("[sweep]\nkind = \"prune\"\nthresholds = [90.0, 80.0]\n");
        let m = meta();
        let run = |heads: Vec<&str>, score: f64| PruneResult {
            threshold: Some(90.0),
            tau: None,
            heads: heads.into_iter().map(String::from).collect(),
            mlps: vec![],
            score,
            evaluations: 1,
            passes: 1,
            decisions: vec![],
            guided: None,
        };
        let two = ShardOutput::Runs(vec![run(vec!["h0.1"], 95.0), run(vec![], 85.0)]);
        assert!(ShardOutput::decode(&ShardTask::Prune, &s, Some(&m), &two.encode()).is_ok());
        // One run for two thresholds.
        let one = ShardOutput::Runs(vec![run(vec![], 95.0)]);
        let e = ShardOutput::decode(&ShardTask::Prune, &s, Some(&m), &one.encode()).unwrap_err();
        assert!(e.0.contains("1 runs, expected 2"), "{e}");
        // A head the model does not have.
        let bad = ShardOutput::Runs(vec![run(vec!["h5.0"], 95.0), run(vec![], 85.0)]);
        assert!(ShardOutput::decode(&ShardTask::Prune, &s, Some(&m), &bad.encode()).is_err());
        // Scores that disagree with the runs.
        let mut ts = two.encode();
        ts[0] = WireTensor::f64("scores", &[2], &[95.0, 1.0]);
        let e = ShardOutput::decode(&ShardTask::Prune, &s, Some(&m), &ts).unwrap_err();
        assert!(e.0.contains("differs"), "{e}");
        // Node scores of the wrong width, and a node shard before the prepare shard.
        let nodes = ShardOutput::Nodes(NodeShard {
            layers: vec![0],
            heads: vec![vec![1.0, 2.0]],
            mlps: vec![4.0],
        });
        let task = ShardTask::Nodes { layers: vec![0] };
        assert!(ShardOutput::decode(&task, &s, Some(&m), &nodes.encode()).is_err());
        let e = ShardOutput::decode(&task, &s, None, &nodes.encode()).unwrap_err();
        assert!(e.0.contains("no prepare result"), "{e}");
        // Accuracy outside 0..=100.
        let s = spec("[sweep]\nkind = \"downstream\"\n\n[downstream]\ntasks = [\"add1\"]\n");
        let acc = ShardOutput::Accuracy(vec![vec![101.0]]);
        let task = ShardTask::Downstream { first: 0, count: 1 };
        let e = ShardOutput::decode(&task, &s, Some(&m), &acc.encode()).unwrap_err();
        assert!(e.0.contains("outside"), "{e}");
        // A model of no heads.
        let mut empty = meta();
        empty.n_heads = 0;
        let prep = ShardOutput::Prepared(Box::new(empty));
        assert!(ShardOutput::decode(&ShardTask::Prepare, &s, None, &prep.encode()).is_err());
        // A model no one has: the coordinator would plan (and allocate) for it.
        let mut huge = meta();
        huge.n_layers = 1_000_000_000;
        let prep = ShardOutput::Prepared(Box::new(huge));
        let e = ShardOutput::decode(&ShardTask::Prepare, &s, None, &prep.encode()).unwrap_err();
        assert!(e.0.contains("1000000000 layers"), "{e}");
    }
}
