//! Sweeps on one evaluator: the node and edge sweeps, and pruning runs (of nodes or edges) in
//! lockstep (one run, or the K runs of an order study), every step's candidates scored in one
//! batched call.

use circuit_sweep_common::Component;
use circuit_sweep_common::edge::Edge;
use circuit_sweep_common::edge_prune::EdgePruner;
use circuit_sweep_common::greedy::Rule;
use circuit_sweep_common::prune::Pruner;
use circuit_sweep_common::results::NodeScores;
use circuit_sweep_common::spec::EdgeMethod;

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use crate::eval::{EdgeCandidate, Evaluator, NodeCandidate};
use crate::model::ModelError;

/// Why a sweep ended before its last step.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A progress callback asked it to stop (the shard's lease was revoked).
    #[error("cancelled")]
    Cancelled,
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Called with progress; `Break` stops the sweep with [`SweepError::Cancelled`].
pub type OnProgress<'a> = &'a mut dyn FnMut(usize) -> ControlFlow<()>;

/// Stops with [`SweepError::Cancelled`] when `flow` says so.
pub fn go_on(flow: ControlFlow<()>) -> Result<(), SweepError> {
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(SweepError::Cancelled),
    }
}

/// Every head and every MLP ablated alone, batched layer by layer (a layer's components share
/// their start layer). `on_layer` is called after each layer and may stop the sweep.
pub fn node_sweep(
    ev: &Evaluator,
    n_layers: usize,
    n_heads: usize,
    on_layer: OnProgress<'_>,
) -> Result<NodeScores, SweepError> {
    let layers: Vec<usize> = (0..n_layers).collect();
    node_sweep_layers(ev, &layers, n_layers, n_heads, on_layer)
}

/// The node sweep of some layers only (rows of the result follow `layers`).
pub fn node_sweep_layers(
    ev: &Evaluator,
    layers: &[usize],
    n_layers: usize,
    n_heads: usize,
    on_layer: OnProgress<'_>,
) -> Result<NodeScores, SweepError> {
    let mut heads = Vec::with_capacity(layers.len());
    let mut mlps = Vec::with_capacity(layers.len());
    for &layer in layers {
        let comps: Vec<Vec<Component>> = Component::all(n_layers, n_heads)
            .into_iter()
            .filter(|c| c.layer() == layer)
            .map(|c| vec![c])
            .collect();
        let s = ev.scores(&comps)?;
        heads.push(s[..n_heads].to_vec());
        mlps.push(s[n_heads]);
        go_on(on_layer(layer))?;
    }
    Ok(NodeScores { heads, mlps })
}

/// A greedy search that proposes candidates (an item and the items ablated to score it) and
/// takes their scores: node pruning and edge pruning.
pub trait Search {
    /// What is pruned.
    type Item: Clone + Ord;
    /// Whether the search is over.
    fn is_done(&self) -> bool;
    /// Up to `k` next candidates.
    fn propose(&mut self, k: usize) -> Vec<(Self::Item, Vec<Self::Item>)>;
    /// Takes scores of proposed candidates in order; returns how many were used.
    fn record(&mut self, proposed: &[(Self::Item, Vec<Self::Item>)], scores: &[f64]) -> usize;
    /// What every candidate of `proposed` ablates besides what it tests: the circuit so far,
    /// which one cached run can serve.
    fn settled(&self, proposed: &[(Self::Item, Vec<Self::Item>)]) -> Vec<Self::Item> {
        shared_part(proposed)
    }
}

impl Search for Pruner {
    type Item = Component;
    fn is_done(&self) -> bool {
        Pruner::is_done(self)
    }
    fn propose(&mut self, k: usize) -> Vec<(Component, Vec<Component>)> {
        Pruner::propose(self, k)
    }
    fn record(&mut self, p: &[(Component, Vec<Component>)], scores: &[f64]) -> usize {
        Pruner::record(self, p, scores)
    }
}

impl Search for EdgePruner {
    type Item = Edge;
    fn is_done(&self) -> bool {
        EdgePruner::is_done(self)
    }
    fn propose(&mut self, k: usize) -> Vec<(Edge, Vec<Edge>)> {
        EdgePruner::propose(self, k)
    }
    fn record(&mut self, p: &[(Edge, Vec<Edge>)], scores: &[f64]) -> usize {
        EdgePruner::record(self, p, scores)
    }
    fn settled(&self, p: &[(Edge, Vec<Edge>)]) -> Vec<Edge> {
        // A guided test ablates a whole block: the circuit so far is what it removed.
        match self.removed() {
            Some(mut r) => {
                r.sort();
                r
            }
            None => shared_part(p),
        }
    }
}

/// A candidate of a search step: what its evaluation ablates.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<T> {
    /// Items ablated to score it.
    pub ablated: Vec<T>,
    /// Items of `ablated` that every candidate of its search's step ablates besides its own
    /// (the circuit so far): one run with them ablated can serve them all.
    pub shared: Vec<T>,
}

/// Scores candidates.
pub type ScoreFn<'a, T> = &'a dyn Fn(&[Candidate<T>]) -> Result<Vec<f64>, ModelError>;

/// Called after each lockstep step with the runs and the decisions so far; `Break` stops.
pub type OnStep<'a, S> = &'a mut dyn FnMut(&[S], u64) -> ControlFlow<()>;

/// Largest speculative batch of one run (candidates proposed past an undecided one).
const MAX_SPECULATION: usize = 32;

/// Speculative candidates one lockstep step may propose across all its searches at most
/// (while guesses hold); each search gets its share, at least [`MIN_SPECULATION`]. On a CPU a
/// pass costs what its rows cost, so a guess past a wrong one is lost work: with many searches
/// in lockstep a pass is full without deep guesses.
const SPECULATION_PER_STEP: usize = 32;

/// The least a search may speculate, whatever shares the step.
const MIN_SPECULATION: usize = 4;

/// How far each of `searches` searches in one step may speculate.
fn speculation_cap(searches: usize) -> usize {
    (SPECULATION_PER_STEP / searches.max(1)).clamp(MIN_SPECULATION, MAX_SPECULATION)
}

/// Runs node pruning runs to the end in lockstep (see [`lockstep`]).
pub fn prune_lockstep(
    ev: &Evaluator,
    pruners: &mut [Pruner],
    on_step: OnStep<'_, Pruner>,
) -> Result<(), SweepError> {
    let score = |cands: &[Candidate<Component>]| {
        let c: Vec<NodeCandidate> = cands
            .iter()
            .map(|c| NodeCandidate {
                ablated: c.ablated.clone(),
                settled: c.shared.clone(),
            })
            .collect();
        ev.node_scores(&c)
    };
    let out = lockstep(pruners, &score, on_step);
    ev.forget_node_bases();
    out
}

/// Runs edge pruning runs to the end in lockstep, with `nodes` (outside the node circuit the
/// graph is restricted to) ablated in every candidate.
pub fn edge_prune_lockstep(
    ev: &Evaluator,
    nodes: &[Component],
    pruners: &mut [EdgePruner],
    on_step: OnStep<'_, EdgePruner>,
) -> Result<(), SweepError> {
    let score = |cands: &[Candidate<Edge>]| {
        let c: Vec<EdgeCandidate> = cands
            .iter()
            .map(|c| EdgeCandidate {
                nodes: nodes.to_vec(),
                edges: c.ablated.clone(),
                settled: c.shared.clone(),
            })
            .collect();
        ev.edge_scores(&c)
    };
    lockstep(pruners, &score, on_step)
}

/// Runs searches to the end in lockstep. Each step, every unfinished search proposes its next
/// candidates (a speculative batch: twice as many after a step whose guesses all held, up to
/// its share of the step, one after a wrong guess) and all are scored together by `score`. `on_step` gets the searches
/// and the decisions taken so far, and may stop them.
pub fn lockstep<S: Search>(
    pruners: &mut [S],
    score: ScoreFn<'_, S::Item>,
    on_step: OnStep<'_, S>,
) -> Result<(), SweepError> {
    let mut ks = vec![1usize; pruners.len()];
    let mut decisions = 0u64;
    loop {
        let mut props = vec![];
        for (i, p) in pruners.iter_mut().enumerate() {
            if !p.is_done() {
                let pr = p.propose(ks[i]);
                if !pr.is_empty() {
                    props.push((i, pr));
                }
            }
        }
        if props.is_empty() {
            return Ok(());
        }
        let cands: Vec<Candidate<S::Item>> = props
            .iter()
            .flat_map(|(i, pr)| {
                let shared = pruners[*i].settled(pr);
                pr.iter().map(move |(_, a)| Candidate {
                    ablated: a.clone(),
                    shared: shared.clone(),
                })
            })
            .collect();
        let scores = score(&cands)?;
        let cap = speculation_cap(props.len());
        let mut off = 0;
        for (i, pr) in &props {
            let used = pruners[*i].record(pr, &scores[off..off + pr.len()]);
            decisions += used as u64;
            off += pr.len();
            // While the guesses hold, batches grow; after a wrong one, one at a time again.
            ks[*i] = if used == pr.len() {
                (ks[*i] * 2).min(cap)
            } else {
                1
            };
        }
        go_on(on_step(pruners, decisions))?;
    }
}

/// What every proposed candidate ablates besides its own item.
fn shared_part<T: Clone + Ord>(proposed: &[(T, Vec<T>)]) -> Vec<T> {
    let mut shared: Option<BTreeSet<&T>> = None;
    for (item, ablated) in proposed {
        let mine: BTreeSet<&T> = ablated.iter().filter(|a| *a != item).collect();
        shared = Some(match shared {
            None => mine,
            Some(s) => s.intersection(&mine).copied().collect(),
        });
    }
    shared.into_iter().flatten().cloned().collect()
}

/// Every edge of `edges` ablated alone (directly, or by path patching), with `nodes` ablated in
/// every candidate, in chunks of `chunk` edges; `on_chunk` gets the edges done so far and may
/// stop the sweep.
pub fn edge_sweep(
    ev: &Evaluator,
    method: EdgeMethod,
    edges: &[Edge],
    nodes: &[Component],
    chunk: usize,
    on_chunk: OnProgress<'_>,
) -> Result<Vec<f64>, SweepError> {
    let mut out = Vec::with_capacity(edges.len());
    for part in edges.chunks(chunk.max(1)) {
        match method {
            EdgeMethod::Direct => {
                let c: Vec<EdgeCandidate> = part
                    .iter()
                    .map(|e| EdgeCandidate {
                        nodes: nodes.to_vec(),
                        edges: vec![*e],
                        settled: vec![],
                    })
                    .collect();
                out.extend(ev.edge_scores(&c)?);
            }
            EdgeMethod::Path => out.extend(ev.edge_path_scores(part, nodes)?),
        }
        go_on(on_chunk(out.len()))?;
    }
    Ok(out)
}

/// Attribution sums (see [`Evaluator::attribute`]) of the prompts `prompts`, a pass's worth of
/// prompts at a time, summed in order, with the nodes `outside` ablated outright; `on_pass`
/// hears how many prompts are done.
pub fn attribution(
    ev: &Evaluator,
    steps: usize,
    edges: bool,
    outside: &[Component],
    prompts: std::ops::Range<usize>,
    on_pass: OnProgress<'_>,
) -> Result<crate::model::AttributionSums, SweepError> {
    let mut total = crate::model::AttributionSums::default();
    let per = crate::eval::ATTRIBUTION_PROMPTS_PER_PASS;
    for lo in prompts.clone().step_by(per) {
        let hi = (lo + per).min(prompts.end);
        total.add(&ev.attribute(steps, edges, outside, lo..hi)?, 1.0);
        go_on(on_pass(hi - prompts.start))?;
    }
    Ok(total)
}

/// Estimated harm of ablating each item alone, from its attribution sum (an estimated metric
/// change), in the rule's unit: how far the estimated score falls (or, under the KL rule, the
/// divergence rises). Scores are linear in the metric, so any base metric gives the same
/// differences. An estimate that is not a number counts as the most harmful.
pub fn estimated_harm(ev: &Evaluator, rule: Rule, changes: &[f64]) -> Vec<f64> {
    let base = ev.score_of(ev.full);
    let sign = if rule.tau().is_some() { 1.0 } else { -1.0 };
    changes
        .iter()
        .map(|d| {
            let h = sign * (ev.score_of(ev.full + d) - base);
            if h.is_nan() { f64::INFINITY } else { h }
        })
        .collect()
}
