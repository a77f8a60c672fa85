//! The activations of every component, as a run captured them or as an ablation replaces them
//! (zeros, per-position means, paired activations).

use candle_core::{DType, Device, Tensor};

use super::{Captured, ModelError, ModelInfo};

/// The activations of every component (head outputs, MLP outputs, the embedding): the
/// replacements an ablation patches in, or a run's own activations kept for later passes.
///
/// Each tensor's first dimension is 1 (the same value for every prompt, e.g. a mean or zeros)
/// or the number of prompts (a paired activation, e.g. resample ablation).
#[derive(Debug, Clone)]
pub struct Activations {
    /// Per layer, `[1 | prompts, positions, n_heads, d_head]`.
    pub z: Vec<Tensor>,
    /// Per layer, `[1 | prompts, positions, d_model]`.
    pub mlp: Vec<Tensor>,
    /// The embedding (the `embed` sender of edges), `[1 | prompts, positions, d_model]`.
    pub embed: Tensor,
}

impl Activations {
    /// Zero ablation for sequences of `seq_len` positions.
    pub fn zeros(
        info: &ModelInfo,
        seq_len: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let z = Tensor::zeros((1, seq_len, info.n_heads, info.d_head), dtype, device)?;
        let m = Tensor::zeros((1, seq_len, info.d_model), dtype, device)?;
        Ok(Activations {
            z: vec![z; info.n_layers],
            mlp: vec![m.clone(); info.n_layers],
            embed: m,
        })
    }

    /// Replacement by captured activations (`Captured` from a pass with `z`, `mlp` and `resid`
    /// captured from layer 0): resample or denoising when the capture has one row per prompt, mean
    /// ablation after [`Activations::mean_over_prompts`].
    pub fn from_captured(c: &Captured) -> Result<Self, ModelError> {
        let take = |v: &[Option<Tensor>], what: &str| -> Result<Vec<Tensor>, ModelError> {
            v.iter()
                .enumerate()
                .map(|(l, t)| {
                    t.clone().ok_or_else(|| {
                        ModelError::InvalidRequest(format!("capture has no `{what}` for layer {l}"))
                    })
                })
                .collect()
        };
        let embed = c.resid.first().cloned().flatten().ok_or_else(|| {
            ModelError::InvalidRequest("capture has no `resid` at layer 0 (the embedding)".into())
        })?;
        Ok(Activations {
            z: take(&c.z, "z")?,
            mlp: take(&c.mlp, "mlp")?,
            embed,
        })
    }

    /// Per-position mean over prompts (mean ablation), keeping a leading dim of 1; accumulated
    /// in f32 whatever the model's dtype (see [`mean_f32`]).
    pub fn mean_over_prompts(&self) -> candle_core::Result<Self> {
        let mean = |ts: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
            ts.iter().map(|t| mean_f32(t, 0)).collect()
        };
        Ok(Activations {
            z: mean(&self.z)?,
            mlp: mean(&self.mlp)?,
            embed: mean_f32(&self.embed, 0)?,
        })
    }

    /// Zero ablation for sequences of `seq_len` positions in `model`'s dtype. With
    /// `fold_value_bias`, a head's output becomes its value bias instead (the attention
    /// pattern sums to 1, so `b_V` is the part of `z` that does not depend on the input:
    /// TransformerLens folds it into `b_O` and zeroes the rest).
    pub fn zero_for(
        model: &super::HookedModel,
        seq_len: usize,
        fold_value_bias: bool,
    ) -> Result<Self, ModelError> {
        let info = model.info();
        let mut a = Activations::zeros(info, seq_len, info.dtype, model.device())?;
        if fold_value_bias {
            for (l, z) in a.z.iter_mut().enumerate() {
                if let Some(b) = model.value_bias(l)? {
                    // [n_heads, d_head] to [1, seq_len, n_heads, d_head].
                    *z = b
                        .unsqueeze(0)?
                        .unsqueeze(0)?
                        .broadcast_as((1, seq_len, info.n_heads, info.d_head))?
                        .contiguous()?;
                }
            }
        }
        Ok(a)
    }
}

/// The mean of `t` over dimension `dim` (kept, as size 1), accumulated in f32 and returned in
/// `t`'s dtype: a bf16 or f16 sum of many rows loses most of its bits or overflows.
pub fn mean_f32(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let dtype = t.dtype();
    if dtype == DType::F32 || dtype == DType::F64 {
        return t.mean_keepdim(dim);
    }
    t.to_dtype(DType::F32)?.mean_keepdim(dim)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn half_precision_means_are_accumulated_in_f32() {
        let dev = Device::Cpu;
        for dtype in [DType::BF16, DType::F16] {
            let ones = Tensor::ones((1536, 3, 2), dtype, &dev).unwrap();
            let m = mean_f32(&ones, 0).unwrap();
            assert_eq!(m.dtype(), dtype);
            assert_eq!(m.dims(), &[1, 3, 2]);
            let v = values(&m);
            assert!(v.iter().all(|&x| x == 1.0), "{dtype:?}: {v:?}");
        }
        // A value whose half-precision sum overflows (f16 max is 65504).
        let big = Tensor::full(300f32, (1536, 1), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        assert_eq!(values(&mean_f32(&big, 0).unwrap()), [300.0]);
    }
}
