//! The most bytes a shard's result can take on the wire, from its task, the job's spec and the
//! model's shape: the coordinator refuses a result stream beyond it before buffering more, so a
//! worker cannot fill the coordinator's memory with one stream.
//!
//! Score tensors are counted exactly. JSON runs are bounded by the worst case of the greedy
//! search: a pass that removes something starts another, so `n` items take at most
//! `n (n + 1) / 2` decisions. For large edge graphs that bound is astronomical and the server's
//! own ceiling applies instead.

use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;

use crate::auth::MAX_MESSAGE_BYTES;

/// A prepare result: the model's facts and the checked prompts, which come from a dataset that
/// fits in one message.
const PREPARE_BYTES: u64 = MAX_MESSAGE_BYTES as u64;

/// One run's JSON besides its lists: rule, score, counters, guidance, keys.
const RUN_BYTES: u64 = 1024;

/// A component or edge name in JSON, quoted, with its comma (names are short: `h31.7->m30`).
const NAME_BYTES: u64 = 128;

/// One decision's JSON besides the name: keys, a score (at most 24 characters), a flag and a
/// pass number.
const DECISION_BYTES: u64 = 128;

/// Bytes of `n` f64 values.
fn f64s(n: u64) -> u64 {
    n.saturating_mul(8)
}

/// The JSON of `runs` pruning runs over `items` components or edges, with their score tensor.
fn runs(runs: u64, items: u64) -> u64 {
    let decisions = items.saturating_mul(items.saturating_add(1)) / 2;
    let one = RUN_BYTES
        .saturating_add(items.saturating_mul(NAME_BYTES))
        .saturating_add(decisions.saturating_mul(NAME_BYTES + DECISION_BYTES));
    runs.saturating_mul(one).saturating_add(f64s(runs))
}

/// Components of the model: a head per layer and head, an MLP per layer.
fn components(meta: &JobMeta) -> u64 {
    let (l, h) = (meta.n_layers as u64, meta.n_heads as u64);
    l.saturating_mul(h.saturating_add(1))
}

/// An upper bound on the edges of the job's graph (every sender to every receiver), computed
/// without building the graph.
fn edges(spec: &SweepSpec, meta: &JobMeta) -> u64 {
    let g = meta.graph_shape(spec);
    let (l, h) = (g.n_layers as u64, g.n_heads as u64);
    let kv = g.kv_receivers() as u64;
    let senders = u64::from(g.embed).saturating_add(components(meta));
    let per_layer = h.saturating_add(kv.saturating_mul(2)).saturating_add(1);
    let receivers = l.saturating_mul(per_layer).saturating_add(1);
    senders.saturating_mul(receivers)
}

/// The most bytes of tensor data an honest worker sends for `task` (0 for a shard that needs the
/// model's shape before the prepare shard is done: its result is refused anyway).
pub fn max_output_bytes(task: &ShardTask, spec: &SweepSpec, meta: Option<&JobMeta>) -> u64 {
    let Some(m) = meta else {
        return match task {
            ShardTask::Prepare => PREPARE_BYTES,
            _ => 0,
        };
    };
    match task {
        ShardTask::Prepare => PREPARE_BYTES,
        ShardTask::Nodes { layers } => {
            f64s((layers.len() as u64).saturating_mul(m.n_heads as u64 + 1))
        }
        ShardTask::Edges { count, .. } => f64s(*count as u64),
        ShardTask::Downstream { count, .. } => {
            f64s((*count as u64).saturating_mul(spec.downstream.tasks.len() as u64))
        }
        ShardTask::Prune => runs(spec.rules().len() as u64, components(m)),
        ShardTask::Orders { orders, .. } => runs(orders.len() as u64, components(m)),
        ShardTask::EdgePrune => runs(1, edges(spec, m)),
        ShardTask::EdgeOrders { count, .. } => runs(*count as u64, edges(spec, m)),
        ShardTask::Circuits { count, .. } => f64s(2 * *count as u64),
        ShardTask::Consensus { .. } | ShardTask::EdgeConsensus { .. } => f64s(1),
        ShardTask::Attribution { .. } => {
            let (e, n) = crate::shard_output::attribution_counts(spec, m);
            f64s(e as u64 + n as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use circuit_sweep_common::prune::{Decision, PruneResult};
    use circuit_sweep_common::shard::NodeShard;

    use super::*;
    use crate::shard_output::ShardOutput;

    fn spec(text: &str) -> SweepSpec {
        SweepSpec::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    fn wire_bytes(out: &ShardOutput) -> u64 {
        out.encode().iter().map(|t| t.data.len() as u64).sum()
    }

    #[test]
    fn score_shards_are_bounded_exactly() {
        let s = spec("[sweep]\nkind = \"nodes\"\n");
        let m = JobMeta::synthetic("m", 4, 3);
        let nodes = ShardOutput::Nodes(NodeShard {
            layers: vec![1, 2],
            heads: vec![vec![1.0; 3]; 2],
            mlps: vec![4.0; 2],
        });
        let task = ShardTask::Nodes { layers: vec![1, 2] };
        assert_eq!(max_output_bytes(&task, &s, Some(&m)), wire_bytes(&nodes));
        let task = ShardTask::Edges { first: 0, count: 5 };
        assert_eq!(max_output_bytes(&task, &s, Some(&m)), 40);
        assert_eq!(max_output_bytes(&task, &s, None), 0);
    }

    #[test]
    fn the_longest_pruning_run_fits_its_bound() {
        // Every pass removes one component and visits all the others: the most decisions.
        let s = spec("[sweep]\nkind = \"prune\"\n");
        let m = JobMeta::synthetic("m", 2, 3);
        let names: Vec<String> = (0..components(&m) as usize)
            .map(|i| format!("h{i}.{i}"))
            .collect();
        let decisions = (0..names.len())
            .flat_map(|pass| {
                names[pass..].iter().map(move |c| Decision {
                    component: c.clone(),
                    score: -f64::MAX,
                    removed: true,
                    pass: usize::MAX,
                })
            })
            .collect();
        let run = PruneResult {
            threshold: Some(-f64::MAX),
            tau: None,
            heads: names.clone(),
            mlps: vec![],
            score: -f64::MAX,
            evaluations: usize::MAX,
            passes: usize::MAX,
            decisions,
            guided: Some(circuit_sweep_common::guided::Guidance {
                method: "eap_ig".into(),
                steps: usize::MAX,
                blocks: usize::MAX,
                greedy_at_least: usize::MAX,
            }),
        };
        let out = ShardOutput::Runs(vec![run]);
        assert!(wire_bytes(&out) <= max_output_bytes(&ShardTask::Prune, &s, Some(&m)));
        // Edge counts are bounded from above without building the graph.
        let e = spec("[sweep]\nkind = \"edge_prune\"\n");
        let all = m.graph_shape(&e).edges().len() as u64;
        assert!(all <= edges(&e, &m), "{all}");
    }
}
