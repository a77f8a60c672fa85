//! Attention patterns of chosen heads on chosen prompts, and where the last position attends:
//! the mean weight at each offset back from it (`n-1` is the previous token), the signature of
//! the induction-like heads the researchers saw attending to `n-3` and `n-7`.

use candle_core::IndexOp;
use serde::Serialize;

use crate::model::{Capture, HookedModel, ModelError, RunRequest, Start};

/// One head's pattern on one prompt: `weights[query][key]`, causal (zero above the diagonal).
#[derive(Debug, Clone, Serialize)]
pub struct Pattern {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// `[positions][positions]`.
    pub weights: Vec<Vec<f32>>,
}

/// Patterns of `heads` (`(layer, head)`) on the prompt `ids`.
pub fn patterns(
    model: &HookedModel,
    ids: &[u32],
    heads: &[(usize, usize)],
) -> Result<Vec<Pattern>, ModelError> {
    let info = model.info();
    if let Some((l, h)) = heads
        .iter()
        .find(|(l, h)| *l >= info.n_layers || *h >= info.n_heads)
    {
        return Err(ModelError::InvalidRequest(format!(
            "no head h{l}.{h}: the model has {} layers of {} heads",
            info.n_layers, info.n_heads
        )));
    }
    let out = model.run(&RunRequest {
        capture: Capture {
            pattern: true,
            ..Default::default()
        },
        ..RunRequest::new(Start::Tokens(model.tokens(&[ids.to_vec()])?))
    })?;
    heads
        .iter()
        .map(|&(layer, head)| {
            let p = out.captured.pattern[layer]
                .as_ref()
                .expect("every layer's pattern is captured")
                .i((0, head))?;
            Ok(Pattern {
                layer,
                head,
                weights: p.to_vec2::<f32>()?,
            })
        })
        .collect()
}

/// Mean weight of the last position at each offset back from it (`[0]` is itself, `[1]` the
/// previous token), over patterns of possibly different lengths.
pub fn last_position_offsets(patterns: &[&Pattern]) -> Vec<f64> {
    let longest = patterns.iter().map(|p| p.weights.len()).max().unwrap_or(0);
    let mut sum = vec![0.0; longest];
    let mut count = vec![0usize; longest];
    for p in patterns {
        let last = &p.weights[p.weights.len() - 1];
        for (j, &w) in last.iter().enumerate() {
            let off = last.len() - 1 - j;
            sum[off] += w as f64;
            count[off] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
        .collect()
}
