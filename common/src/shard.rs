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
    /// Edges `first..first + count` of the job's edge graph, each ablated alone.
    Edges {
        /// First edge (in graph order).
        first: usize,
        /// Number of edges.
        count: usize,
    },
    /// The whole edge pruning run: one shard.
    EdgePrune,
    /// Edge pruning once per seeded random edge order, orders `first..first + count` of the
    /// study, in lockstep.
    EdgeOrders {
        /// Index of the first order.
        first: usize,
        /// Number of orders.
        count: usize,
    },
    /// Downstream accuracy of sets `first..first + count` of the study
    /// (`downstream::study_sets`).
    Downstream {
        /// Index of the first set.
        first: usize,
        /// Number of sets.
        count: usize,
    },
    /// Faithfulness: the metric of circuits `first..first + count` of the job's curves (the
    /// empty circuit and the full graph first), each with every edge outside it ablated.
    Circuits {
        /// First circuit.
        first: usize,
        /// Number of circuits.
        count: usize,
    },
    /// Attribution sums of prompts `first..first + count` (sums over prompts add up).
    Attribution {
        /// First prompt.
        first: usize,
        /// Number of prompts.
        count: usize,
    },
    /// An order study's consensus circuit, scored with every component outside it ablated
    /// (planned once the orders are done).
    Consensus {
        /// Its components.
        components: Vec<Component>,
    },
    /// An edge order study's consensus circuit, scored with every edge of the job's graph
    /// outside it ablated (planned once the orders are done).
    EdgeConsensus {
        /// Its edges, by number in the job's graph.
        edges: Vec<usize>,
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
            ShardTask::Edges { first, count } => format!("edges {first}..{}", first + count),
            ShardTask::EdgePrune => "edge prune".into(),
            ShardTask::EdgeOrders { first, count } => {
                format!("edge orders {first}..{}", first + count)
            }
            ShardTask::Downstream { first, count } => {
                format!("downstream sets {first}..{}", first + count)
            }
            ShardTask::Attribution { first, count } => {
                format!("attribution of prompts {first}..{}", first + count)
            }
            ShardTask::Circuits { first, count } => {
                format!("circuits {first}..{}", first + count)
            }
            ShardTask::Consensus { components } => {
                format!("consensus of {} components", components.len())
            }
            ShardTask::EdgeConsensus { edges } => format!("consensus of {} edges", edges.len()),
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
    /// Key/value heads per layer.
    #[serde(default)]
    pub n_kv_heads: usize,
    /// Attention and MLP read the same residual stream (GPT-NeoX).
    #[serde(default)]
    pub parallel_residual: bool,
    /// Score of the node circuit an edge sweep is restricted to (% of the full model).
    #[serde(default)]
    pub circuit_score: Option<f64>,
    /// `{"sha256", "prompts", "tokens", "bos"}` of the checked dataset.
    pub dataset: serde_json::Value,
    /// The checked prompt pairs as JSONL.
    pub prompts_jsonl: String,
    /// Metric of the full model on the clean prompts.
    pub full: f64,
    /// Metric of the full model on the corrupt prompts.
    pub corrupt: f64,
    /// Metric of the empty circuit (every node or edge ablated), where `normalize = "empty"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<f64>,
}

/// Layers per node shard: about 16 shards per sweep, at least one layer each.
pub fn layers_per_shard(n_layers: usize) -> usize {
    n_layers.div_ceil(16).max(1)
}

/// Orders per order-study shard, all run in lockstep (fixed, so the plan never depends on the
/// number of workers): many, so that each step's pass is full without deep speculation.
pub const ORDERS_PER_SHARD: usize = 16;

/// Orders per edge order-study shard (an edge pruning run costs far more than a node one).
pub const EDGE_ORDERS_PER_SHARD: usize = 4;

/// Head sets per downstream shard.
pub const SETS_PER_SHARD: usize = 4;

/// Circuits per faithfulness shard.
pub const CIRCUITS_PER_SHARD: usize = 4;

/// Prompts per attribution shard: about 16 shards per sweep, a multiple of the 4 prompts a
/// worker differentiates per pass (so no shard runs a part-empty pass but its last).
pub fn prompts_per_shard(n_prompts: usize) -> usize {
    n_prompts.div_ceil(16).max(4).next_multiple_of(4)
}

/// Edges per edge shard: about 64 shards per sweep, at least 64 edges each.
pub fn edges_per_shard(n_edges: usize) -> usize {
    n_edges.div_ceil(64).max(64)
}

impl JobMeta {
    /// The report of a model of this shape with no prompts and metrics full 1, corrupt 0: what
    /// fake workers send (benchmarks of the coordinator, tests).
    pub fn synthetic(model_path: &str, n_layers: usize, n_heads: usize) -> Self {
        JobMeta {
            model_path: model_path.into(),
            info: serde_json::json!({}),
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            parallel_residual: false,
            circuit_score: None,
            dataset: serde_json::json!({"prompts": 1}),
            prompts_jsonl: String::new(),
            full: 1.0,
            corrupt: 0.0,
            empty: None,
        }
    }

    /// The model's full edge graph shape (key/value receivers per query head, with `embed`).
    pub fn model_shape(&self) -> crate::edge::GraphShape {
        crate::edge::GraphShape {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: if self.n_kv_heads == 0 {
                self.n_heads
            } else {
                self.n_kv_heads
            },
            parallel: self.parallel_residual,
            kv_per_query: true,
            embed: true,
        }
    }

    /// The shape of the model's edge graph as `spec` asks for it (key/value receivers, the
    /// edge method's senders).
    pub fn graph_shape(&self, spec: &crate::spec::SweepSpec) -> crate::edge::GraphShape {
        spec.graph(self.model_shape())
    }
}

/// The sweep's shards after `prepare`: node shards of whole layers (a prune job gets them too,
/// for its heatmap), one pruning shard, groups of orders, or ranges of the `n_edges` edges of
/// the graph (an edge pruning job gets them too, for the widths of its drawing) and one edge
/// pruning shard or, for `edge_orders` `(skip, k)`, groups of edge orders `skip..k` (an
/// extension's earlier orders skipped); groups of the
/// `n_sets` head sets of a downstream study; ranges of the `n_prompts` prompts of an
/// attribution; or groups of the `n_circuits` circuits of faithfulness curves.
pub fn plan(
    kind: SweepKind,
    n_layers: usize,
    orders: Option<(usize, &[Vec<Component>])>,
    n_edges: usize,
    edge_orders: Option<(usize, usize)>,
    (n_sets, n_prompts, n_circuits): (usize, usize, usize),
) -> Vec<ShardTask> {
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
    if kind.is_edges() {
        let per = edges_per_shard(n_edges);
        for first in (0..n_edges).step_by(per) {
            shards.push(ShardTask::Edges {
                first,
                count: per.min(n_edges - first),
            });
        }
    }
    match kind {
        SweepKind::Nodes | SweepKind::Edges => {}
        SweepKind::Faithfulness => {
            for first in (0..n_circuits).step_by(CIRCUITS_PER_SHARD) {
                shards.push(ShardTask::Circuits {
                    first,
                    count: CIRCUITS_PER_SHARD.min(n_circuits - first),
                });
            }
        }
        SweepKind::Attribution => {
            let per = prompts_per_shard(n_prompts);
            for first in (0..n_prompts).step_by(per) {
                shards.push(ShardTask::Attribution {
                    first,
                    count: per.min(n_prompts - first),
                });
            }
        }
        SweepKind::Downstream => {
            for first in (0..n_sets).step_by(SETS_PER_SHARD) {
                shards.push(ShardTask::Downstream {
                    first,
                    count: SETS_PER_SHARD.min(n_sets - first),
                });
            }
        }
        SweepKind::EdgePrune => match edge_orders {
            None => shards.push(ShardTask::EdgePrune),
            Some((skip, k)) => {
                for first in (skip..k).step_by(EDGE_ORDERS_PER_SHARD) {
                    shards.push(ShardTask::EdgeOrders {
                        first,
                        count: EDGE_ORDERS_PER_SHARD.min(k - first),
                    });
                }
            }
        },
        SweepKind::Prune => shards.push(ShardTask::Prune),
        SweepKind::Orders => {
            let (skip, orders) = orders.unwrap_or((0, &[]));
            for (i, group) in orders[skip.min(orders.len())..]
                .chunks(ORDERS_PER_SHARD)
                .enumerate()
            {
                shards.push(ShardTask::Orders {
                    first: skip + i * ORDERS_PER_SHARD,
                    orders: group.to_vec(),
                });
            }
            // The paper-schedule circuit at the same rule: where it sits among the orders'.
            shards.push(ShardTask::Prune);
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
            let shards = plan(SweepKind::Nodes, n, None, 0, None, (0, 0, 0));
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
        let shards = plan(SweepKind::Prune, 30, None, 0, None, (0, 0, 0));
        assert_eq!(shards.last(), Some(&ShardTask::Prune));
        assert_eq!(shards.iter().filter(|s| **s == ShardTask::Prune).count(), 1);
    }

    #[test]
    fn edge_shards_cover_every_edge_once() {
        for n in [1, 63, 64, 65, 1000, 32_000] {
            let shards = plan(SweepKind::EdgePrune, 12, None, n, None, (0, 0, 0));
            assert_eq!(shards.last(), Some(&ShardTask::EdgePrune));
            let mut next = 0;
            for s in &shards[..shards.len() - 1] {
                let ShardTask::Edges { first, count } = *s else {
                    panic!("{s:?}")
                };
                assert_eq!(first, next);
                assert!(count > 0);
                next += count;
            }
            assert_eq!(next, n);
            assert!(shards.len() <= 65, "{n}: {}", shards.len());
        }
        let study = plan(
            SweepKind::EdgePrune,
            12,
            None,
            100,
            Some((0, 10)),
            (0, 0, 0),
        );
        let groups: Vec<&ShardTask> = study
            .iter()
            .filter(|s| matches!(s, ShardTask::EdgeOrders { .. }))
            .collect();
        assert_eq!(
            groups,
            [
                &ShardTask::EdgeOrders { first: 0, count: 4 },
                &ShardTask::EdgeOrders { first: 4, count: 4 },
                &ShardTask::EdgeOrders { first: 8, count: 2 },
            ]
        );
        // An extension of a study of 6 orders to 10 runs orders 6..10 alone.
        let more = plan(
            SweepKind::EdgePrune,
            12,
            None,
            100,
            Some((6, 10)),
            (0, 0, 0),
        );
        let groups: Vec<&ShardTask> = more
            .iter()
            .filter(|s| matches!(s, ShardTask::EdgeOrders { .. }))
            .collect();
        assert_eq!(groups, [&ShardTask::EdgeOrders { first: 6, count: 4 }]);
    }

    #[test]
    fn attribution_cuts_the_prompts_into_contiguous_ranges() {
        for n in [1, 4, 5, 63, 64, 65, 1000] {
            let shards = plan(SweepKind::Attribution, 30, None, 5000, None, (0, n, 0));
            let mut next = 0;
            for s in &shards {
                let ShardTask::Attribution { first, count } = *s else {
                    panic!("{s:?}");
                };
                assert_eq!(first, next);
                assert!(count >= 1 && count <= prompts_per_shard(n));
                next = first + count;
            }
            assert_eq!(next, n);
            assert!(shards.len() <= 16, "{n}: {}", shards.len());
            assert_eq!(prompts_per_shard(n) % 4, 0);
        }
    }

    #[test]
    fn downstream_sets_are_grouped_by_four() {
        let shards = plan(SweepKind::Downstream, 30, None, 0, None, (22, 0, 0));
        assert_eq!(shards.len(), 6);
        assert_eq!(
            shards[5],
            ShardTask::Downstream {
                first: 20,
                count: 2
            }
        );
        assert_eq!(shards[0].label(), "downstream sets 0..4");
    }

    #[test]
    fn orders_are_grouped_in_order() {
        let orders = crate::orders::random_orders(2, 2, 40, 7);
        let shards = plan(SweepKind::Orders, 2, Some((0, &orders)), 0, None, (0, 0, 0));
        // 16 + 16 + 8 orders, then the paper schedule's run.
        assert_eq!(shards.len(), 4);
        assert_eq!(shards[3], ShardTask::Prune);
        let mut back = vec![];
        for s in &shards[..3] {
            let ShardTask::Orders { first, orders: o } = s else {
                panic!("{s:?}")
            };
            assert_eq!(*first, back.len());
            back.extend(o.clone());
        }
        assert_eq!(back, orders);
        // An extension of a study of 20 runs the orders after them only.
        let more = plan(
            SweepKind::Orders,
            2,
            Some((20, &orders)),
            0,
            None,
            (0, 0, 0),
        );
        assert_eq!(more.len(), 3);
        let ShardTask::Orders { first, orders: o } = &more[1] else {
            panic!("{:?}", more[1])
        };
        assert_eq!((*first, o.as_slice()), (36, &orders[36..]));
        let json = serde_json::to_string(&shards[0]).unwrap();
        let again: ShardTask = serde_json::from_str(&json).unwrap();
        assert_eq!(again, shards[0]);
    }
}
