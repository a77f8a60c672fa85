//! Edge interventions: in variant `v`, receiver `r` reads the residual stream
//! minus `sum_s (out_s - abl_s)` over the senders `s` whose edge into `r` is ablated, where
//! `out_s` is what `s` wrote in this very pass and `abl_s` its ablated value (both as written
//! into the residual stream: a head through its slice of the output projection, bias excluded).
//!
//! Many edges run in one pass. Each variant keeps a block of rows in one tensor, one row per
//! sender it ablates (the sender's write minus its ablated write, over every position); the
//! deltas of a layer's receivers are one small matmul per variant, `mask [receivers, senders] x
//! rows [senders, positions * d_model]`. A variant that touches no receiver of a layer adds
//! nothing there, and every other row of the batch is computed as usual, bit for bit.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, GraphShape, Qkv, Receiver, Sender};

use super::activations::Activations;
use super::hooks::Interventions;
use super::{Blocks, ModelError, ModelInfo};

/// A receiver input that differs from the residual stream in some variants.
pub(crate) struct ReceiverInput {
    /// Which input of which head.
    pub which: Qkv,
    /// Head index: the query head for `Q`, and for `K` and `V` the query head when
    /// `per_query`, else the key/value head.
    pub index: usize,
    /// A key or value input of one query head where query heads share key/value heads: the
    /// attention gives that head alone keys (values) computed from this input.
    pub per_query: bool,
    /// The input for every row of the batch (`[rows, T, d]`).
    pub input: Tensor,
    /// Per variant, 1 where the usual value is kept (`[V, 1, 1, 1]`).
    pub keep: Tensor,
    /// Per variant, 1 where the recomputed value is used.
    pub put: Tensor,
}

/// A receiver touched by some variant at one layer.
struct Touched {
    receiver: Receiver,
    /// Variants that ablate an edge into it (or all, for an input override).
    variants: Vec<usize>,
    /// Input given for every variant instead of the residual stream.
    input: Option<Tensor>,
}

/// Runtime state of the edge interventions of one pass.
pub(crate) struct EdgeState<'a> {
    values: &'a Activations,
    blocks: &'a dyn Blocks,
    /// Key and value receivers are per query head, and the model groups query heads.
    kv_per_query: bool,
    n_variants: usize,
    prompts: usize,
    seq_len: usize,
    d_model: usize,
    dtype: DType,
    /// Senders some variant ablates an edge from, with the rows they write: `(variant, row)`.
    senders: BTreeMap<Sender, Vec<(usize, usize)>>,
    /// Per variant, its first row and its number of rows.
    blocks_of: Vec<(usize, usize)>,
    /// Touched receivers by layer (`n_layers`: the logits).
    touched: Vec<Vec<Touched>>,
    /// Per layer, per variant: the mask `[touched receivers, variant's rows]`, if the variant
    /// touches any receiver there.
    masks: Vec<Vec<Option<Tensor>>>,
    /// Sender rows `[rows, T * d]`, filled as senders are computed.
    rows: Tensor,
    /// `[1, T, 1]`: 1 at the positions where edges are ablated.
    positions: Option<Tensor>,
}

impl<'a> EdgeState<'a> {
    /// Plans the edges of the variants (`edges[v]`: ablated in variant `v`), the given receiver
    /// deltas and input overrides of `iv`, and writes the rows of senders below `start_layer`
    /// from `iv.cached` activations.
    pub fn new(
        info: &ModelInfo,
        blocks: &'a dyn Blocks,
        iv: &Interventions<'a>,
        edges: &[Vec<Edge>],
        start_layer: usize,
        (prompts, seq_len): (usize, usize),
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (values, inputs, cached) = (iv.values, &iv.inputs, iv.cached);
        let n_layers = info.n_layers;
        let v = edges.len();
        if !iv.deltas.is_empty() && iv.deltas.len() != v {
            return Err(ModelError::InvalidRequest(format!(
                "{} receiver delta sets for {v} variants",
                iv.deltas.len()
            )));
        }
        let shape = GraphShape {
            kv_per_query: iv.kv_per_query,
            ..info.graph_shape()
        };
        let mut senders: BTreeMap<Sender, Vec<(usize, usize)>> = BTreeMap::new();
        let mut blocks_of = Vec::with_capacity(v);
        // Per variant: sender -> row within the variant's block; receiver -> senders.
        let mut per_variant: Vec<BTreeMap<Receiver, Vec<usize>>> = vec![BTreeMap::new(); v];
        // Rows given as they are (path patching): (row, delta).
        let mut given: Vec<(usize, &Tensor)> = vec![];
        let mut next = 0;
        for (vi, es) in edges.iter().enumerate() {
            let mut own: BTreeMap<Sender, usize> = BTreeMap::new();
            for e in es {
                shape
                    .check(e)
                    .map_err(|err| ModelError::InvalidRequest(err.to_string()))?;
                let rl = e.receiver.layer(n_layers);
                if rl < start_layer {
                    return Err(ModelError::InvalidRequest(format!(
                        "variant {vi} ablates {e}, whose receiver is below the start layer \
                         {start_layer}"
                    )));
                }
                let k = own.len();
                let row = *own.entry(e.sender).or_insert(k);
                per_variant[vi].entry(e.receiver).or_default().push(row);
            }
            for (s, row) in &own {
                senders.entry(*s).or_default().push((vi, next + row));
            }
            let mut n_rows = own.len();
            for (r, delta) in iv.deltas.get(vi).map_or(&[][..], Vec::as_slice) {
                if r.layer(n_layers) < start_layer {
                    return Err(ModelError::InvalidRequest(format!(
                        "variant {vi} gives {r} a delta below the start layer {start_layer}"
                    )));
                }
                per_variant[vi].entry(*r).or_default().push(n_rows);
                given.push((next + n_rows, delta));
                n_rows += 1;
            }
            blocks_of.push((next, n_rows));
            next += n_rows;
        }
        let mut touched: Vec<Vec<Touched>> = (0..=n_layers).map(|_| vec![]).collect();
        let mut index: BTreeMap<Receiver, usize> = BTreeMap::new();
        for (vi, recv) in per_variant.iter().enumerate() {
            for r in recv.keys() {
                let l = r.layer(n_layers);
                let i = *index.entry(*r).or_insert_with(|| {
                    touched[l].push(Touched {
                        receiver: *r,
                        variants: vec![],
                        input: None,
                    });
                    touched[l].len() - 1
                });
                touched[l][i].variants.push(vi);
            }
        }
        for (r, t) in inputs {
            let l = r.layer(n_layers);
            if l < start_layer {
                return Err(ModelError::InvalidRequest(format!(
                    "an input of {r} is given, below the start layer {start_layer}"
                )));
            }
            if index.contains_key(r) {
                return Err(ModelError::InvalidRequest(format!(
                    "{r} has both an input override and ablated edges"
                )));
            }
            touched[l].push(Touched {
                receiver: *r,
                variants: (0..v).collect(),
                input: Some(t.to_dtype(info.dtype)?),
            });
        }
        let dtype = info.dtype;
        let mut masks: Vec<Vec<Option<Tensor>>> = vec![vec![None; v]; n_layers + 1];
        for (l, ts) in touched.iter().enumerate() {
            for (vi, recv) in per_variant.iter().enumerate() {
                let (_, n_rows) = blocks_of[vi];
                let mut m = vec![0f32; ts.len() * n_rows];
                let mut any = false;
                for (ri, t) in ts.iter().enumerate() {
                    if let Some(rows) = recv.get(&t.receiver) {
                        for &row in rows {
                            m[ri * n_rows + row] = 1.0;
                            any = true;
                        }
                    }
                }
                if any {
                    masks[l][vi] =
                        Some(Tensor::from_vec(m, (ts.len(), n_rows), device)?.to_dtype(dtype)?);
                }
            }
        }
        let width = prompts * seq_len * info.d_model;
        let rows = Tensor::zeros((next.max(1), width), dtype, device)?;
        let positions = match iv.positions.as_deref() {
            None => None,
            Some(ps) => {
                let mut m = vec![0f32; seq_len];
                for &p in ps {
                    *m.get_mut(p).ok_or_else(|| {
                        ModelError::InvalidRequest(format!(
                            "edge position {p} is outside the {seq_len} positions"
                        ))
                    })? = 1.0;
                }
                Some(Tensor::from_vec(m, (1, seq_len, 1), device)?.to_dtype(dtype)?)
            }
        };
        let mut st = EdgeState {
            values,
            blocks,
            kv_per_query: iv.kv_per_query && info.n_kv_heads < info.n_heads,
            n_variants: v,
            prompts,
            seq_len,
            d_model: info.d_model,
            dtype,
            senders,
            blocks_of,
            touched,
            masks,
            rows,
            positions,
        };
        for (row, delta) in given {
            let r = st.as_row(&delta.to_dtype(dtype)?)?;
            st.rows.slice_set(&r, 0, row)?;
        }
        // Senders below the start are not computed in this pass: their writes are the
        // unpatched run's (nothing below the start differs from it).
        let below: Vec<Sender> = st
            .senders
            .keys()
            .copied()
            .filter(|s| match s.layer() {
                None => start_layer > 0,
                Some(l) => l < start_layer,
            })
            .collect();
        if !below.is_empty() {
            let cached = cached.ok_or_else(|| {
                ModelError::InvalidRequest(format!(
                    "edges from {} start below the start layer {start_layer}: the unpatched \
                     run's activations are needed",
                    below[0]
                ))
            })?;
            for s in below {
                let out = match s {
                    Sender::Embed => cached.embed.clone(),
                    Sender::Node(Component::Head { layer, head }) => {
                        head_slice(&cached.z[layer], head)?
                    }
                    Sender::Node(Component::Mlp { layer }) => cached.mlp[layer].clone(),
                };
                st.write_shared(s, &out)?;
            }
        }
        Ok(st)
    }

    /// Whether variant rows of a sender are wanted.
    fn uses(&self, s: Sender) -> Option<&Vec<(usize, usize)>> {
        self.senders.get(&s)
    }

    /// The sender's write minus its ablated write, as written into the residual stream
    /// (`[rows, T', d]`; `out` has whole variants of `prompts` rows).
    fn delta(&self, s: Sender, out: &Tensor) -> Result<Tensor, ModelError> {
        let t = out.dim(1)?;
        let trailing = |v: &Tensor| -> candle_core::Result<Tensor> {
            let tv = v.dim(1)?;
            if tv > t {
                v.narrow(1, tv - t, t)
            } else {
                Ok(v.clone())
            }
        };
        Ok(match s {
            Sender::Embed => sub_rows(out, &trailing(&self.values.embed)?)?,
            Sender::Node(Component::Head { layer, head }) => {
                let abl = trailing(&head_slice(&self.values.z[layer], head)?)?;
                self.blocks.head_out(layer, head, &sub_rows(out, &abl)?)?
            }
            Sender::Node(Component::Mlp { layer }) => {
                sub_rows(out, &trailing(&self.values.mlp[layer])?)?
            }
        })
    }

    /// Writes one row per variant of a sender whose output is the same in every variant
    /// (`[1 | prompts, T, ..]`, from the unpatched run).
    fn write_shared(&mut self, s: Sender, out: &Tensor) -> Result<(), ModelError> {
        let Some(uses) = self.uses(s).cloned() else {
            return Ok(());
        };
        let out = if out.dim(0)? == 1 && self.prompts > 1 {
            let mut dims = out.dims().to_vec();
            dims[0] = self.prompts;
            out.broadcast_as(dims)?.contiguous()?
        } else {
            out.clone()
        };
        let row = self.as_row(&self.delta(s, &out)?)?;
        for (_, r) in uses {
            self.rows.slice_set(&row, 0, r)?;
        }
        Ok(())
    }

    /// `[prompts, T', d]` as one row `[1, T * d]`, zero-padded at the front to `T` positions,
    /// zero at positions where edges are not ablated.
    fn as_row(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let t = x.dim(1)?;
        let x = if t < self.seq_len {
            x.pad_with_zeros(1, self.seq_len - t, 0)?
        } else {
            x.clone()
        };
        let x = match &self.positions {
            Some(m) => x.broadcast_mul(m)?,
            None => x,
        };
        Ok(x.contiguous()?
            .reshape((1, self.prompts * self.seq_len * self.d_model))?
            .to_dtype(self.dtype)?)
    }

    /// Records what the heads of `layer` wrote in this pass (`z`: `[V * prompts, T', H, dh]`).
    pub fn written_heads(&mut self, layer: usize, z: &Tensor) -> Result<(), ModelError> {
        let heads: Vec<Sender> = self
            .senders
            .keys()
            .copied()
            .filter(|s| matches!(s, Sender::Node(c @ Component::Head { .. }) if c.layer() == layer))
            .collect();
        for h in heads {
            if let Sender::Node(Component::Head { head, .. }) = h {
                self.write_rows(h, &head_slice(z, head)?)?;
            }
        }
        Ok(())
    }

    /// Records what the embedding or an MLP wrote in this pass (`[V * prompts, T', d]`).
    pub fn written(&mut self, s: Sender, out: &Tensor) -> Result<(), ModelError> {
        self.write_rows(s, out)
    }

    fn write_rows(&mut self, s: Sender, out: &Tensor) -> Result<(), ModelError> {
        let Some(uses) = self.uses(s).cloned() else {
            return Ok(());
        };
        let p = self.prompts;
        // Only the rows of the variants that use the sender.
        let idx: Vec<u32> = uses
            .iter()
            .flat_map(|&(v, _)| (v * p..(v + 1) * p).map(|i| i as u32))
            .collect();
        let idx = Tensor::new(idx.as_slice(), out.device())?;
        let sel = out.index_select(&idx, 0)?;
        let delta = self.delta(s, &sel)?;
        for (k, &(_, r)) in uses.iter().enumerate() {
            let row = self.as_row(&delta.narrow(0, k * p, p)?)?;
            self.rows.slice_set(&row, 0, r)?;
        }
        Ok(())
    }

    /// Deltas of the touched receivers of `layer`, `[V, receivers, T * d]`.
    fn deltas(&self, layer: usize) -> Result<Option<Tensor>, ModelError> {
        let ts = &self.touched[layer];
        if ts.iter().all(|t| t.input.is_some()) {
            return Ok(None);
        }
        let width = self.prompts * self.seq_len * self.d_model;
        let zeros = Tensor::zeros((ts.len(), width), self.dtype, self.rows.device())?;
        let per_variant = (0..self.n_variants)
            .map(|v| match &self.masks[layer][v] {
                Some(m) => {
                    let (first, n) = self.blocks_of[v];
                    Ok(m.matmul(&self.rows.narrow(0, first, n)?)?)
                }
                None => Ok(zeros.clone()),
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Some(Tensor::stack(&per_variant, 0)?))
    }

    /// Receiver `ri`'s delta as `[V * prompts, T, d]`, trailing positions as in `like`.
    fn delta_of(&self, all: &Tensor, ri: usize, like: &Tensor) -> Result<Tensor, ModelError> {
        let d = all.narrow(1, ri, 1)?.reshape((
            self.n_variants * self.prompts,
            self.seq_len,
            self.d_model,
        ))?;
        let t = like.dim(1)?;
        Ok(if t < self.seq_len {
            d.narrow(1, self.seq_len - t, t)?.contiguous()?
        } else {
            d
        })
    }

    /// The given input of a receiver, broadcast to every row.
    fn given(&self, input: &Tensor, like: &Tensor) -> Result<Tensor, ModelError> {
        let (rows, t, d) = like.dims3()?;
        let ti = input.dim(1)?;
        let input = if ti > t {
            input.narrow(1, ti - t, t)?
        } else {
            input.clone()
        };
        let p = input.dim(0)?;
        Ok(input
            .unsqueeze(0)?
            .broadcast_as((rows / p, p, t, d))?
            .reshape((rows, t, d))?
            .contiguous()?)
    }

    /// Per-variant keep / put masks `[V, 1, 1, 1]` for a receiver.
    fn keep_put(&self, t: &Touched, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
        let mut put = vec![0f32; self.n_variants];
        for &v in &t.variants {
            put[v] = 1.0;
        }
        let keep: Vec<f32> = put.iter().map(|p| 1.0 - p).collect();
        let shape = (self.n_variants, 1, 1, 1);
        Ok((
            Tensor::from_vec(keep, shape, device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(put, shape, device)?.to_dtype(self.dtype)?,
        ))
    }

    /// Inputs of the attention receivers of `layer` that differ from `x`.
    pub fn attn_inputs(&self, layer: usize, x: &Tensor) -> Result<Vec<ReceiverInput>, ModelError> {
        let ts = &self.touched[layer];
        if !ts
            .iter()
            .any(|t| matches!(t.receiver, Receiver::Attn { .. }))
        {
            return Ok(vec![]);
        }
        let all = self.deltas(layer)?;
        let mut out = vec![];
        for (ri, t) in ts.iter().enumerate() {
            let Receiver::Attn { index, which, .. } = t.receiver else {
                continue;
            };
            let input = match (&t.input, &all) {
                (Some(given), _) => self.given(given, x)?,
                (None, Some(all)) => (x - self.delta_of(all, ri, x)?)?,
                (None, None) => unreachable!("deltas exist when an edge is ablated"),
            };
            let (keep, put) = self.keep_put(t, x.device())?;
            out.push(ReceiverInput {
                which,
                index,
                per_query: which != Qkv::Q && self.kv_per_query,
                input,
                keep,
                put,
            });
        }
        Ok(out)
    }

    /// The input of the MLP of `layer`, or of the logits (`layer == n_layers`), given the
    /// residual stream `x` there.
    pub fn stream_input(&self, layer: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let ts = &self.touched[layer];
        let Some(ri) = ts
            .iter()
            .position(|t| matches!(t.receiver, Receiver::Mlp { .. } | Receiver::Logits))
        else {
            return Ok(x.clone());
        };
        let t = &ts[ri];
        match &t.input {
            Some(given) => self.given(given, x),
            None => {
                let all = self.deltas(layer)?.expect("an edge is ablated");
                // Rows of untouched variants subtract exact zeros: they equal `x` bit for bit.
                Ok((x - self.delta_of(&all, ri, x)?)?)
            }
        }
    }
}

/// `out - abl` where `out` has whole variants of `abl.dim(0)` rows (or `abl` has one row).
fn sub_rows(out: &Tensor, abl: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, p) = (out.dim(0)?, abl.dim(0)?);
    if p == 1 || p == rows {
        return out.broadcast_sub(abl);
    }
    let mut split = vec![rows / p, p];
    split.extend_from_slice(&out.dims()[1..]);
    out.reshape(split)?
        .broadcast_sub(&abl.unsqueeze(0)?)?
        .reshape(out.dims())
}

/// Head `head` of `z` (`[rows, T, H, dh]`) as `[rows, T, dh]`.
fn head_slice(z: &Tensor, head: usize) -> candle_core::Result<Tensor> {
    z.narrow(2, head, 1)?.squeeze(2)?.contiguous()
}

/// Replaces the columns of the touched attention receivers in the output `qkv` (`[rows, T,
/// C]`) of a fused projection `fused` that reads `norm(x)`: `col` gives a receiver's first
/// column. Rows of variants that do not touch a receiver keep their value bit for bit.
pub(crate) fn patch_qkv(
    qkv: Tensor,
    inputs: &[ReceiverInput],
    d_head: usize,
    col: impl Fn(Qkv, usize) -> usize,
    fused: &super::layers::Dense,
    norm: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor, ModelError> {
    let mut qkv = qkv;
    let (rows, t, _) = qkv.dims3()?;
    for r in inputs {
        let c = col(r.which, r.index);
        let new = super::layers::dense_cols(fused, &norm(&r.input)?, c, d_head)?;
        let old = qkv.narrow(2, c, d_head)?;
        let v = r.keep.dim(0)?;
        let split = (v, rows / v, t, d_head);
        let mixed = old
            .reshape(split)?
            .broadcast_mul(&r.keep)?
            .broadcast_add(&new.reshape(split)?.broadcast_mul(&r.put)?)?
            .reshape((rows, t, d_head))?;
        qkv = qkv.slice_assign(&[0..rows, 0..t, c..c + d_head], &mixed)?;
    }
    Ok(qkv)
}
