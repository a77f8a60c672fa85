//! Sweeps on one evaluator: the node and edge sweeps, and pruning runs (of nodes or edges) in
//! lockstep (one run, or the K runs of an order study), every step's candidates scored in one
//! batched call.

use circuit_sweep_common::Component;
use circuit_sweep_common::edge::Edge;
use circuit_sweep_common::edge_prune::EdgePruner;
use circuit_sweep_common::prune::Pruner;
use circuit_sweep_common::results::NodeScores;
use circuit_sweep_common::spec::EdgeMethod;

use std::ops::ControlFlow;

use crate::eval::{EdgeCandidate, Evaluator};
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
    type Item: Clone;
    /// Whether the search is over.
    fn is_done(&self) -> bool;
    /// Whether the last decision removed its item.
    fn last_removed(&self) -> bool;
    /// Up to `k` next candidates.
    fn propose(&mut self, k: usize) -> Vec<(Self::Item, Vec<Self::Item>)>;
    /// Takes scores of proposed candidates in order; returns how many were used.
    fn record(&mut self, proposed: &[(Self::Item, Vec<Self::Item>)], scores: &[f64]) -> usize;
}

impl Search for Pruner {
    type Item = Component;
    fn is_done(&self) -> bool {
        Pruner::is_done(self)
    }
    fn last_removed(&self) -> bool {
        Pruner::last_removed(self)
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
    fn last_removed(&self) -> bool {
        EdgePruner::last_removed(self)
    }
    fn propose(&mut self, k: usize) -> Vec<(Edge, Vec<Edge>)> {
        EdgePruner::propose(self, k)
    }
    fn record(&mut self, p: &[(Edge, Vec<Edge>)], scores: &[f64]) -> usize {
        EdgePruner::record(self, p, scores)
    }
}

/// Scores candidates, each given as its ablated items.
pub type ScoreFn<'a, T> = &'a dyn Fn(&[Vec<T>]) -> Result<Vec<f64>, ModelError>;

/// Called after each lockstep step with the runs and the decisions so far; `Break` stops.
pub type OnStep<'a, S> = &'a mut dyn FnMut(&[S], u64) -> ControlFlow<()>;

/// Largest speculative batch of one run (candidates proposed past an undecided one).
const MAX_SPECULATION: usize = 32;

/// Runs node pruning runs to the end in lockstep (see [`lockstep`]).
pub fn prune_lockstep(
    ev: &Evaluator,
    pruners: &mut [Pruner],
    on_step: OnStep<'_, Pruner>,
) -> Result<(), SweepError> {
    lockstep(pruners, &|c| ev.scores(c), on_step)
}

/// Runs edge pruning runs to the end in lockstep, with `nodes` (outside the node circuit the
/// graph is restricted to) ablated in every candidate.
pub fn edge_prune_lockstep(
    ev: &Evaluator,
    nodes: &[Component],
    pruners: &mut [EdgePruner],
    on_step: OnStep<'_, EdgePruner>,
) -> Result<(), SweepError> {
    let score = |cands: &[Vec<Edge>]| {
        let c: Vec<EdgeCandidate> = cands
            .iter()
            .map(|edges| EdgeCandidate {
                nodes: nodes.to_vec(),
                edges: edges.clone(),
            })
            .collect();
        ev.edge_scores(&c)
    };
    lockstep(pruners, &score, on_step)
}

/// Runs searches to the end in lockstep. Each step, every unfinished search proposes its next
/// candidates (one after a removal, twice as many after a step without one) and all are scored
/// together by `score`. `on_step` gets the searches and the decisions taken so far, and may stop
/// them.
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
        let cands: Vec<Vec<S::Item>> = props
            .iter()
            .flat_map(|(_, pr)| pr.iter().map(|(_, a)| a.clone()))
            .collect();
        let scores = score(&cands)?;
        let mut off = 0;
        for (i, pr) in &props {
            decisions += pruners[*i].record(pr, &scores[off..off + pr.len()]) as u64;
            off += pr.len();
            // After a removal the circuit changed: propose one at a time again.
            ks[*i] = if pruners[*i].last_removed() {
                1
            } else {
                (ks[*i] * 2).min(MAX_SPECULATION)
            };
        }
        go_on(on_step(pruners, decisions))?;
    }
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
