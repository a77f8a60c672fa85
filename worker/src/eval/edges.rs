//! Edge ablation in the evaluator: edge candidates batched as variants, each group starting from
//! a base run (the unpatched run with the candidates' nodes ablated), and the reference path of
//! one edge computed by hand.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, Receiver, Sender};
use circuit_sweep_common::spec::Direction;

use super::Evaluator;
use crate::model::{Activations, Capture, Interventions, ModelError, RunRequest, Start};

/// Bytes of sender rows one edge pass may hold (each variant keeps one row of `prompts *
/// positions * d_model` per sender it ablates).
const EDGE_ROWS_BYTES: usize = 1 << 30;

/// A run the edge candidates that ablate the same nodes start from.
pub(super) struct Base {
    /// Residual stream at each block's input.
    pub(super) resid: Vec<Tensor>,
    /// What each sender wrote.
    pub(super) acts: Activations,
    /// The residual stream each MLP reads.
    pub(super) mlp_in: Vec<Tensor>,
}

/// Base runs kept for reuse (a pruning run's circuit so far, and the node bases).
const KEPT_BASES: usize = 6;

/// What a base run ablates: nodes, and edges (sorted).
pub(super) type BaseKey = (Vec<Component>, Vec<Edge>);

/// A candidate for edge ablation: nodes ablated as a whole, and edges ablated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeCandidate {
    /// Nodes ablated (outside the circuit an edge graph is restricted to).
    pub nodes: Vec<Component>,
    /// Edges ablated.
    pub edges: Vec<Edge>,
    /// Edges of `edges` that other candidates ablate too (a pruning run's circuit so far): the
    /// run with them ablated is computed once, cached, and the candidates' passes start from
    /// it at their first other receiver. Empty: passes start from the run with `nodes` ablated.
    pub settled: Vec<Edge>,
}

/// The lowest layer any of `edges` patches (`n_layers`: the logits, or none).
fn lowest<'e>(edges: impl IntoIterator<Item = &'e Edge>, n_layers: usize) -> usize {
    edges
        .into_iter()
        .map(|e| e.receiver.layer(n_layers))
        .min()
        .unwrap_or(n_layers)
}

fn distinct_senders(edges: &[Edge]) -> usize {
    let mut s: Vec<Sender> = edges.iter().map(|e| e.sender).collect();
    s.sort_unstable();
    s.dedup();
    s.len()
}

impl Evaluator {
    /// Ablates edges at these positions only (`None`: every position; the spec's `positions`).
    pub fn set_edge_positions(&mut self, positions: Option<Vec<usize>>) -> Result<(), ModelError> {
        if let Some(p) = positions
            .as_ref()
            .and_then(|ps| ps.iter().find(|&&p| p >= self.seq_len))
        {
            return Err(ModelError::InvalidRequest(format!(
                "edge position {p} is outside the {} positions of the prompts",
                self.seq_len
            )));
        }
        self.edge_positions = positions;
        Ok(())
    }

    /// Edges name key and value receivers per query head (the default) or per key/value head.
    pub fn set_kv_per_query(&mut self, per_query: bool) {
        self.kv_per_query = per_query;
    }

    /// The edge graph's shape as this evaluator reads edge names.
    pub fn graph_shape(&self) -> circuit_sweep_common::edge::GraphShape {
        circuit_sweep_common::edge::GraphShape {
            kv_per_query: self.kv_per_query,
            ..self.model.info().graph_shape()
        }
    }

    /// Scores of edge candidates (see [`Evaluator::edge_metrics`]).
    pub fn edge_scores(&self, candidates: &[EdgeCandidate]) -> Result<Vec<f64>, ModelError> {
        Ok(self
            .edge_metrics(candidates)?
            .into_iter()
            .map(|m| self.score_of(m))
            .collect())
    }

    /// Metric values of edge candidates, each a set of ablated nodes and ablated edges, many per
    /// forward pass: grouped by the first layer they patch (each group starts from the cached
    /// residual stream there) and cut into passes by the token budget (which shrinks when a
    /// pass runs out of device memory) and by the memory of the senders' rows.
    pub fn edge_metrics(&self, candidates: &[EdgeCandidate]) -> Result<Vec<f64>, ModelError> {
        if self.ablation.direction != Direction::Noising {
            return Err(ModelError::InvalidRequest(
                "edge ablation is implemented for noising (direction = \"noising\")".into(),
            ));
        }
        let info = self.model.info();
        let n_layers = info.n_layers;
        // Candidates that ablate the same nodes (everything outside the circuit a graph is
        // restricted to) and settle the same edges start from the same base run.
        let mut bases: BTreeMap<BaseKey, Vec<usize>> = BTreeMap::new();
        for (i, c) in candidates.iter().enumerate() {
            let mine: std::collections::BTreeSet<&Edge> = c.edges.iter().collect();
            if let Some(e) = c.settled.iter().find(|e| !mine.contains(e)) {
                return Err(ModelError::InvalidRequest(format!(
                    "candidate {i} settles {e}, which it does not ablate"
                )));
            }
            bases
                .entry(base_key(&c.nodes, &c.settled))
                .or_default()
                .push(i);
        }
        let per_variant = (self.prompts * self.seq_len).max(1);
        let row_bytes = per_variant * info.d_model * info.dtype.size_in_bytes();
        let mut out = vec![0.0; candidates.len()];
        for ((nodes, settled), idx) in bases {
            let settled =
                if self.settling_pays(&nodes, &settled, idx.iter().map(|&i| &candidates[i])) {
                    settled
                } else {
                    vec![]
                };
            let base = self.edge_base(&nodes, &settled)?;
            // Then by the first receiver the base has not settled: the pass starts from the
            // base's residual there.
            let mut groups: Vec<Vec<usize>> = vec![vec![]; n_layers + 1];
            for i in idx {
                let own = candidates[i].edges.iter().filter(|e| !has(&settled, e));
                groups[lowest(own, n_layers)].push(i);
            }
            for (start, idx) in groups.iter().enumerate() {
                // The base's residual stream is cached at block inputs; nothing patched before
                // the logits starts at the last block.
                let layer = start.min(n_layers - 1);
                let at = |n: &Vec<Component>| -> Vec<Component> {
                    n.iter().copied().filter(|c| c.layer() >= layer).collect()
                };
                let mut pass = |part: &[usize]| -> Result<Vec<f64>, ModelError> {
                    let iv = Interventions {
                        variants: part.iter().map(|_| at(&nodes)).collect(),
                        // Settled edges below the start are in the base's residual stream.
                        edges: part
                            .iter()
                            .map(|&i| {
                                let es = candidates[i].edges.iter();
                                es.filter(|e| e.receiver.layer(n_layers) >= layer)
                                    .copied()
                                    .collect()
                            })
                            .collect(),
                        inputs: vec![],
                        cached: Some(&base.acts),
                        values: &self.values,
                        positions: self.edge_positions.clone(),
                        deltas: vec![],
                        kv_per_query: self.kv_per_query,
                    };
                    self.run_pass(self.base_start(&base, layer), iv)
                };
                let mut flush = |part: &mut Vec<usize>, out: &mut Vec<f64>| {
                    if !part.is_empty() {
                        let values = self.budget.split_on_oom(part, per_variant, &mut pass)?;
                        for (&i, v) in part.iter().zip(values) {
                            out[i] = v;
                        }
                        part.clear();
                    }
                    Ok::<(), ModelError>(())
                };
                let mut part: Vec<usize> = vec![];
                let mut rows = 0usize;
                for &i in idx {
                    let senders = distinct_senders(&candidates[i].edges);
                    let full = (part.len() + 1) * per_variant > self.budget.tokens()
                        || (rows + senders) * row_bytes > EDGE_ROWS_BYTES;
                    if full && !part.is_empty() {
                        flush(&mut part, &mut out)?;
                        rows = 0;
                    }
                    part.push(i);
                    rows += senders;
                }
                flush(&mut part, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Where a pass from `base` that first patches block `layer` starts: its residual stream
    /// there, or the tokens.
    pub(super) fn base_start(&self, base: &Base, layer: usize) -> Start {
        if layer == 0 {
            Start::Tokens(self.input.clone())
        } else {
            Start::Resid {
                layer,
                resid: base.resid[layer].clone(),
            }
        }
    }

    /// `delta` (`[.., positions, d]`) zeroed outside the positions edges are ablated at.
    pub(super) fn at_edge_positions(&self, delta: &Tensor) -> Result<Tensor, ModelError> {
        let Some(ps) = &self.edge_positions else {
            return Ok(delta.clone());
        };
        let mut m = vec![0f32; self.seq_len];
        for &p in ps {
            m[p] = 1.0;
        }
        let m =
            Tensor::from_vec(m, (1, self.seq_len, 1), delta.device())?.to_dtype(delta.dtype())?;
        Ok(delta.broadcast_mul(&m)?)
    }

    /// The unpatched run with `nodes` ablated (residual stream at each block's input and the
    /// activations): where edge candidates that ablate those nodes start. Kept for reuse.
    pub(super) fn base(&self, nodes: &[Component]) -> Result<Arc<Base>, ModelError> {
        self.edge_base(nodes, &[])
    }

    /// Whether a base run with `settled` ablated (besides `nodes`) saves more blocks over the
    /// passes of `candidates` than it costs to compute.
    fn settling_pays<'c>(
        &self,
        nodes: &[Component],
        settled: &[Edge],
        candidates: impl Iterator<Item = &'c EdgeCandidate>,
    ) -> bool {
        if settled.is_empty() {
            return false;
        }
        let n_layers = self.model.info().n_layers;
        let floor = lowest(settled, n_layers);
        let saved: usize = candidates
            .map(|c| lowest(c.edges.iter().filter(|e| !has(settled, e)), n_layers))
            .map(|start| start.saturating_sub(floor))
            .sum();
        let cost = match self.nearest_base(nodes, settled) {
            (_, from) if from >= n_layers => 0,
            (_, from) => n_layers - from,
        };
        saved > cost
    }

    /// The kept base of `nodes` whose edges are the largest part of `settled` below which
    /// nothing else is ablated, and the first layer `settled` patches beyond it.
    fn nearest_base(&self, nodes: &[Component], settled: &[Edge]) -> (Option<Arc<Base>>, usize) {
        let n_layers = self.model.info().n_layers;
        let cache = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: (Option<Arc<Base>>, usize) = (None, 0);
        for ((n, es), b) in cache.iter() {
            if n != nodes || !es.iter().all(|e| has(settled, e)) {
                continue;
            }
            let from = lowest(settled.iter().filter(|e| !has(es, e)), n_layers);
            if best.0.is_none() || from > best.1 {
                best = (Some(b.clone()), from);
            }
        }
        best
    }

    /// The unpatched run with `nodes` and the edges `settled` ablated, computed from the kept
    /// base that shares most of it (from the tokens when none does), and kept.
    fn edge_base(&self, nodes: &[Component], settled: &[Edge]) -> Result<Arc<Base>, ModelError> {
        if nodes.is_empty() && settled.is_empty() {
            let acts = self.clean.clone().expect("noising has clean activations");
            return Ok(Arc::new(Base {
                resid: self.resid.clone(),
                acts,
                mlp_in: self.mlp_in.clone(),
            }));
        }
        let n_layers = self.model.info().n_layers;
        let key = base_key(nodes, settled);
        let (from, start) = match self.nearest_base(&key.0, &key.1) {
            (Some(b), s) if s >= n_layers => (Some(b), n_layers),
            (Some(b), s) => (Some(b), s),
            (None, _) if key.0.is_empty() => {
                (Some(self.edge_base(&[], &[])?), lowest(settled, n_layers))
            }
            (None, _) => (None, 0),
        };
        let b = match from {
            // Only the logits read what is left: every block's input and output are the same.
            Some(b) if start >= n_layers => b,
            Some(b) if start > 0 => {
                let run =
                    self.capture_run(self.base_start(&b, start), start, &key, Some(&b.acts))?;
                let keep = |mine: &[Tensor], new: Vec<Option<Tensor>>| -> Vec<Tensor> {
                    new.into_iter()
                        .zip(mine)
                        .map(|(n, m)| n.unwrap_or_else(|| m.clone()))
                        .collect()
                };
                let c = run.captured;
                Arc::new(Base {
                    resid: keep(&b.resid, c.resid),
                    acts: Activations {
                        z: keep(&b.acts.z, c.z),
                        mlp: keep(&b.acts.mlp, c.mlp),
                        embed: b.acts.embed.clone(),
                    },
                    mlp_in: keep(&b.mlp_in, c.mlp_in),
                })
            }
            _ => {
                let run = self.capture_run(Start::Tokens(self.input.clone()), 0, &key, None)?;
                let acts = Activations::from_captured(&run.captured)?;
                let all = |v: Vec<Option<Tensor>>| -> Vec<Tensor> {
                    v.into_iter().map(|r| r.expect("captured")).collect()
                };
                Arc::new(Base {
                    resid: all(run.captured.resid),
                    acts,
                    mlp_in: all(run.captured.mlp_in),
                })
            }
        };
        let mut cache = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            cache.remove(i);
        }
        if cache.len() >= KEPT_BASES {
            // The least recently made edge base goes first; node bases (every edge base is
            // built on one) last.
            let i = cache.iter().position(|((_, es), _)| !es.is_empty());
            cache.remove(i.unwrap_or(0));
        }
        cache.push((key, b.clone()));
        Ok(b)
    }

    /// One unpatched run from `start` (block `layer`) with the nodes and edges of `key` ablated,
    /// capturing what a base keeps; `cached`: what senders below `layer` wrote.
    fn capture_run(
        &self,
        start: Start,
        layer: usize,
        (nodes, edges): &BaseKey,
        cached: Option<&Activations>,
    ) -> Result<crate::model::RunOutput, ModelError> {
        let n_layers = self.model.info().n_layers;
        let edges: Vec<Edge> = edges
            .iter()
            .filter(|e| e.receiver.layer(n_layers) >= layer)
            .copied()
            .collect();
        let nodes: Vec<Component> = nodes
            .iter()
            .copied()
            .filter(|c| c.layer() >= layer)
            .collect();
        let run = self.model.run(&RunRequest {
            interventions: Some(Interventions {
                edges: if edges.is_empty() {
                    vec![]
                } else {
                    vec![edges]
                },
                cached,
                positions: self.edge_positions.clone(),
                kv_per_query: self.kv_per_query,
                ..Interventions::nodes(&self.values, vec![nodes])
            }),
            capture: Capture {
                resid: true,
                z: true,
                mlp: true,
                mlp_in: true,
                ..Default::default()
            },
            ..RunRequest::new(start)
        })?;
        self.forward_passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(run)
    }

    /// The reference path of one ablated edge: the receiver's input computed by hand from the
    /// unpatched run (its residual stream minus the sender's write plus the sender's ablated
    /// write), given to one full forward pass from the tokens. For tests and benchmarks.
    pub fn edge_metric_reference(&self, edge: Edge) -> Result<f64, ModelError> {
        self.edge_metric_partial(edge, 1.0)
    }

    /// [`Evaluator::edge_metric_reference`] with the edge ablated `coefficient` of the way: the
    /// receiver reads its stream plus `coefficient` times the sender's ablated write minus its
    /// write (the derivative attribution estimates, by finite differences).
    pub fn edge_metric_partial(&self, edge: Edge, coefficient: f64) -> Result<f64, ModelError> {
        let clean = self.clean.as_ref().ok_or_else(|| {
            ModelError::InvalidRequest("edge ablation is implemented for noising".into())
        })?;
        self.graph_shape()
            .check(&edge)
            .map_err(|e| ModelError::InvalidRequest(e.to_string()))?;
        let stream = match edge.receiver {
            Receiver::Attn { layer, .. } => self.resid[layer].clone(),
            Receiver::Mlp { layer } => self.mlp_in[layer].clone(),
            Receiver::Logits => self.final_resid_post.clone().expect("captured"),
        };
        let broadcast = |t: &Tensor| t.broadcast_as(stream.dims());
        let write = |a: &Activations| -> Result<Tensor, ModelError> {
            Ok(match edge.sender {
                Sender::Embed => broadcast(&a.embed)?,
                Sender::Node(Component::Mlp { layer }) => broadcast(&a.mlp[layer])?,
                Sender::Node(Component::Head { layer, head }) => {
                    let z = a.z[layer].narrow(2, head, 1)?.squeeze(2)?.contiguous()?;
                    broadcast(&self.model.head_out(layer, head, &z)?)?
                }
            })
        };
        let delta = self.at_edge_positions(&(write(clean)? - write(&self.values)?)?)?;
        let input = if coefficient == 1.0 {
            (stream.clone() - delta)?
        } else {
            (stream.clone() - (delta * coefficient)?)?
        };
        let out = self.run_pass(
            Start::Tokens(self.input.clone()),
            Interventions {
                inputs: vec![(edge.receiver, input)],
                kv_per_query: self.kv_per_query,
                ..Interventions::nodes(&self.values, vec![vec![]])
            },
        )?;
        Ok(out[0])
    }
}

/// Whether sorted `edges` hold `e`.
fn has(edges: &[Edge], e: &Edge) -> bool {
    edges.binary_search(e).is_ok()
}

/// The key of a base run: nodes and edges sorted, without repeats.
fn base_key(nodes: &[Component], edges: &[Edge]) -> BaseKey {
    let mut n = nodes.to_vec();
    n.sort();
    n.dedup();
    let mut e = edges.to_vec();
    e.sort();
    e.dedup();
    (n, e)
}
