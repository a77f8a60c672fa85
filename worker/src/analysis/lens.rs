//! The logit lens: the residual stream at the last position after each block, read through the
//! final norm and the unembedding: its top-1 token and the answer's rank.

use candle_core::{IndexOp, Tensor};
use serde::Serialize;

use crate::model::{Capture, HookedModel, ModelError, RunRequest, Start};

/// One prompt through the lens.
#[derive(Debug, Clone, Serialize)]
pub struct LensRow {
    /// Per layer, the top-1 token after that block.
    pub top: Vec<u32>,
    /// Per layer, the answer's rank (0: top-1).
    pub rank: Vec<usize>,
}

/// The lens on `prompts` (any lengths), with `answers[i]` the answer of prompt `i`.
pub fn logit_lens(
    model: &HookedModel,
    prompts: &[Vec<u32>],
    answers: &[u32],
) -> Result<Vec<LensRow>, ModelError> {
    let n_layers = model.info().n_layers;
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut rows: Vec<Option<LensRow>> = vec![None; prompts.len()];
    for idx in by_len.values() {
        let group: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
        let t = group[0].len();
        let out = model.run(&RunRequest {
            capture: Capture {
                resid: true,
                mlp_in: true,
                ..Default::default()
            },
            ..RunRequest::new(Start::Tokens(model.tokens(&group)?))
        })?;
        let c = &out.captured;
        let mut per_layer = vec![];
        for l in 0..n_layers {
            let x = if l + 1 < n_layers {
                c.resid[l + 1].as_ref()
            } else {
                c.final_resid_post.as_ref()
            }
            .expect("captured");
            let last: Tensor = x.i((.., t - 1, ..))?.contiguous()?;
            per_layer.push(model.unembed_resid(&last)?.to_vec2::<f32>()?);
        }
        for (r, &i) in idx.iter().enumerate() {
            let a = answers[i] as usize;
            let mut row = LensRow {
                top: vec![],
                rank: vec![],
            };
            for logits in &per_layer {
                let v = &logits[r];
                row.top.push(super::top_k(v, 1)[0]);
                row.rank.push(v.iter().filter(|&&x| x > v[a]).count());
            }
            rows[i] = Some(row);
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| r.expect("every prompt ran"))
        .collect())
}
