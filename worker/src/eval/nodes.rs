//! Node candidates of a pruning search in staggered passes: a candidate joins its pass at the
//! first layer where it differs from a run already computed (its search's circuit so far,
//! cached; or the candidate before it in the same pass), so it runs only the blocks its own
//! ablation changes. Random visiting orders ablate components at every depth, so without this
//! nearly every candidate would run the whole model from the embedding.

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::Tensor;
use circuit_sweep_common::Component;
use circuit_sweep_common::spec::Direction;

use super::Evaluator;
use crate::model::{Interventions, Join, JoinFrom, ModelError, Stagger, Start};

/// A candidate of a node pruning search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCandidate {
    /// Components ablated.
    pub ablated: Vec<Component>,
    /// Components of `ablated` that every candidate of its search's step ablates (the circuit
    /// so far): that run is computed once and kept, and the candidate joins it where it first
    /// differs.
    pub settled: Vec<Component>,
}

/// A run with `set` ablated: the residual stream at every block's input. Layers below where it
/// first differed from the run it was computed from share that run's tensors.
pub(super) struct NodeBase {
    set: Vec<Component>,
    resid: Vec<Tensor>,
}

/// What a variant of a staggered pass continues.
#[derive(Clone)]
enum Parent {
    Base(Arc<NodeBase>),
    /// A planned variant of the same pass.
    Planned(usize),
}

/// One variant of a staggered pass.
struct Plan {
    ablated: Vec<Component>,
    parent: Parent,
    layer: usize,
    /// Kept as a base for later passes.
    keep: bool,
    /// Its stream is captured below this layer (from its join): for a kept run, or one a kept
    /// run continues.
    until: usize,
    /// The candidate it scores (none: a base computed for its candidates).
    candidate: Option<usize>,
}

/// `a` and `b` sorted: the lowest layer of a component in one and not the other (`None`: equal).
fn first_difference(a: &[Component], b: &[Component]) -> Option<usize> {
    let (mut i, mut j) = (0, 0);
    let mut low: Option<usize> = None;
    let mut note = |c: &Component| low = Some(low.map_or(c.layer(), |l| l.min(c.layer())));
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), Some(y)) if x < y => {
                note(x);
                i += 1;
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                note(y);
                j += 1;
            }
            (Some(x), None) => {
                note(x);
                i += 1;
            }
            (None, None) => unreachable!("one side has more"),
        }
    }
    low
}

fn is_subset(small: &[Component], big: &[Component]) -> bool {
    small.iter().all(|c| big.binary_search(c).is_ok())
}

fn sorted(cs: &[Component]) -> Vec<Component> {
    let mut v = cs.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

impl Evaluator {
    /// The residual streams of the runs node scoring keeps for its next call (for tests of
    /// what they hold).
    pub fn node_base_streams(&self) -> Vec<Tensor> {
        self.node_bases
            .lock()
            .expect("not poisoned")
            .iter()
            .flat_map(|b| b.resid.clone())
            .collect()
    }

    /// Scores of node candidates (see [`Evaluator::node_metrics`]).
    pub fn node_scores(&self, candidates: &[NodeCandidate]) -> Result<Vec<f64>, ModelError> {
        Ok(self
            .node_metrics(candidates)?
            .into_iter()
            .map(|m| self.score_of(m))
            .collect())
    }

    /// Metric values of node candidates, each the same number [`Evaluator::metrics`] gives its
    /// ablated set bit for bit. Passes are staggered: each candidate runs from the first layer
    /// where it differs from its search's settled run (kept from an earlier call, or computed
    /// in the same pass from the nearest kept run) or from the candidate before it.
    /// Denoising runs every variant from the embedding, so it takes [`Evaluator::metrics`].
    pub fn node_metrics(&self, candidates: &[NodeCandidate]) -> Result<Vec<f64>, ModelError> {
        if self.ablation.direction != Direction::Noising
            || self.resid.is_empty()
            || !self.stagger_nodes
        {
            let sets: Vec<Vec<Component>> = candidates.iter().map(|c| c.ablated.clone()).collect();
            return self.metrics(&sets);
        }
        let cands: Vec<NodeCandidate> = candidates
            .iter()
            .map(|c| NodeCandidate {
                ablated: sorted(&c.ablated),
                settled: sorted(&c.settled),
            })
            .collect();
        for (i, c) in cands.iter().enumerate() {
            if !is_subset(&c.settled, &c.ablated) {
                return Err(ModelError::InvalidRequest(format!(
                    "node candidate {i} settles components it does not ablate"
                )));
            }
        }
        let mut avail = self.node_bases.lock().expect("not poisoned").clone();
        if avail.is_empty() {
            avail.push(Arc::new(NodeBase {
                set: vec![],
                resid: self.resid.clone(),
            }));
        }
        let mut used: BTreeSet<Vec<Component>> = BTreeSet::new();
        used.insert(vec![]);
        let per_variant = (self.prompts * self.seq_len).max(1);
        let mut out = Vec::with_capacity(cands.len());
        let mut start = 0;
        while start < cands.len() {
            // As many candidates as the budget holds, counting the run of the circuit so far a
            // group computes when it is not kept.
            let room = self.budget.variants(per_variant);
            let (mut end, mut variants) = (start, 0);
            while end < cands.len() {
                let settled = &cands[end].settled;
                let group = end == start || *settled != cands[end - 1].settled;
                let base = group && !avail.iter().any(|b| b.set == *settled);
                let need = 1 + usize::from(base);
                if end > start && variants + need > room {
                    break;
                }
                variants += need;
                end += 1;
            }
            let idx: Vec<usize> = (start..end).collect();
            out.extend(self.budget.split_on_oom(&idx, per_variant, &mut |part| {
                self.node_pass(&cands, part, &mut avail, &mut used)
            })?);
            start = end;
        }
        // Kept for the next call: the runs this one started from and those it computed.
        avail.retain(|b| used.contains(&b.set));
        tracing::debug!(
            "{} candidates; {} kept runs, {:.0} MiB of streams (shared ones counted each time)",
            cands.len(),
            avail.len(),
            avail
                .iter()
                .flat_map(|b| &b.resid)
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum::<usize>() as f64
                / 1048576.0
        );
        *self.node_bases.lock().expect("not poisoned") = avail;
        Ok(out)
    }

    /// One staggered pass over the candidates `part` of `cands`; runs it keeps are added to
    /// `avail` and marked `used`, as are the kept runs it starts from.
    fn node_pass(
        &self,
        cands: &[NodeCandidate],
        part: &[usize],
        avail: &mut Vec<Arc<NodeBase>>,
        used: &mut BTreeSet<Vec<Component>>,
    ) -> Result<Vec<f64>, ModelError> {
        let n_layers = self.model.info().n_layers;
        let last = n_layers - 1;
        // The kept run a set continues from farthest up: the layer where they first differ.
        let best_base = |set: &[Component], avail: &[Arc<NodeBase>]| -> (Arc<NodeBase>, usize) {
            avail
                .iter()
                .filter(|b| is_subset(&b.set, set))
                .map(|b| {
                    let layer = first_difference(set, &b.set).unwrap_or(n_layers);
                    (b.clone(), layer.min(last))
                })
                .max_by_key(|(_, layer)| *layer)
                .expect("the unablated run is always kept")
        };
        let mut plans: Vec<Plan> = vec![];
        let mut i = 0;
        while i < part.len() {
            let settled = &cands[part[i]].settled;
            let end = i + part[i..]
                .iter()
                .take_while(|&&c| cands[c].settled == *settled)
                .count();
            let group = &part[i..end];
            // The circuit so far: kept, or computed here as one more variant.
            let base = match avail.iter().find(|b| b.set == *settled) {
                Some(b) => {
                    used.insert(b.set.clone());
                    None
                }
                None => {
                    let (from, layer) = best_base(settled, avail);
                    used.insert(from.set.clone());
                    plans.push(Plan {
                        ablated: settled.clone(),
                        parent: Parent::Base(from),
                        layer,
                        keep: true,
                        until: n_layers,
                        candidate: None,
                    });
                    Some(plans.len() - 1)
                }
            };
            // A chain (each candidate ablating all the one before it does) ends in the run its
            // search most likely continues from: keep it.
            let chain = group
                .windows(2)
                .all(|w| is_subset(&cands[w[0]].ablated, &cands[w[1]].ablated));
            let first = plans.len();
            for (g, &c) in group.iter().enumerate() {
                let a = &cands[c].ablated;
                let keep = chain && g + 1 == group.len();
                let (from, layer) = best_base(a, avail);
                let mut best = (Parent::Base(from), layer);
                // The group's runs computed in this pass: its base and earlier candidates.
                for k in base.into_iter().chain(first..plans.len()) {
                    let layer = first_difference(a, &plans[k].ablated)
                        .unwrap_or(n_layers)
                        .min(last);
                    if layer > best.1 && plans[k].layer <= layer {
                        best = (Parent::Planned(k), layer);
                    }
                }
                if let Parent::Base(b) = &best.0 {
                    used.insert(b.set.clone());
                }
                plans.push(Plan {
                    ablated: a.clone(),
                    parent: best.0,
                    layer: best.1,
                    keep,
                    until: if keep { n_layers } else { 0 },
                    candidate: Some(g + i),
                });
            }
            i = end;
        }
        // A kept run needs its ancestors' streams below its join.
        for k in 0..plans.len() {
            if plans[k].keep {
                let mut child = k;
                while let Parent::Planned(p) = plans[child].parent {
                    plans[p].until = plans[p].until.max(plans[child].layer);
                    child = p;
                }
            }
        }
        // Variants by join layer (stable: a planned parent joins no later than its child and
        // comes first).
        let mut order: Vec<usize> = (0..plans.len()).collect();
        order.sort_by_key(|&k| plans[k].layer);
        let mut place = vec![0; plans.len()];
        for (pos, &k) in order.iter().enumerate() {
            place[k] = pos;
        }
        let joins: Vec<Join> = order
            .iter()
            .map(|&k| Join {
                layer: plans[k].layer,
                from: match &plans[k].parent {
                    Parent::Base(b) => JoinFrom::Resid(b.resid[plans[k].layer].clone()),
                    Parent::Planned(p) => JoinFrom::Variant(place[*p]),
                },
            })
            .collect();
        let variants: Vec<Vec<Component>> = order
            .iter()
            .map(|&k| {
                plans[k]
                    .ablated
                    .iter()
                    .filter(|c| c.layer() >= plans[k].layer)
                    .copied()
                    .collect()
            })
            .collect();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.node_work[0].fetch_add(part.len(), relaxed);
        let blocks: usize = plans.iter().map(|p| n_layers - p.layer).sum();
        self.node_work[1].fetch_add(blocks, relaxed);
        let captured_plans: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&k| plans[k].until > plans[k].layer)
            .collect();
        let stagger = Stagger {
            joins,
            keep: captured_plans
                .iter()
                .map(|&k| (place[k], plans[k].until))
                .collect(),
        };
        let (metrics, captured) = self.run_pass_captured(
            Start::Staggered(stagger),
            Interventions::nodes(&self.values, variants),
        )?;
        let mut streams: Vec<Vec<Tensor>> = vec![vec![]; plans.len()];
        for (st, &k) in captured.variant_resid.into_iter().zip(&captured_plans) {
            streams[k] = st;
        }
        for (k, plan) in plans.iter().enumerate().filter(|(_, p)| p.keep) {
            let b = Arc::new(NodeBase {
                set: plan.ablated.clone(),
                resid: stream_below(&plans, &streams, k, n_layers),
            });
            used.insert(b.set.clone());
            if !avail.iter().any(|a| a.set == b.set) {
                avail.push(b);
            }
        }
        let mut out = vec![0.0; part.len()];
        for (pos, &k) in order.iter().enumerate() {
            if let Some(c) = plans[k].candidate {
                out[c] = metrics[pos];
            }
        }
        Ok(out)
    }
}

/// The residual stream of plan `k`'s run at the inputs of blocks `0..upto`: its parents' below
/// its join, its own captured one from there.
fn stream_below(plans: &[Plan], streams: &[Vec<Tensor>], k: usize, upto: usize) -> Vec<Tensor> {
    let join = plans[k].layer;
    let mut out = match &plans[k].parent {
        Parent::Base(b) => b.resid[..join.min(upto)].to_vec(),
        Parent::Planned(p) => stream_below(plans, streams, *p, join.min(upto)),
    };
    if upto > join {
        out.extend(streams[k][..upto - join].iter().cloned());
    }
    out
}
