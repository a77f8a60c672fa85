//! Shards: how a job is cut into independent pieces of work, and what each piece returns.
//!
//! A job starts with one `prepare` shard (a worker loads the model and the data and reports the
//! model's shape, the prompts and the unablated metrics); the planner then cuts the sweep into
//! shards from that shape. The plan depends on the spec alone, never on how many workers there
//! are, so a job gives the same numbers on 1 or N workers.

use serde::{Deserialize, Serialize};

use crate::Component;
use crate::prune::PruneResult;
use crate::spec::SweepKind;

/// One piece of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "task")]
pub enum ShardTask {
    /// Load the model and the data; report [`JobMeta`].
    Prepare,
    /// Node sweep of these layers (every head and the MLP of each, ablated alone).
    Nodes {
        /// Layers, ascending.
        layers: Vec<usize>,
    },
    /// The whole pruning run (all nested thresholds, paper schedule): one shard.
    Prune,
    /// Pruning once per order, in lockstep.
    Orders {
        /// Index of the first order in the study.
        first: usize,
        /// The orders.
        orders: Vec<Vec<Component>>,
    },
}

impl ShardTask {
    /// A short label for logs and progress.
    pub fn label(&self) -> String {
        match self {
            ShardTask::Prepare => "prepare".into(),
            ShardTask::Nodes { layers } => match (layers.first(), layers.last()) {
                (Some(a), Some(b)) if a != b => format!("nodes of layers {a}..={b}"),
                (Some(a), _) => format!("nodes of layer {a}"),
                _ => "nodes".into(),
            },
            ShardTask::Prune => "prune".into(),
            ShardTask::Orders { first, orders } => {
                format!("orders {first}..{}", first + orders.len())
            }
        }
    }
}

/// What the prepare shard reports: everything the results folder needs besides the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    /// The model file or folder the worker loaded.
    pub model_path: String,
    /// Model facts (`ModelInfo` as JSON).
    pub info: serde_json::Value,
    /// Layers.
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// `{"sha256", "prompts", "tokens", "bos"}` of the checked dataset.
    pub dataset: serde_json::Value,
    /// The checked prompt pairs as JSONL.
    pub prompts_jsonl: String,
    /// Metric of the full model on the clean prompts.
    pub full: f64,
    /// Metric of the full model on the corrupt prompts.
    pub corrupt: f64,
}

/// Layers per node shard: about 16 shards per sweep, at least one layer each.
pub fn layers_per_shard(n_layers: usize) -> usize {
    n_layers.div_ceil(16).max(1)
}

/// Orders per order-study shard (fixed, so the plan never depends on the number of workers).
pub const ORDERS_PER_SHARD: usize = 4;

/// The sweep's shards after `prepare`: node shards of whole layers (a prune job gets them too,
/// for its heatmap), one pruning shard, or groups of orders.
pub fn plan(kind: SweepKind, n_layers: usize, orders: Option<&[Vec<Component>]>) -> Vec<ShardTask> {
    let mut shards = vec![];
    if matches!(kind, SweepKind::Nodes | SweepKind::Prune) {
        let per = layers_per_shard(n_layers);
        let layers: Vec<usize> = (0..n_layers).collect();
        for chunk in layers.chunks(per) {
            shards.push(ShardTask::Nodes {
                layers: chunk.to_vec(),
            });
        }
    }
    match kind {
        SweepKind::Nodes => {}
        SweepKind::Prune => shards.push(ShardTask::Prune),
        SweepKind::Orders => {
            for (i, group) in orders.unwrap_or(&[]).chunks(ORDERS_PER_SHARD).enumerate() {
                shards.push(ShardTask::Orders {
                    first: i * ORDERS_PER_SHARD,
                    orders: group.to_vec(),
                });
            }
        }
    }
    shards
}

/// Results of a node shard: per layer of the shard, head scores and the MLP score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeShard {
    /// The shard's layers.
    pub layers: Vec<usize>,
    /// `[layers][n_heads]` scores in % of full.
    pub heads: Vec<Vec<f64>>,
    /// `[layers]` MLP scores.
    pub mlps: Vec<f64>,
}

/// Results of a pruning shard: one run per threshold.
pub type PruneShard = Vec<PruneResult>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_shards_cover_every_layer_once() {
        for n in [1, 2, 12, 30, 32, 80] {
            let shards = plan(SweepKind::Nodes, n, None);
            let mut seen: Vec<usize> = vec![];
            for s in &shards {
                let ShardTask::Nodes { layers } = s else {
                    panic!("{s:?}")
                };
                seen.extend(layers);
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{n} layers");
            assert!(shards.len() <= 16);
        }
    }

    #[test]
    fn prune_is_one_shard_after_the_node_shards() {
        let shards = plan(SweepKind::Prune, 30, None);
        assert_eq!(shards.last(), Some(&ShardTask::Prune));
        assert_eq!(shards.iter().filter(|s| **s == ShardTask::Prune).count(), 1);
    }

    #[test]
    fn orders_are_grouped_in_order() {
        let orders = crate::orders::random_orders(2, 2, 10, 7);
        let shards = plan(SweepKind::Orders, 2, Some(&orders));
        assert_eq!(shards.len(), 3);
        let mut back = vec![];
        for s in &shards {
            let ShardTask::Orders { first, orders: o } = s else {
                panic!("{s:?}")
            };
            assert_eq!(*first, back.len());
            back.extend(o.clone());
        }
        assert_eq!(back, orders);
        let json = serde_json::to_string(&shards[0]).unwrap();
        let again: ShardTask = serde_json::from_str(&json).unwrap();
        assert_eq!(again, shards[0]);
    }
}
