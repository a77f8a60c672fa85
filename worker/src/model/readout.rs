//! Reading the residual stream and single heads directly: the unembedding of any residual
//! vector (logit lens) and a head's OV circuit (its value and output projections).

use candle_core::{DType, Tensor};

use super::{HookedModel, ModelError, layers};

impl HookedModel {
    /// Logits `[rows, vocab]` (f32) of residual-stream vectors `x` (`[rows, d_model]`): the
    /// final norm, then the unembedding, as if `x` were the final block's output.
    pub fn unembed_resid(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let d = self.info.d_model;
        if x.rank() != 2 || x.dim(1)? != d {
            return Err(ModelError::InvalidRequest(format!(
                "residual vectors must be [rows, {d}], got {:?}",
                x.dims()
            )));
        }
        let h = self.blocks.final_norm(&x.to_dtype(self.info.dtype)?)?;
        let w = self.blocks.unembed().t()?;
        Ok(layers::by_rows(&h, w.dim(1)?, |r| r.matmul(&w))?.to_dtype(DType::F32)?)
    }

    /// What head `head` of `layer` writes (`[rows, d_model]`) when every position it attends
    /// to holds the residual vector `x` (`[rows, d_model]`): the attention's input norm, the
    /// head's value projection (its key/value head's, with grouped-query attention) and its
    /// slice of the output projection; the OV circuit of the paper's successor and copy scores.
    pub fn ov(&self, layer: usize, head: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let i = &self.info;
        if layer >= i.n_layers || head >= i.n_heads {
            return Err(ModelError::InvalidRequest(format!(
                "no head h{layer}.{head}: the model has {} layers of {} heads",
                i.n_layers, i.n_heads
            )));
        }
        if x.rank() != 2 || x.dim(1)? != i.d_model {
            return Err(ModelError::InvalidRequest(format!(
                "residual vectors must be [rows, {}], got {:?}",
                i.d_model,
                x.dims()
            )));
        }
        let kv_head = head / (i.n_heads / i.n_kv_heads);
        let x = x.to_dtype(i.dtype)?.unsqueeze(0)?;
        let v = self.blocks.value(layer, kv_head, &x)?;
        Ok(self.blocks.head_out(layer, head, &v)?.squeeze(0)?)
    }
}
