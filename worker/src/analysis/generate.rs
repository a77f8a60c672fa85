//! Greedy generation with a KV cache, many ablation variants in one batch: the prompt runs
//! once per variant, then each step runs one new token per row against the cache.

use candle_core::Tensor;
use circuit_sweep_common::Component;

use crate::model::{
    Activations, HookedModel, Interventions, KvCache, LogitSelection, ModelError, RunRequest, Start,
};

/// Greedy continuations `[variant][prompt][token]` of `prompts` (all the same length), `max_new`
/// tokens each, with the components `variants[v]` replaced by `values` in variant `v` at every
/// position (prompt and generated). `values` must hold one position (the same value everywhere).
pub fn generate(
    model: &HookedModel,
    prompts: &[Vec<u32>],
    values: &Activations,
    variants: &[Vec<Component>],
    max_new: usize,
) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
    if values.z.iter().any(|z| z.dims().get(1) != Some(&1)) {
        return Err(ModelError::InvalidRequest(
            "generation needs position-independent ablation values (one position)".into(),
        ));
    }
    let (v, p) = (variants.len(), prompts.len());
    let mut out = vec![vec![Vec::with_capacity(max_new); p]; v];
    if v == 0 || p == 0 || max_new == 0 {
        return Ok(out);
    }
    let cache = KvCache::new();
    let mut ids = model.tokens(prompts)?;
    for _ in 0..max_new {
        let logits = model
            .run(&RunRequest {
                interventions: Some(Interventions::nodes(values, variants.to_vec())),
                logits: LogitSelection::Last,
                cache: Some(&cache),
                ..RunRequest::new(Start::Tokens(ids))
            })?
            .logits
            .expect("logits were asked for");
        let next: Vec<u32> = logits.argmax(1)?.to_vec1::<u32>()?;
        for (row, &t) in next.iter().enumerate() {
            out[row / p][row % p].push(t);
        }
        ids = Tensor::from_vec(next, (v * p, 1), model.device())?;
    }
    Ok(out)
}

/// The same continuations without a cache: every step reruns the whole sequence (the
/// reference the cached path is tested against).
pub fn generate_uncached(
    model: &HookedModel,
    prompts: &[Vec<u32>],
    values: &Activations,
    variants: &[Vec<Component>],
    max_new: usize,
) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
    let mut out = vec![];
    for var in variants {
        let mut rows: Vec<Vec<u32>> = prompts.to_vec();
        for _ in 0..max_new {
            let logits = model
                .run(&RunRequest {
                    interventions: Some(Interventions::nodes(values, vec![var.clone()])),
                    logits: LogitSelection::Last,
                    ..RunRequest::new(Start::Tokens(model.tokens(&rows)?))
                })?
                .logits
                .expect("logits were asked for");
            for (r, t) in rows.iter_mut().zip(logits.argmax(1)?.to_vec1::<u32>()?) {
                r.push(t);
            }
        }
        out.push(
            rows.into_iter()
                .map(|r| r[prompts[0].len()..].to_vec())
                .collect(),
        );
    }
    Ok(out)
}
