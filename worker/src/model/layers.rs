//! Building blocks shared by the architectures: norms, activations, rotary, attention.

use std::cell::Cell;

use candle_core::{D, DType, Tensor};
use candle_nn::{LayerNorm, Module, RmsNorm};

use super::seq_ctx::SeqCtx;
use crate::load_error::LoadError;
use crate::weights::WeightSource;

thread_local! {
    /// Whether this thread's passes are differentiated (see [`Differentiable`]).
    static DIFFERENTIABLE: Cell<bool> = const { Cell::new(false) };
}

/// While alive, forward passes on this thread run norms, softmax and rotary as compositions of
/// candle's differentiable ops: its fused kernels for them have no backward pass. Attribution
/// holds one around the passes it differentiates; every other pass keeps the fused kernels.
pub(crate) struct Differentiable {
    was: bool,
}

impl Differentiable {
    /// Turns differentiable passes on for this thread until dropped.
    pub fn on() -> Self {
        Differentiable {
            was: DIFFERENTIABLE.with(|d| d.replace(true)),
        }
    }
}

impl Drop for Differentiable {
    fn drop(&mut self) {
        DIFFERENTIABLE.with(|d| d.set(self.was));
    }
}

/// Whether to run norms, softmax and rotary as composed ops: in differentiated passes, and in
/// f64 (exact checks), which the fused kernels do not take.
fn composed(dtype: DType) -> bool {
    dtype == DType::F64 || DIFFERENTIABLE.with(Cell::get)
}

/// LayerNorm (mean removed, weight and bias) or RMSNorm (weight only), with its fused kernel
/// and, for differentiated passes, the same arithmetic in composed ops.
#[derive(Clone, Debug)]
pub(crate) struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    /// The norm of the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !composed(x.dtype()) {
            return match &self.bias {
                Some(b) => LayerNorm::new(self.weight.clone(), b.clone(), self.eps).forward(x),
                None => RmsNorm::new(self.weight.clone(), self.eps).forward(x),
            };
        }
        let dtype = x.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let x = match self.bias {
            Some(_) => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
            None => x,
        };
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x
            .broadcast_div(&(ms + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Applies rotary embedding to the first `cos.dim(1) * 2` features of each head of `x`
/// (`[B, H, T, d_head]`), leaving the rest as is (partial rotary, as in GPT-NeoX).
pub(crate) fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d_head = x.dim(D::Minus1)?;
    let rot = cos.dim(1)? * 2;
    let rope = if composed(x.dtype()) {
        candle_nn::rotary_emb::rope_slow
    } else {
        candle_nn::rotary_emb::rope
    };
    if rot == d_head {
        return rope(&x.contiguous()?, cos, sin);
    }
    let x_rot = x.narrow(D::Minus1, 0, rot)?.contiguous()?;
    let x_pass = x.narrow(D::Minus1, rot, d_head - rot)?;
    let x_rot = rope(&x_rot, cos, sin)?;
    Tensor::cat(&[&x_rot, &x_pass], D::Minus1)?.contiguous()
}

/// Causal softmax attention. `q`, `k`, `v` are `[B, H, T, d_head]` (`k`, `v` already repeated
/// for grouped-query attention); scores and softmax run in f32. Returns `z` as `[B, T, H, d_head]`
/// and the attention pattern `[B, H, T_q, T]` in f32.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let d_head = q.dim(D::Minus1)?;
    let scale = 1.0 / (d_head as f64).sqrt();
    let scores = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * scale)?;
    let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    let probs = if composed(scores.dtype()) {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let z = probs
        .to_dtype(v.dtype())?
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .contiguous()?;
    Ok((z, probs))
}

/// Keys or values of one query head computed from its own input (a key or value edge receiver
/// of that query head where query heads share key/value heads).
pub(crate) struct HeadKv {
    /// `K` or `V`.
    pub which: circuit_sweep_common::edge::Qkv,
    /// The query head.
    pub head: usize,
    /// Its keys (rotary applied) or values, `[B, 1, T, d_head]`.
    pub new: Tensor,
    /// Per variant, 1 where the shared key/value head's are kept (`[V, 1, 1, 1]`).
    pub keep: Tensor,
    /// Per variant, 1 where `new` is used.
    pub put: Tensor,
}

/// `x` (`[B, H, T, d]`) with query head `o.head` mixed per variant with `o.new`.
fn mix_head(x: Tensor, o: &HeadKv) -> candle_core::Result<Tensor> {
    let (b, _, t, d) = x.dims4()?;
    let v = o.keep.dim(0)?;
    let split = (v, b / v, 1, t, d);
    let keep = o.keep.unsqueeze(4)?;
    let put = o.put.unsqueeze(4)?;
    let old = x.narrow(1, o.head, 1)?;
    let mixed = old
        .reshape(split)?
        .broadcast_mul(&keep)?
        .broadcast_add(&o.new.reshape(split)?.broadcast_mul(&put)?)?
        .reshape((b, 1, t, d))?;
    x.contiguous()?
        .slice_assign(&[0..b, o.head..o.head + 1, 0..t, 0..d], &mixed)
}

/// The attention of block `layer`: keys and values of the input's positions (`[B, H_kv, T, d]`,
/// rotary applied) joined with the KV cache through `hooks`, repeated for grouped-query
/// attention, given per query head where `per_head` says so, and attended by the queries `q`;
/// the pattern goes to `hooks`. Returns `z`.
pub(crate) fn attention(
    layer: usize,
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    per_head: &[HeadKv],
    ctx: &SeqCtx,
    hooks: &mut dyn super::hooks::LayerHooks,
) -> Result<Tensor, super::ModelError> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let (k, v) = hooks.kv(layer, k, v)?;
    let (mut k, mut v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
    for o in per_head {
        match o.which {
            circuit_sweep_common::edge::Qkv::K => k = mix_head(k, o)?,
            _ => v = mix_head(v, o)?,
        }
    }
    let (z, probs) = attend(q, &k, &v, &ctx.mask)?;
    hooks.pattern(layer, &probs)?;
    Ok(z)
}

/// Repeats key/value heads `[B, H_kv, T, d]` to `[B, H_kv * n_rep, T, d]` (grouped-query).
pub(crate) fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, t, d))?
        .reshape((b, h * n_rep, t, d))
}

/// The MLP nonlinearities of the supported models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Parses a Hugging Face activation name; `None` if unsupported.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// A linear layer `y = x W^T + b`, its weight kept transposed (`Wᵀ`, `[in, out]`, contiguous):
/// the CPU matmul runs faster with a contiguous right side, ten times faster on a few rows
/// (`circuit-sweep bench matmul` prints both layouts). The layout decides whether the matmul
/// packs its right side, not the order of its sums, except on its small-product path (see
/// [`dense_cols`]), so the scores keep their last bits.
#[derive(Clone, Debug)]
pub(crate) struct Dense {
    wt: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// From `Wᵀ` (`[in, out]`) and the bias.
    fn from_t(wt: Tensor, bias: Option<Tensor>) -> Self {
        Dense { wt, bias }
    }

    /// `W` (`[out, in]`), a view of the stored transpose.
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        self.wt.t()
    }

    /// `Wᵀ` (`[in, out]`).
    pub fn weight_t(&self) -> &Tensor {
        &self.wt
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Output features.
    pub fn out_dim(&self) -> candle_core::Result<usize> {
        self.wt.dim(1)
    }

    /// `x W^T + b` for rows `x` (`[rows, in]`).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A linear layer `y = x W^T + b` with `W` stored as `[out, in]`.
pub(crate) fn linear(
    w: &dyn WeightSource,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
) -> Result<Dense, LoadError> {
    let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
    let wt = weight
        .t()
        .and_then(|t| t.contiguous())
        .map_err(|e| LoadError::tensor_op(prefix, e))?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out_dim])?)
    } else {
        None
    };
    Ok(Dense::from_t(wt, bias))
}

/// Several linear layers on the same input fused into one (outputs concatenated in order), so
/// one larger matmul replaces several small ones.
pub(crate) fn fuse(parts: &[Dense], what: &str) -> Result<Dense, LoadError> {
    let ws: Vec<&Tensor> = parts.iter().map(Dense::weight_t).collect();
    let wt = Tensor::cat(&ws, 1).map_err(|e| LoadError::tensor_op(what, e))?;
    let bias = if parts.iter().all(|l| l.bias().is_some()) {
        let bs: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias()).collect();
        Some(Tensor::cat(&bs, 0).map_err(|e| LoadError::tensor_op(what, e))?)
    } else if parts.iter().any(|l| l.bias().is_some()) {
        let zeros = |l: &Dense| -> candle_core::Result<Tensor> {
            match l.bias() {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.out_dim()?, l.wt.dtype(), l.wt.device()),
            }
        };
        let bs = parts
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>();
        let bs = bs.map_err(|e| LoadError::tensor_op(what, e))?;
        Some(Tensor::cat(&bs, 0).map_err(|e| LoadError::tensor_op(what, e))?)
    } else {
        None
    };
    Ok(Dense::from_t(wt, bias))
}

/// A linear layer stored as GPT-2's `Conv1D` (`W` as `[in, out]`: already the transpose).
pub(crate) fn conv1d(
    w: &dyn WeightSource,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
) -> Result<Dense, LoadError> {
    let wt = w.get(&format!("{prefix}.weight"), &[in_dim, out_dim])?;
    let bias = w.get(&format!("{prefix}.bias"), &[out_dim])?;
    Ok(Dense::from_t(wt, Some(bias)))
}

/// LayerNorm with weight and bias.
pub(crate) fn layer_norm(
    w: &dyn WeightSource,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> Result<Norm, LoadError> {
    let weight = w.get(&format!("{prefix}.weight"), &[dim])?;
    let bias = w.get(&format!("{prefix}.bias"), &[dim])?;
    Ok(Norm {
        weight,
        bias: Some(bias),
        eps,
    })
}

/// RMSNorm with weight.
pub(crate) fn rms_norm(
    w: &dyn WeightSource,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> Result<Norm, LoadError> {
    let weight = w.get(&format!("{prefix}.weight"), &[dim])?;
    Ok(Norm {
        weight,
        bias: None,
        eps,
    })
}

/// Fewest rows a matmul is run with. The CPU gemm takes a differently rounded path for a
/// handful of rows, so without padding a row's result would depend on how many other rows
/// (ablation variants, prompts) share its forward pass.
const MIN_ROWS: usize = 16;

/// The CPU gemm also takes its small-size path (which, among other things, splits a long sum
/// differently) while both rows and columns are at most this many: a product with this few
/// columns (a head's slice, a few logits) runs with more rows.
const SMALL_SIDE: usize = 64;

/// `f` (a map of rows `[rows, in] -> [rows, out]`) on the rows of `x` (`[.., in]`), padded with
/// zero rows to at least [`MIN_ROWS`] (more than [`SMALL_SIDE`] when `out` is at most that),
/// so every row's result is the same in any batch.
pub(crate) fn by_rows(
    x: &Tensor,
    out: usize,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let min_rows = if out <= SMALL_SIDE {
        SMALL_SIDE + 1
    } else {
        MIN_ROWS
    };
    let dims = x.dims().to_vec();
    let d_in = *dims.last().expect("at least one dim");
    let rows = x.elem_count() / d_in.max(1);
    let flat = x.reshape((rows, d_in))?;
    let y = if rows >= min_rows {
        f(&flat)?
    } else {
        let pad = Tensor::zeros((min_rows - rows, d_in), x.dtype(), x.device())?;
        f(&Tensor::cat(&[&flat, &pad], 0)?)?.narrow(0, 0, rows)?
    };
    let mut out = dims;
    *out.last_mut().expect("at least one dim") = y.dim(1)?;
    y.reshape(out)
}

/// A linear layer on `[.., in]` whose rows do not depend on the batch (see [`by_rows`]).
pub(crate) fn dense(l: &Dense, x: &Tensor) -> candle_core::Result<Tensor> {
    by_rows(x, l.out_dim()?, |r| l.forward(r))
}

/// Columns `start..start + len` of a linear layer on `x` (one head's slice of a fused
/// projection), rows independent of the batch like [`dense`].
pub(crate) fn dense_cols(
    l: &Dense,
    x: &Tensor,
    start: usize,
    len: usize,
) -> candle_core::Result<Tensor> {
    // `W`'s rows, contiguous, read transposed: a slice this narrow takes the matmul path a
    // `[out, in]` weight always took, so the scores keep their last bits.
    let w = l.wt.narrow(1, start, len)?.t()?.contiguous()?;
    let b = l.bias().map(|b| b.narrow(0, start, len)).transpose()?;
    dense(&Dense::from_t(w.t()?, b), x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_dense_layer_computes_x_w_transposed_plus_b_exactly() {
        let dev = Device::Cpu;
        let (out_dim, in_dim) = (96, 80);
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let l = Dense::from_t(wt, Some(b.clone()));
        assert_eq!(l.out_dim().unwrap(), out_dim);
        let fused = fuse(&[l.clone(), Dense::from_t(l.wt.clone(), None)], "test").unwrap();
        assert_eq!(fused.out_dim().unwrap(), 2 * out_dim);
        for rows in [1, 5, 16, 40] {
            let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap();
            // Whatever the layout, the products must agree to float rounding (the kernels may
            // block the sum differently); the zero bias of the second half adds nothing.
            let plain = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let diff = |a: &Tensor, b: &Tensor| -> f32 {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            assert!(diff(&dense(&l, &x).unwrap(), &plain) < 1e-4, "{rows} rows");
            let both = dense(&fused, &x).unwrap();
            assert_eq!(
                diff(
                    &both.narrow(1, 0, out_dim).unwrap(),
                    &dense(&l, &x).unwrap()
                ),
                0.0
            );
            let cols = dense_cols(&fused, &x, out_dim + 10, 7).unwrap();
            let want = plain
                .narrow(1, 10, 7)
                .unwrap()
                .broadcast_sub(&b.narrow(0, 10, 7).unwrap())
                .unwrap();
            assert!(diff(&cols, &want) < 1e-4, "{rows} rows, a slice of columns");
        }
    }
}
