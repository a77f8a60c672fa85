//! Successor and copy scores of every head's OV circuit (the paper's "next" and copy scores):
//! each member of a token set, read where it sits in a window prompt (which starts with BOS
//! where the tokenizer adds one) after the first block (the embedding and the early MLP), goes
//! through the head's OV circuit and the unembedding; the successor score is the share of
//! members whose successor is in the top-k tokens, the copy score the share whose own token is.

use candle_core::{IndexOp, Tensor};
use circuit_sweep_common::analysis::token_sets::OvProbe;
use serde::Serialize;

use crate::model::{Capture, HookedModel, ModelError, RunRequest, Start};

/// Scores of every head, `[layers][heads]`, in %.
#[derive(Debug, Clone, Serialize)]
pub struct OvScores {
    /// Top-k.
    pub k: usize,
    /// The residual stream read: at the input of this block (1: after block 0).
    pub from_layer: usize,
    /// Share of members with a successor whose successor is in the top-k.
    pub successor: Vec<Vec<f64>>,
    /// Share of members whose own token is in the top-k.
    pub copy: Vec<Vec<f64>>,
    /// Member occurrences scored for the copy score.
    pub occurrences: usize,
    /// Occurrences with a successor in the set (scored for the successor score).
    pub with_successor: usize,
}

/// The residual stream at the input of block `layer` (the final block's output when `layer`
/// is the number of layers) at each occurrence of `probe`, `[occurrences, d_model]`.
fn member_rows(model: &HookedModel, probe: &OvProbe, layer: usize) -> Result<Tensor, ModelError> {
    let n_layers = model.info().n_layers;
    if layer > n_layers {
        return Err(ModelError::InvalidRequest(format!(
            "from_layer {layer} is past the last block ({n_layers} layers)"
        )));
    }
    let mut per_prompt = vec![];
    for ids in &probe.prompts {
        let out = model.run(&RunRequest {
            capture: Capture {
                resid: true,
                mlp_in: layer == n_layers,
                ..Default::default()
            },
            ..RunRequest::new(Start::Tokens(model.tokens(std::slice::from_ref(ids))?))
        })?;
        let x = if layer == n_layers {
            out.captured.final_resid_post
        } else {
            out.captured.resid[layer].clone()
        };
        per_prompt.push(x.expect("captured").i(0)?);
    }
    let rows: Vec<Tensor> = probe
        .occurrences
        .iter()
        .map(|o| per_prompt[o.prompt].i(o.position))
        .collect::<candle_core::Result<_>>()?;
    if rows.is_empty() {
        return Err(ModelError::InvalidRequest(
            "no member of the token set is a single token for this tokenizer".into(),
        ));
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Successor and copy scores of every head for the members of `probe`.
pub fn ov_scores(
    model: &HookedModel,
    probe: &OvProbe,
    k: usize,
    from_layer: usize,
) -> Result<OvScores, ModelError> {
    let info = model.info();
    let x = member_rows(model, probe, from_layer)?;
    let n = probe.occurrences.len();
    let with_successor = probe
        .occurrences
        .iter()
        .filter(|o| !probe.successor_ids(o.member).is_empty())
        .count();
    let mut successor = vec![vec![0.0; info.n_heads]; info.n_layers];
    let mut copy = vec![vec![0.0; info.n_heads]; info.n_layers];
    for layer in 0..info.n_layers {
        let outs: Vec<Tensor> = (0..info.n_heads)
            .map(|h| model.ov(layer, h, &x))
            .collect::<Result<_, _>>()?;
        // One unembedding for the whole layer.
        let logits = model
            .unembed_resid(&Tensor::cat(&outs, 0)?)?
            .to_vec2::<f32>()?;
        for h in 0..info.n_heads {
            let (mut s, mut c) = (0usize, 0usize);
            for (j, o) in probe.occurrences.iter().enumerate() {
                let top = super::top_k(&logits[h * n + j], k);
                if probe.accept[o.member].iter().any(|id| top.contains(id)) {
                    c += 1;
                }
                if probe
                    .successor_ids(o.member)
                    .iter()
                    .any(|id| top.contains(id))
                {
                    s += 1;
                }
            }
            copy[layer][h] = 100.0 * c as f64 / n as f64;
            successor[layer][h] = if with_successor == 0 {
                0.0
            } else {
                100.0 * s as f64 / with_successor as f64
            };
        }
    }
    Ok(OvScores {
        k,
        from_layer,
        successor,
        copy,
        occurrences: n,
        with_successor,
    })
}
