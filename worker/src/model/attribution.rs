//! Gradient attribution: one differentiated pass gives, for every edge `s -> r`, the product of
//! the sender's ablation difference (what `s` would write ablated minus what it writes) and the
//! metric's gradient with respect to the receiver's own input; and for every node the product
//! with the gradient at its output. Summed over prompts and positions this is the first-order
//! estimate of the metric change when the edge (node) alone is ablated (EAP); averaged over
//! passes where every sender is moved part of the way to its ablated value, integrated gradients
//! (EAP-IG).
//!
//! Every receiver reads the residual stream plus a zero variable of its own, so the gradient of
//! that variable is the receiver's alone (a head's query, key and value inputs each recompute
//! their norm and projection from it); every sender's output gets a zero variable too.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{GraphShape, Qkv, Receiver, Sender};

use super::activations::Activations;
use super::edges::ReceiverInput;
use super::hooks::LayerHooks;
use super::layers::Differentiable;
use super::{HookedModel, LogitSelection, ModelError};

/// One differentiated pass.
pub struct AttributionPass<'a> {
    /// Token ids `[prompts, positions]`.
    pub ids: Tensor,
    /// Ablated values, first dimension 1 or the pass's prompts.
    pub values: &'a Activations,
    /// How far every sender's write is moved towards its ablated value (0: the clean run).
    pub coefficient: f64,
    /// The edge graph to score; `None` scores nodes only (no per-receiver inputs: cheaper).
    pub graph: Option<GraphShape>,
    /// Positions where senders are ablated (all when `None`).
    pub positions: Option<Vec<usize>>,
    /// Nodes ablated outright in every step (outside the node circuit a graph is restricted
    /// to); their own scores are 0.
    pub outside: &'a [Component],
    /// Logits the metric reads.
    pub logits: LogitSelection,
}

/// Sums over a pass's prompts and positions of `(ablated - written) . d metric / d input`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributionSums {
    /// Per edge of the graph, in `GraphShape::edges` order (empty without a graph).
    pub edges: Vec<f64>,
    /// Per sender, in `GraphShape::senders` order with the embedding (first).
    pub nodes: Vec<f64>,
    /// The metric of the pass as the metric function returned it.
    pub metric: f64,
}

impl AttributionSums {
    /// `self += w * part`, elementwise (an empty `self` takes `part`'s lengths).
    pub fn add(&mut self, part: &AttributionSums, w: f64) {
        let grow = |t: &mut Vec<f64>, p: &[f64]| {
            if t.is_empty() {
                t.resize(p.len(), 0.0);
            }
            for (a, b) in t.iter_mut().zip(p) {
                *a += w * b;
            }
        };
        grow(&mut self.edges, &part.edges);
        grow(&mut self.nodes, &part.nodes);
        self.metric += w * part.metric;
    }
}

/// The hooks of a differentiated pass: move writes towards their ablated values, record the
/// differences, and give every receiver and sender its own zero variable.
struct GradHooks<'a> {
    values: &'a Activations,
    coefficient: f64,
    mask: Option<Tensor>,
    dtype: DType,
    with_receivers: bool,
    /// Query heads, key/value heads, and whether key/value receivers are per query head.
    heads: (usize, usize, bool),
    /// Per layer: `abl - z` (detached) `[B, T, H, dh]`, and the variable added to `z`.
    z: Vec<Option<(Tensor, Var)>>,
    /// Per layer: `abl - m` (detached) `[B, T, d]`, and the variable added to `m`.
    mlp: Vec<Option<(Tensor, Var)>>,
    /// Receiver variables `[B, T, d]`.
    receivers: BTreeMap<Receiver, Var>,
    /// Nodes ablated outright.
    outside: &'a [Component],
}

impl GradHooks<'_> {
    /// Like [`GradHooks::moved`], with the senders `outside` (per head of a `[B, T, H, dh]`
    /// write, or the one sender of a `[B, T, d]` write) ablated outright and recorded as no
    /// difference.
    fn moved_outside(
        &self,
        x: &Tensor,
        abl: &Tensor,
        outside: &[bool],
    ) -> Result<(Tensor, Tensor), ModelError> {
        if !outside.contains(&true) {
            return self.moved(x, abl);
        }
        let (moved, diff) = self.moved(x, abl)?;
        let shape: Vec<usize> = if x.rank() == 4 {
            vec![1, 1, outside.len(), 1]
        } else {
            vec![1, 1, 1]
        };
        let flags = |out: bool| -> Result<Tensor, ModelError> {
            let v: Vec<f64> = outside
                .iter()
                .map(|&o| f64::from(u8::from(o == out)))
                .collect();
            Ok(Tensor::from_vec(v, shape.clone(), x.device())?.to_dtype(self.dtype)?)
        };
        let (inside, out) = (flags(false)?, flags(true)?);
        // At every position, as node ablation is, and with no gradient through the sender.
        let abl = abl.to_dtype(self.dtype)?.detach();
        let moved = moved
            .broadcast_mul(&inside)?
            .broadcast_add(&abl.broadcast_mul(&out)?)?;
        Ok((moved, diff.broadcast_mul(&inside)?))
    }

    /// `x + c * mask * (abl - x)` and the detached `mask * (abl - x)`.
    fn moved(&self, x: &Tensor, abl: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let abl = abl.to_dtype(self.dtype)?;
        let diff = abl.broadcast_sub(x)?;
        let diff = match &self.mask {
            None => diff,
            Some(m) => {
                let m = if x.rank() == 4 {
                    m.unsqueeze(3)?
                } else {
                    m.clone()
                };
                diff.broadcast_mul(&m)?
            }
        };
        let moved = if self.coefficient == 0.0 {
            x.clone()
        } else {
            (x + (&diff * self.coefficient)?)?
        };
        Ok((moved, diff.detach()))
    }

    fn var_like(&self, x: &Tensor) -> Result<Var, ModelError> {
        Ok(Var::zeros(x.shape(), x.dtype(), x.device())?)
    }

    fn receiver(&mut self, r: Receiver, x: &Tensor) -> Result<Tensor, ModelError> {
        let v = self.var_like(x)?;
        let input = (x + v.as_tensor())?;
        self.receivers.insert(r, v);
        Ok(input)
    }
}

impl LayerHooks for GradHooks<'_> {
    fn z(&mut self, layer: usize, z: Tensor) -> Result<Tensor, ModelError> {
        let out: Vec<bool> = (0..self.heads.0)
            .map(|head| self.outside.contains(&Component::Head { layer, head }))
            .collect();
        let (moved, diff) = self.moved_outside(&z, &self.values.z[layer], &out)?;
        let v = self.var_like(&moved)?;
        let out = (moved + v.as_tensor())?;
        self.z[layer] = Some((diff, v));
        Ok(out)
    }

    fn mlp(&mut self, layer: usize, m: Tensor) -> Result<Tensor, ModelError> {
        let out = [self.outside.contains(&Component::Mlp { layer })];
        let (moved, diff) = self.moved_outside(&m, &self.values.mlp[layer], &out)?;
        let v = self.var_like(&moved)?;
        let out = (moved + v.as_tensor())?;
        self.mlp[layer] = Some((diff, v));
        Ok(out)
    }

    fn attn_inputs(&mut self, layer: usize, x: &Tensor) -> Result<Vec<ReceiverInput>, ModelError> {
        if !self.with_receivers {
            return Ok(vec![]);
        }
        let (h, kv, per_query) = self.heads;
        let one = Tensor::ones((1, 1, 1, 1), self.dtype, x.device())?;
        let zero = one.zeros_like()?;
        let mut out = vec![];
        for which in [Qkv::Q, Qkv::K, Qkv::V] {
            let (n, pq) = match which {
                Qkv::Q => (h, false),
                _ if per_query => (h, true),
                _ => (kv, false),
            };
            for index in 0..n {
                let r = Receiver::Attn {
                    layer,
                    index,
                    which,
                };
                out.push(ReceiverInput {
                    which,
                    index,
                    per_query: pq,
                    input: self.receiver(r, x)?,
                    keep: zero.clone(),
                    put: one.clone(),
                });
            }
        }
        Ok(out)
    }

    fn mlp_input(&mut self, layer: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        if !self.with_receivers {
            return Ok(x.clone());
        }
        self.receiver(Receiver::Mlp { layer }, x)
    }

    fn mlp_replaced(&self, _layer: usize) -> bool {
        false
    }

    fn heads_replaced(&self, _layer: usize) -> bool {
        false
    }

    fn kv(&mut self, _layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor), ModelError> {
        Ok((k, v))
    }

    fn pattern(&mut self, _layer: usize, _probs: &Tensor) -> Result<(), ModelError> {
        Ok(())
    }
}

/// The recorded difference and variable of a hook every block calls.
fn taken(o: &Option<(Tensor, Var)>) -> Result<&(Tensor, Var), ModelError> {
    o.as_ref()
        .ok_or_else(|| ModelError::InvalidRequest("a block skipped a hook".into()))
}

/// `sum(a * b)` over every element, in f64.
fn dot(a: &Tensor, b: &Tensor) -> Result<f64, ModelError> {
    Ok((a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

impl HookedModel {
    /// Runs one differentiated pass of `pass`, with `metric` (a scalar of the selected logits,
    /// f32) as the function differentiated.
    pub fn attribution_pass(
        &self,
        pass: &AttributionPass<'_>,
        metric: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<AttributionSums, ModelError> {
        let info = &self.info;
        let (b, t) = pass.ids.dims2()?;
        let dtype = info.dtype;
        let _grad = Differentiable::on();
        let mask = super::edges::position_mask(pass.positions.as_deref(), t, dtype, &self.device)?;
        for (what, first) in [("embed", pass.values.embed.dim(0)?)]
            .into_iter()
            .chain(pass.values.z.iter().map(|z| ("z", z.dim(0).unwrap_or(0))))
        {
            if first != 1 && first != b {
                return Err(ModelError::InvalidRequest(format!(
                    "ablation value `{what}` has {first} rows for a pass of {b} prompts"
                )));
            }
        }
        let shape = pass.graph.unwrap_or_else(|| info.graph_shape());
        let per_query = shape.kv_per_query && info.n_kv_heads < info.n_heads;
        let mut hooks = GradHooks {
            values: pass.values,
            coefficient: pass.coefficient,
            mask,
            dtype,
            with_receivers: pass.graph.is_some(),
            heads: (info.n_heads, info.n_kv_heads, per_query),
            z: vec![None; info.n_layers],
            mlp: vec![None; info.n_layers],
            receivers: BTreeMap::new(),
            outside: pass.outside,
        };
        let x0 = self.blocks.embed(&pass.ids, 0)?;
        let (x, embed_diff) = hooks.moved(&x0, &pass.values.embed)?;
        let embed_var = hooks.var_like(&x)?;
        let mut x = (x + embed_var.as_tensor())?;
        let ctx = self.seq_ctx(t)?;
        for layer in 0..info.n_layers {
            x = self.blocks.block(layer, &x, &ctx, &mut hooks)?;
        }
        if pass.graph.is_some() {
            x = hooks.receiver(Receiver::Logits, &x)?;
        }
        let logits = self.logits(&x, &pass.logits)?.ok_or_else(|| {
            ModelError::InvalidRequest("attribution needs logits for its metric".into())
        })?;
        let m = metric(&logits)?;
        let value = m.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = m.backward()?;
        let grad = |v: &Var| -> Result<Tensor, ModelError> {
            Ok(match grads.get(v.as_tensor()) {
                Some(g) => g.clone(),
                // Nothing downstream of it reaches the metric.
                None => v.as_tensor().zeros_like()?,
            })
        };
        // Node sums, and each sender's write difference for the edges.
        let h = info.n_heads;
        let mut node_sums: BTreeMap<Sender, f64> = BTreeMap::new();
        node_sums.insert(Sender::Embed, dot(&embed_diff, &grad(&embed_var)?)?);
        let mut writes: BTreeMap<Sender, Tensor> = BTreeMap::new();
        let flat = |x: &Tensor| x.flatten_all();
        writes.insert(Sender::Embed, flat(&embed_diff)?);
        for layer in 0..info.n_layers {
            let (zd, zv) = taken(&hooks.z[layer])?;
            let g = grad(zv)?;
            for head in 0..h {
                let d = zd.narrow(2, head, 1)?.squeeze(2)?.contiguous()?;
                let head_sender = Sender::Node(Component::Head { layer, head });
                node_sums.insert(head_sender, dot(&d, &g.narrow(2, head, 1)?.squeeze(2)?)?);
                if pass.graph.is_some() {
                    let w = self.blocks.head_out(layer, head, &d)?;
                    writes.insert(head_sender, flat(&w)?);
                }
            }
            let (md, mv) = taken(&hooks.mlp[layer])?;
            let mlp_sender = Sender::Node(Component::Mlp { layer });
            node_sums.insert(mlp_sender, dot(md, &grad(mv)?)?);
            writes.insert(mlp_sender, flat(md)?);
        }
        let nodes = GraphShape {
            embed: true,
            ..shape
        }
        .senders()
        .iter()
        .map(|s| node_sums[s])
        .collect();
        let Some(graph) = pass.graph else {
            return Ok(AttributionSums {
                edges: vec![],
                nodes,
                metric: value,
            });
        };
        let edges = edge_sums(&graph, &writes, &hooks.receivers, &grad)?;
        Ok(AttributionSums {
            edges,
            nodes,
            metric: value,
        })
    }
}

/// Per edge of `graph`, the sum of the sender's write difference times the receiver's
/// gradient: every sender against a block of receivers in one product.
fn edge_sums(
    graph: &GraphShape,
    writes: &BTreeMap<Sender, Tensor>,
    receivers: &BTreeMap<Receiver, Var>,
    grad: &dyn Fn(&Var) -> Result<Tensor, ModelError>,
) -> Result<Vec<f64>, ModelError> {
    let senders = graph.senders();
    let product_dtype = match writes.values().next().map(Tensor::dtype) {
        Some(DType::F64) => DType::F64,
        _ => DType::F32,
    };
    let rows = senders
        .iter()
        .map(|s| {
            writes
                .get(s)
                .ok_or_else(|| ModelError::InvalidRequest(format!("no write of sender {s}")))?
                .to_dtype(product_dtype)?
                .unsqueeze(0)
                .map_err(ModelError::from)
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let s = Tensor::cat(&rows, 0)?;
    let sender_row: BTreeMap<Sender, usize> =
        senders.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let all = graph.receivers();
    let mut by_receiver: BTreeMap<Receiver, Vec<f64>> = BTreeMap::new();
    // Blocks of receivers bound the memory of the stacked gradients.
    for block in all.chunks(64) {
        let cols = block
            .iter()
            .map(|r| {
                let v = receivers.get(r).ok_or_else(|| {
                    ModelError::InvalidRequest(format!("receiver {r} had no input variable"))
                })?;
                Ok(grad(v)?
                    .flatten_all()?
                    .to_dtype(product_dtype)?
                    .unsqueeze(0)?)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let g = Tensor::cat(&cols, 0)?;
        // [senders, receivers of the block]
        let p = s.matmul(&g.t()?)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for (j, r) in block.iter().enumerate() {
            by_receiver.insert(*r, p.iter().map(|row| row[j]).collect());
        }
    }
    Ok(graph
        .edges()
        .iter()
        .map(|e| by_receiver[&e.receiver][sender_row[&e.sender]])
        .collect())
}
