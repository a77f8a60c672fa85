//! Shards planned once a job's shards are done, from their results: an `auto` order study's
//! next batch of orders, while some frequency's interval is too wide, then every order
//! study's consensus circuit, scored. They are a pure function of the stored results and the
//! plan, so a restarted coordinator plans the same ones, and a job whose follow-ups are all
//! done has none.

use std::collections::{BTreeMap, BTreeSet};

use circuit_sweep_common::Component;
use circuit_sweep_common::convergence::{AutoRule, Next};
use circuit_sweep_common::edge::Edge;
use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::orders::{self, consensus_items, item_counts};
use circuit_sweep_common::shard::ShardTask;
use circuit_sweep_common::spec::{SweepKind, SweepSpec};

use crate::aggregate::Collected;

/// Shards to add to a job's plan, and its orders with theirs (a node order study's).
#[derive(Debug, Clone, PartialEq)]
pub struct More {
    /// The new shards.
    pub shards: Vec<ShardTask>,
    /// All the study's orders, the new ones included (node order studies).
    pub orders: Option<Vec<Vec<Component>>>,
}

/// The circuits of an order study's runs, the earlier study's first.
enum Circuits {
    Nodes(Vec<BTreeSet<Component>>),
    Edges(Vec<BTreeSet<Edge>>),
}

impl Circuits {
    fn of(spec: &SweepSpec, c: &Collected) -> Option<Self> {
        match spec.sweep.kind {
            SweepKind::Orders => Some(Circuits::Nodes(
                c.earlier
                    .iter()
                    .map(orders::run_set)
                    .chain(c.orders.iter().map(|(_, r)| orders::circuit_set(r)))
                    .collect(),
            )),
            SweepKind::EdgePrune if spec.sweep.orders.is_some() => Some(Circuits::Edges(
                c.earlier_edges
                    .iter()
                    .flat_map(|e| &e.runs)
                    .map(|r| r.edge_set())
                    .chain(c.edge_prune.iter().map(|r| r.edge_set()))
                    .collect(),
            )),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Circuits::Nodes(s) => s.len(),
            Circuits::Edges(s) => s.len(),
        }
    }

    fn counts(&self) -> Vec<usize> {
        match self {
            Circuits::Nodes(s) => item_counts(s).into_values().collect(),
            Circuits::Edges(s) => item_counts(s).into_values().collect(),
        }
    }
}

/// Where an `auto` study stands after its runs so far (none for other jobs).
pub fn auto_state(spec: &SweepSpec, c: &Collected) -> Option<(AutoRule, Next)> {
    let rule = AutoRule::of(&spec.sweep, spec.sweep.orders_per_shard())?;
    let circuits = Circuits::of(spec, c)?;
    Some((rule, rule.next(&circuits.counts(), circuits.len())))
}

/// What a job whose shards are all done still needs: none when it is complete.
pub fn more(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    planned: &[ShardTask],
) -> Result<Option<More>, String> {
    let Some(circuits) = Circuits::of(spec, c) else {
        return Ok(None);
    };
    let scored = planned.iter().any(|t| {
        matches!(
            t,
            ShardTask::Consensus { .. } | ShardTask::EdgeConsensus { .. }
        )
    });
    if scored {
        return Ok(None);
    }
    let n = circuits.len();
    let auto = AutoRule::of(&spec.sweep, spec.sweep.orders_per_shard())
        .map(|rule| (rule, rule.next(&circuits.counts(), n)));
    if let Some((rule, Next::More(k))) = auto {
        return Ok(Some(match &circuits {
            Circuits::Nodes(_) => {
                let g = &inputs.graph;
                let all = orders::random_orders(g.n_layers, g.n_heads, n + k, spec.sweep.seed);
                let shards = all[n..]
                    .chunks(rule.per_shard)
                    .enumerate()
                    .map(|(i, group)| ShardTask::Orders {
                        first: n + i * rule.per_shard,
                        orders: group.to_vec(),
                    })
                    .collect();
                More {
                    shards,
                    orders: Some(all),
                }
            }
            Circuits::Edges(_) => More {
                shards: (n..n + k)
                    .step_by(rule.per_shard)
                    .map(|first| ShardTask::EdgeOrders {
                        first,
                        count: rule.per_shard.min(n + k - first),
                    })
                    .collect(),
                orders: None,
            },
        }));
    }
    let task = match &circuits {
        Circuits::Nodes(sets) => ShardTask::Consensus {
            components: consensus_items(sets),
        },
        Circuits::Edges(sets) => {
            let at: BTreeMap<&Edge, usize> = inputs.edges.iter().zip(0..).collect();
            let edges = consensus_items(sets)
                .iter()
                .map(|e| {
                    at.get(e).copied().ok_or_else(|| {
                        format!("incomplete results: a run kept {e}, not in the job's graph")
                    })
                })
                .collect::<Result<_, String>>()?;
            ShardTask::EdgeConsensus { edges }
        }
    };
    Ok(Some(More {
        shards: vec![task],
        orders: None,
    }))
}
