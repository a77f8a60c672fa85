//! The forward pass shared by every architecture: start (tokens or cached residual), blocks with
//! hooks, and only the logits asked for.

use candle_core::{DType, IndexOp, Tensor};

use super::hooks::RunHooks;
use super::seq_ctx::SeqCtx;
use super::{HookedModel, LogitSelection, ModelError, RunOutput, RunRequest, Start};

impl HookedModel {
    /// Runs one batched forward pass as `req` describes.
    pub fn run(&self, req: &RunRequest<'_>) -> Result<RunOutput, ModelError> {
        let info = &self.info;
        let start = &req.start;
        let past = req.cache.map_or(0, |c| c.len());
        if req.cache.is_some()
            && req
                .interventions
                .as_ref()
                .is_some_and(|iv| !iv.edges.is_empty() || !iv.inputs.is_empty())
        {
            return Err(ModelError::InvalidRequest(
                "edge interventions do not run with a KV cache".into(),
            ));
        }
        let (start_layer, resid) = match start {
            Start::Tokens(ids) => {
                if ids.rank() != 2 {
                    return Err(ModelError::InvalidRequest(format!(
                        "token ids must be [prompts, positions], got {:?}",
                        ids.dims()
                    )));
                }
                (0, self.blocks.embed(ids, past)?)
            }
            Start::Resid { .. } if req.cache.is_some() => {
                return Err(ModelError::InvalidRequest(
                    "a pass with a KV cache starts from tokens".into(),
                ));
            }
            Start::Resid { layer, resid } => {
                if *layer > info.n_layers {
                    return Err(ModelError::InvalidRequest(format!(
                        "start layer {layer} is past the last block ({} layers)",
                        info.n_layers
                    )));
                }
                if resid.rank() != 3 || resid.dim(2)? != info.d_model {
                    return Err(ModelError::InvalidRequest(format!(
                        "cached residual must be [prompts, positions, {}], got {:?}",
                        info.d_model,
                        resid.dims()
                    )));
                }
                (*layer, resid.to_dtype(info.dtype)?)
            }
        };
        let (rows, seq_len, _) = resid.dims3()?;
        // Once a cache holds positions its rows are already variant-major.
        let expanded = past > 0;
        let n_variants = req
            .interventions
            .as_ref()
            .map_or(1, |iv| iv.variants.len().max(1));
        let prompts = if expanded {
            if req.cache.is_some_and(|c| c.rows() != rows) || !rows.is_multiple_of(n_variants) {
                return Err(ModelError::InvalidRequest(format!(
                    "{rows} token rows do not continue a KV cache of {} rows ({n_variants} variants)",
                    req.cache.map_or(0, |c| c.rows())
                )));
            }
            rows / n_variants
        } else {
            rows
        };
        let mut hooks = RunHooks::new(
            info,
            &*self.blocks,
            req.interventions.as_ref(),
            start_layer,
            (prompts, seq_len),
            req.capture,
            info.dtype,
            &self.device,
        )?;
        if let Some(c) = req.cache {
            hooks.set_cache(c);
        }
        let v = hooks.n_variants();
        let mut x = if v == 1 || expanded {
            resid
        } else {
            resid
                .unsqueeze(0)?
                .broadcast_as((v, rows, seq_len, info.d_model))?
                .reshape((v * rows, seq_len, info.d_model))?
        };
        if matches!(start, Start::Tokens(_)) {
            hooks.embedded(&x)?;
        }
        let ctx = if req.cache.is_some() {
            self.seq_ctx(past + seq_len)?.with_cache(seq_len)?
        } else {
            self.seq_ctx(seq_len)?
        };
        // Only the last position of the final block reaches last-position logits.
        let last_only = matches!(
            req.logits,
            LogitSelection::Last | LogitSelection::LastIds(_)
        ) && !req.capture.z
            && !req.capture.pattern
            && !req.capture.mlp
            && !req.capture.mlp_in;
        let final_ctx = if last_only {
            ctx.last_query()?
        } else {
            ctx.clone()
        };
        for layer in start_layer..info.n_layers {
            if req.capture.resid {
                hooks.captured.resid[layer] = Some(x.clone());
            }
            let c = if layer + 1 == info.n_layers {
                &final_ctx
            } else {
                &ctx
            };
            let _span = tracing::trace_span!("block", layer).entered();
            x = self.blocks.block(layer, &x, c, &mut hooks)?;
        }
        let x = hooks.logits_input(info.n_layers, x)?;
        if let Some(c) = req.cache {
            c.advance(seq_len);
        }
        let logits = {
            let _span = tracing::trace_span!("logits").entered();
            self.logits(&x, &req.logits)?
        };
        Ok(RunOutput {
            logits,
            captured: hooks.captured,
        })
    }

    /// The mask and rotary tables for `seq_len` positions, built once per length.
    pub(super) fn seq_ctx(&self, seq_len: usize) -> candle_core::Result<SeqCtx> {
        self.seq_ctxs
            .get_or_build(seq_len, |n| self.blocks.seq_ctx(n))
    }

    /// Full-vocabulary logits at the last position of each prompt (rows may differ in length:
    /// prompts are grouped by length and run `batch` at a time). Returns one row per prompt.
    pub fn last_logits(
        &self,
        rows: &[Vec<u32>],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, r) in rows.iter().enumerate() {
            by_len.entry(r.len()).or_default().push(i);
        }
        let mut out = vec![Vec::new(); rows.len()];
        for idx in by_len.values() {
            for chunk in idx.chunks(batch.max(1)) {
                let group: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
                let logits = self
                    .run(&RunRequest {
                        logits: LogitSelection::Last,
                        ..RunRequest::new(Start::Tokens(self.tokens(&group)?))
                    })?
                    .logits
                    .expect("logits were asked for");
                for (&i, row) in chunk.iter().zip(logits.to_vec2::<f32>()?) {
                    out[i] = row;
                }
            }
        }
        Ok(out)
    }

    /// Final norm and unembedding of only what `sel` asks for, returned in f32.
    pub(super) fn logits(
        &self,
        x: &Tensor,
        sel: &LogitSelection,
    ) -> Result<Option<Tensor>, ModelError> {
        let (_, t, _) = x.dims3()?;
        let w = self.blocks.unembed();
        let out = match sel {
            LogitSelection::None => return Ok(None),
            LogitSelection::Last => {
                let h = self
                    .blocks
                    .final_norm(&x.i((.., t - 1, ..))?.contiguous()?)?;
                super::layers::by_rows(&h, w.dim(0)?, |r| r.matmul(&w.t()?))?
            }
            LogitSelection::LastIds(ids) => {
                let vocab = self.info.vocab_size;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(ModelError::InvalidRequest(format!(
                        "logit id {bad} is outside the vocabulary of {vocab}"
                    )));
                }
                let idx = Tensor::new(ids.as_slice(), w.device())?;
                let rows = w.index_select(&idx, 0)?;
                let h = self
                    .blocks
                    .final_norm(&x.i((.., t - 1, ..))?.contiguous()?)?;
                super::layers::by_rows(&h, ids.len(), |r| r.matmul(&rows.t()?))?
            }
            LogitSelection::All => {
                let h = self.blocks.final_norm(x)?;
                super::layers::by_rows(&h, w.dim(0)?, |r| r.matmul(&w.t()?))?
            }
        };
        Ok(Some(out.to_dtype(DType::F32)?))
    }
}
