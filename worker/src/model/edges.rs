//! Edge interventions: in variant `v`, receiver `r` reads the residual stream
//! minus `sum_s (out_s - abl_s)` over the senders `s` whose edge into `r` is ablated, where
//! `out_s` is what `s` wrote in this very pass and `abl_s` its ablated value (both as written
//! into the residual stream: a head through its slice of the output projection, bias excluded).
//!
//! Many edges run in one pass. Each variant keeps a block of rows in one tensor, one row per
//! sender it ablates (the sender's write minus its ablated write, over every position); a
//! receiver's delta in a variant is the sum of its senders' rows. A variant that touches no
//! receiver of a layer adds nothing there, and every other row of the batch is computed as
//! usual, bit for bit.

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
    /// Touched receivers by layer (`n_layers`: the logits).
    touched: Vec<Vec<Touched>>,
    /// Per layer, per touched receiver, per variant: the rows (senders) whose sum is the
    /// receiver's delta, in row order.
    feeds: Vec<Vec<Vec<Vec<usize>>>>,
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
            }
            // Rows in sender order, whatever the order of the edges: a receiver's delta sums
            // its senders in that order, so it is the same number in any pass that ablates
            // the same edges into it.
            let own: BTreeMap<Sender, usize> = es
                .iter()
                .map(|e| e.sender)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .enumerate()
                .map(|(row, s)| (s, row))
                .collect();
            for e in es {
                per_variant[vi]
                    .entry(e.receiver)
                    .or_default()
                    .push(own[&e.sender]);
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
        let feeds: Vec<Vec<Vec<Vec<usize>>>> = touched
            .iter()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        per_variant
                            .iter()
                            .zip(&blocks_of)
                            .map(|(recv, &(first, _))| {
                                let mut rows: Vec<usize> = recv
                                    .get(&t.receiver)
                                    .map_or(vec![], |rs| rs.iter().map(|r| first + r).collect());
                                rows.sort_unstable();
                                rows.dedup();
                                rows
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let dtype = info.dtype;
        let width = prompts * seq_len * info.d_model;
        let rows = Tensor::zeros((next.max(1), width), dtype, device)?;
        let positions = position_mask(iv.positions.as_deref(), seq_len, dtype, device)?;
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
            touched,
            feeds,
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

    /// The delta of touched receiver `ri` of `layer` as `[V * prompts, T, d]`, trailing
    /// positions as in `like`: per variant, the sum of its senders' rows added one by one in
    /// row order, so that it depends on nothing else in the pass (which receivers other
    /// variants touch, which other senders this variant ablates).
    fn delta_of(&self, layer: usize, ri: usize, like: &Tensor) -> Result<Tensor, ModelError> {
        let width = self.prompts * self.seq_len * self.d_model;
        let d = match self.sum_rows_on_cpu(&self.feeds[layer][ri], width)? {
            Some(d) => d,
            None => self.sum_rows(&self.feeds[layer][ri], width)?,
        };
        let d = d.reshape((self.n_variants * self.prompts, self.seq_len, self.d_model))?;
        let t = like.dim(1)?;
        Ok(if t < self.seq_len {
            d.narrow(1, self.seq_len - t, t)?.contiguous()?
        } else {
            d
        })
    }

    /// Per variant, the sum of the rows `feeds[v]` (zeros for none), `[V, width]`.
    fn sum_rows(&self, feeds: &[Vec<usize>], width: usize) -> Result<Tensor, ModelError> {
        let mut zero: Option<Tensor> = None;
        let per_variant = feeds
            .iter()
            .map(|rows| {
                let Some((&first, rest)) = rows.split_first() else {
                    let z = match &zero {
                        Some(z) => z.clone(),
                        None => Tensor::zeros((1, width), self.dtype, self.rows.device())?,
                    };
                    zero = Some(z.clone());
                    return Ok(z);
                };
                // Summed in f32 whatever the model's dtype (many senders may feed a receiver).
                let row = |r: usize| self.rows.narrow(0, r, 1)?.to_dtype(DType::F32);
                let mut sum = row(first)?;
                for &r in rest {
                    sum = (sum + row(r)?)?;
                }
                Ok(sum.to_dtype(self.dtype)?)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Tensor::cat(&per_variant, 0)?)
    }

    /// [`EdgeState::sum_rows`] for f32 rows on the CPU, added in place over the rows' own
    /// memory (the same additions in the same order, so the same bits): a receiver fed by a
    /// thousand ablated edges would otherwise allocate a thousand tensors. `None` elsewhere.
    fn sum_rows_on_cpu(
        &self,
        feeds: &[Vec<usize>],
        width: usize,
    ) -> Result<Option<Tensor>, ModelError> {
        if self.dtype != DType::F32 || !self.rows.device().is_cpu() || !self.rows.is_contiguous() {
            return Ok(None);
        }
        let (storage, layout) = self.rows.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Ok(None);
        };
        let rows = &cpu.as_slice::<f32>()?[layout.start_offset()..];
        let mut out = vec![0f32; feeds.len() * width];
        let sum = |dst: &mut [f32], feed: &[usize]| {
            let Some((&first, rest)) = feed.split_first() else {
                return;
            };
            dst.copy_from_slice(&rows[first * width..(first + 1) * width]);
            for &r in rest {
                for (d, s) in dst.iter_mut().zip(&rows[r * width..(r + 1) * width]) {
                    *d += s;
                }
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = feeds.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (dst, fs) in out.chunks_mut(per * width).zip(feeds.chunks(per)) {
                let sum = &sum;
                scope.spawn(move || {
                    for (d, f) in dst.chunks_mut(width).zip(fs) {
                        sum(d, f);
                    }
                });
            }
        });
        drop(storage);
        Ok(Some(Tensor::from_vec(
            out,
            (feeds.len(), width),
            self.rows.device(),
        )?))
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
        let mut out = vec![];
        for (ri, t) in ts.iter().enumerate() {
            let Receiver::Attn { index, which, .. } = t.receiver else {
                continue;
            };
            let input = match &t.input {
                Some(given) => self.given(given, x)?,
                None => (x - self.delta_of(layer, ri, x)?)?,
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
            // Rows of untouched variants subtract exact zeros: they equal `x` bit for bit.
            None => Ok((x - self.delta_of(layer, ri, x)?)?),
        }
    }
}

/// `[1, seq_len, 1]`: 1 at `positions` (where edges are ablated), or `None` for every position.
pub(crate) fn position_mask(
    positions: Option<&[usize]>,
    seq_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    let Some(ps) = positions else {
        return Ok(None);
    };
    let mut m = vec![0f32; seq_len];
    for &p in ps {
        *m.get_mut(p).ok_or_else(|| {
            ModelError::InvalidRequest(format!(
                "edge position {p} is outside the {seq_len} positions"
            ))
        })? = 1.0;
    }
    Ok(Some(
        Tensor::from_vec(m, (1, seq_len, 1), device)?.to_dtype(dtype)?,
    ))
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
