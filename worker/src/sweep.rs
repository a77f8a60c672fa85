//! Sweeps on one evaluator: the node sweep, and pruning runs in lockstep (one run, or the K
//! runs of an order study), every step's candidates scored in one batched call.

use circuit_sweep_common::Component;
use circuit_sweep_common::prune::Pruner;
use circuit_sweep_common::results::NodeScores;

use crate::eval::Evaluator;
use crate::model::ModelError;

/// Every head and every MLP ablated alone, batched layer by layer (a layer's components share
/// their start layer). `on_layer` is called after each layer and may stop the sweep.
pub fn node_sweep(
    ev: &Evaluator,
    n_layers: usize,
    n_heads: usize,
    on_layer: &mut dyn FnMut(usize) -> Result<(), ModelError>,
) -> Result<NodeScores, ModelError> {
    let layers: Vec<usize> = (0..n_layers).collect();
    node_sweep_layers(ev, &layers, n_layers, n_heads, on_layer)
}

/// The node sweep of some layers only (rows of the result follow `layers`).
pub fn node_sweep_layers(
    ev: &Evaluator,
    layers: &[usize],
    n_layers: usize,
    n_heads: usize,
    on_layer: &mut dyn FnMut(usize) -> Result<(), ModelError>,
) -> Result<NodeScores, ModelError> {
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
        on_layer(layer)?;
    }
    Ok(NodeScores { heads, mlps })
}

/// Called after each lockstep step with the runs and the decisions so far; an error stops.
pub type OnStep<'a> = &'a mut dyn FnMut(&[Pruner], u64) -> Result<(), ModelError>;

/// Largest speculative batch of one run (candidates proposed past an undecided one).
const MAX_SPECULATION: usize = 32;

/// Runs pruning runs to the end in lockstep. Each step, every unfinished run proposes its next
/// candidates (one after a removal, twice as many after a step without one) and all are scored
/// together. `on_step` gets the runs and the decisions taken so far, and may stop the runs.
pub fn prune_lockstep(
    ev: &Evaluator,
    pruners: &mut [Pruner],
    on_step: OnStep<'_>,
) -> Result<(), ModelError> {
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
        let cands: Vec<Vec<Component>> = props
            .iter()
            .flat_map(|(_, pr)| pr.iter().map(|(_, a)| a.clone()))
            .collect();
        let scores = ev.scores(&cands)?;
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
        on_step(pruners, decisions)?;
    }
}
