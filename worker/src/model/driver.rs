//! The forward pass shared by every architecture: start (tokens or cached residual), blocks with
//! hooks, and only the logits asked for.

use candle_core::{DType, IndexOp, Tensor};

use super::hooks::RunHooks;
use super::seq_ctx::SeqCtx;
use super::{
    HookedModel, JoinFrom, LogitSelection, ModelError, RunOutput, RunRequest, Stagger, Start,
};

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
        if let Start::Staggered(st) = start {
            check_stagger(req, st, info.n_layers)?;
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
            Start::Staggered(st) => {
                // The variants joining at the first layer start the pass.
                let first = st.joins[0].layer;
                let p = match &st.joins[0].from {
                    JoinFrom::Resid(r) => r.dim(0)?,
                    JoinFrom::Variant(_) => {
                        return Err(ModelError::InvalidRequest(
                            "staggered pass: the first variant must join from a cached stream"
                                .into(),
                        ));
                    }
                };
                (first, join(None, st, first, &mut 0, p, info.dtype)?)
            }
        };
        let stagger = match start {
            Start::Staggered(st) => Some(st),
            _ => None,
        };
        let (rows, seq_len, _) = resid.dims3()?;
        // Once a cache holds positions its rows are already variant-major; so are the rows of a
        // staggered pass.
        let expanded = past > 0 || stagger.is_some();
        let n_variants = req
            .interventions
            .as_ref()
            .map_or(1, |iv| iv.variants.len().max(1));
        let prompts = if let Some(st) = stagger {
            rows / st.joins.iter().filter(|j| j.layer == start_layer).count()
        } else if expanded {
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
        // Of a staggered pass: variants running so far, and where each kept one's rows are.
        let mut running = stagger.map_or(0, |st| {
            st.joins
                .iter()
                .take_while(|j| j.layer == start_layer)
                .count()
        });
        let mut kept = stagger.map_or(vec![], |st| vec![vec![]; st.keep.len()]);
        for layer in start_layer..info.n_layers {
            if let Some(st) = stagger {
                if layer > start_layer {
                    x = join(Some(&x), st, layer, &mut running, prompts, info.dtype)?;
                }
                for (k, &(v, until)) in st.keep.iter().enumerate() {
                    if v < running && layer < until {
                        // Its own rows in storage of their own: a view, or candle's `copy`
                        // (which clones the whole storage under the view), would keep the
                        // whole pass's stream alive for as long as the run is kept.
                        kept[k].push(x.narrow(0, v * prompts, prompts)?.force_contiguous()?);
                    }
                }
            }
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
        hooks.captured.variant_resid = kept;
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

/// Checks a staggered pass: node interventions only, one join per variant at a block of the
/// model, joins by layer,
/// each variant joining from an earlier one or a cached stream of the same shape, nothing
/// replaced below a variant's join.
fn check_stagger(req: &RunRequest<'_>, st: &Stagger, n_layers: usize) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::InvalidRequest(format!("staggered pass: {m}")));
    let Some(iv) = &req.interventions else {
        return bad("it needs interventions".into());
    };
    if req.cache.is_some() || !iv.edges.is_empty() || !iv.inputs.is_empty() || !iv.deltas.is_empty()
    {
        return bad("node interventions only, without a KV cache".into());
    }
    if st.joins.len() != iv.variants.len() || st.joins.is_empty() {
        return bad(format!(
            "{} joins for {} variants",
            st.joins.len(),
            iv.variants.len()
        ));
    }
    let shape = st.joins.iter().find_map(|j| match &j.from {
        JoinFrom::Resid(r) => Some(r.dims().to_vec()),
        JoinFrom::Variant(_) => None,
    });
    for (v, j) in st.joins.iter().enumerate() {
        if j.layer >= n_layers {
            return bad(format!(
                "variant {v} joins at layer {}, past the last block ({n_layers} layers)",
                j.layer
            ));
        }
        if v > 0 && j.layer < st.joins[v - 1].layer {
            return bad("joins are not sorted by layer".into());
        }
        match &j.from {
            JoinFrom::Resid(r) if Some(r.dims().to_vec()) != shape => {
                return bad(format!(
                    "variant {v} joins with a stream of shape {:?}",
                    r.dims()
                ));
            }
            JoinFrom::Variant(p) if *p >= v => {
                return bad(format!(
                    "variant {v} joins from variant {p}, not an earlier one"
                ));
            }
            _ => {}
        }
        if let Some(c) = iv.variants[v].iter().find(|c| c.layer() < j.layer) {
            return bad(format!(
                "variant {v} replaces {c}, below its join layer {}",
                j.layer
            ));
        }
    }
    if let Some(&(k, _)) = st.keep.iter().find(|(k, _)| *k >= st.joins.len()) {
        return bad(format!("keeps variant {k} of {}", st.joins.len()));
    }
    Ok(())
}

/// The stream `x` of the running variants (none before the first layer) with those joining at
/// `layer` appended; a variant may join from one running before or joining just before it.
fn join(
    x: Option<&Tensor>,
    st: &Stagger,
    layer: usize,
    running: &mut usize,
    prompts: usize,
    dtype: DType,
) -> Result<Tensor, ModelError> {
    let before = *running;
    let mut parts: Vec<Tensor> = x.into_iter().cloned().collect();
    let mut new: Vec<Tensor> = vec![];
    while *running < st.joins.len() && st.joins[*running].layer == layer {
        let rows = match &st.joins[*running].from {
            JoinFrom::Resid(r) => r.to_dtype(dtype)?,
            JoinFrom::Variant(p) if *p < before => {
                x.expect("variants run").narrow(0, p * prompts, prompts)?
            }
            JoinFrom::Variant(p) => new[*p - before].clone(),
        };
        new.push(rows);
        *running += 1;
    }
    if new.is_empty()
        && let Some(x) = x
    {
        return Ok(x.clone());
    }
    parts.extend(new);
    Ok(Tensor::cat(&parts, 0)?)
}
