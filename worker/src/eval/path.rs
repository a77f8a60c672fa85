//! Path patching of single edges, as the paper's edge pruning does it (Wang et al.'s method).
//!
//! For an edge `s -> r`: (1) from the base run (the clean prompts, with every node outside the
//! circuit ablated), give the sender `s` its ablated value, freeze every head at its base value
//! and recompute the MLPs; (2) run the base again with the receiver `r` alone reading what run
//! (1) gave it. With the heads frozen, run (1) differs from the base only by the sender's write
//! and what the MLPs after it make of it, so it needs no attention: the difference `D` is
//! carried through the MLPs, and run (2) is a batched pass in which `r`'s input is its base input
//! plus `D` at `r` (the query, key and value inputs at a block's input, an MLP's input, the final
//! stream for the logits). Many edges run in one pass, one variant each.

use std::collections::BTreeMap;

use candle_core::Tensor;
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, Receiver, Sender};

use super::Evaluator;
use super::edges::Base;
use crate::model::{Interventions, ModelError};

/// Where a receiver reads the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    /// The input of block `l` (its heads' queries, keys and values).
    Block(usize),
    /// The input of the MLP of layer `l`.
    Mlp(usize),
    /// What the final norm reads.
    Final,
}

fn point(r: Receiver) -> Point {
    match r {
        Receiver::Attn { layer, .. } => Point::Block(layer),
        Receiver::Mlp { layer } => Point::Mlp(layer),
        Receiver::Logits => Point::Final,
    }
}

impl Evaluator {
    /// Metric values of single edges by path patching, with `nodes` (outside the circuit the graph
    /// is restricted to) ablated in every run. `embed` is no sender here.
    pub fn edge_path_metrics(
        &self,
        edges: &[Edge],
        nodes: &[Component],
    ) -> Result<Vec<f64>, ModelError> {
        if self.ablation.direction != circuit_sweep_common::spec::Direction::Noising {
            return Err(ModelError::InvalidRequest(
                "path patching is implemented for noising (direction = \"noising\")".into(),
            ));
        }
        let shape = circuit_sweep_common::edge::GraphShape {
            embed: false,
            ..self.graph_shape()
        };
        for e in edges {
            shape
                .check(e)
                .map_err(|err| ModelError::InvalidRequest(err.to_string()))?;
        }
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        let base = self.base(&nodes)?;
        let n_layers = self.model.info().n_layers;
        // By the layer the pass starts at (the receiver's; the logits' from the last block),
        // then by sender, so that a chunk's deltas share their senders.
        let start_of = |i: usize| edges[i].receiver.layer(n_layers).min(n_layers - 1);
        let mut order: Vec<usize> = (0..edges.len()).collect();
        order.sort_by_key(|&i| (start_of(i), edges[i].sender, i));
        let per_variant = (self.prompts * self.seq_len).max(1);
        let mut out = vec![0.0; edges.len()];
        let mut pass = |part: &[usize]| -> Result<Vec<f64>, ModelError> {
            let layer = start_of(part[0]);
            let mut memo: BTreeMap<(Sender, Point), Tensor> = BTreeMap::new();
            let mut deltas = Vec::with_capacity(part.len());
            for &i in part {
                let e = edges[i];
                let key = (e.sender, point(e.receiver));
                let d = match memo.entry(key) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(self.path_delta(&base, &nodes, e.sender, key.1)?)
                    }
                };
                // The receiver reads the stream minus the delta: give it minus `D`.
                deltas.push(vec![(e.receiver, d.neg()?)]);
            }
            let outside: Vec<Component> = nodes
                .iter()
                .copied()
                .filter(|c| c.layer() >= layer)
                .collect();
            let iv = Interventions {
                variants: vec![outside; part.len()],
                deltas,
                kv_per_query: self.kv_per_query,
                ..Interventions::nodes(&self.values, vec![])
            };
            self.run_pass(self.base_start(&base, layer), iv)
        };
        let mut start = 0;
        while start < order.len() {
            let layer = start_of(order[start]);
            let chunk = self.budget.variants(per_variant);
            let mut end = start;
            while end < order.len() && end - start < chunk && start_of(order[end]) == layer {
                end += 1;
            }
            let part = &order[start..end];
            for (&i, v) in
                part.iter()
                    .zip(self.budget.split_on_oom(part, per_variant, &mut pass)?)
            {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// Scores of single edges by path patching (see [`Evaluator::edge_path_metrics`]).
    pub fn edge_path_scores(
        &self,
        edges: &[Edge],
        nodes: &[Component],
    ) -> Result<Vec<f64>, ModelError> {
        Ok(self
            .edge_path_metrics(edges, nodes)?
            .into_iter()
            .map(|m| self.score_of(m))
            .collect())
    }

    /// How the residual stream at `at` differs from the base run's (`[prompts, T, d]`) when
    /// `sender` takes its ablated value, every head keeps its base value and the MLPs in the
    /// circuit are recomputed.
    fn path_delta(
        &self,
        base: &Base,
        outside: &[Component],
        sender: Sender,
        at: Point,
    ) -> Result<Tensor, ModelError> {
        let info = self.model.info();
        let broadcast = |t: &Tensor, like: &Tensor| t.broadcast_as(like.dims());
        // The sender's ablated write minus its base write.
        let (layer, mut d) = match sender {
            Sender::Embed => {
                return Err(ModelError::InvalidRequest(
                    "path patching has no `embed` sender".into(),
                ));
            }
            Sender::Node(Component::Head { layer, head }) => {
                let slice = |z: &Tensor| -> candle_core::Result<Tensor> {
                    z.narrow(2, head, 1)?.squeeze(2)?.contiguous()
                };
                let own = slice(&base.acts.z[layer])?;
                let abl = broadcast(&slice(&self.values.z[layer])?, &own)?;
                (layer, self.model.head_out(layer, head, &(abl - own)?)?)
            }
            Sender::Node(Component::Mlp { layer }) => {
                let own = &base.acts.mlp[layer];
                (layer, (broadcast(&self.values.mlp[layer], own)? - own)?)
            }
        };
        d = self.at_edge_positions(&d)?;
        // The first MLP that reads the sender's write: a head's own layer's, unless attention and
        // MLP read the same stream.
        let first_mlp = match sender {
            Sender::Node(Component::Head { .. }) if !info.parallel_residual => layer,
            _ => layer + 1,
        };
        for l in first_mlp..info.n_layers {
            // Heads are frozen: a block's input and its MLP's input differ by `d` alike.
            if at == Point::Block(l) || at == Point::Mlp(l) {
                return Ok(d);
            }
            // Heads are frozen, so the stream the MLP reads differs by `d` alone.
            if !outside.contains(&Component::Mlp { layer: l }) {
                let new = self.model.mlp_out(l, &(&base.mlp_in[l] + &d)?)?;
                d = (d + (new - &base.acts.mlp[l])?)?;
            }
        }
        match at {
            Point::Final => Ok(d),
            _ => Err(ModelError::InvalidRequest(format!(
                "{sender} writes after the receiver reads ({at:?})"
            ))),
        }
    }
}
