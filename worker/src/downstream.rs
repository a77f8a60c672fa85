//! Downstream ablation: exact-match accuracy of greedy generation on arithmetic and interval
//! prompts with sets of components zero- or mean-ablated (a circuit, its shared part, or random
//! head sets as the control).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::spec::AblationKind;
use circuit_sweep_common::tasks::downstream::{DownPrompt, DownTask, exact_match};

use crate::PromptTokenizer;
use crate::analysis::generate::generate;
use crate::model::{Activations, Capture, HookedModel, ModelError, RunRequest, Start};

/// Prompts of every task, tokenized, and the values ablated components take.
pub struct Downstream {
    /// Per task: the task, its prompts and their token ids.
    pub tasks: Vec<(DownTask, Vec<DownPrompt>, Vec<Vec<u32>>)>,
    /// Position-independent replacement values.
    pub values: Activations,
    /// Tokens (variants x prompts x positions) per forward pass.
    pub batch_tokens: usize,
}

/// Why a downstream study cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The input is at fault (named).
    #[error("{0}")]
    Input(String),
}

impl Downstream {
    /// Tokenizes the prompts and computes the replacement values: zeros, or (mean) each
    /// component's output averaged over every position of every prompt of every task in an
    /// unablated pass: generated positions have no per-position counterpart, so the mean is
    /// the same at every position.
    pub fn new(
        model: &HookedModel,
        tok: &PromptTokenizer,
        tasks: Vec<(DownTask, Vec<DownPrompt>)>,
        kind: AblationKind,
        fold_value_bias: bool,
        batch_tokens: usize,
    ) -> Result<Self, DownstreamError> {
        let mut out = vec![];
        for (task, prompts) in tasks {
            let ids = prompts
                .iter()
                .map(|p| {
                    tok.encode(&p.text)
                        .map_err(|e| DownstreamError::Input(format!("{task}: {:?}: {e}", p.text)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push((task, prompts, ids));
        }
        let values = match kind {
            AblationKind::Zero => Activations::zero_for(model, 1, fold_value_bias)?,
            AblationKind::Mean => {
                let all: Vec<Vec<u32>> = out.iter().flat_map(|t| t.2.clone()).collect();
                position_mean(model, &all)?
            }
            AblationKind::Resample => {
                return Err(DownstreamError::Input(
                    "[ablation] kind: resample has no pairs in a downstream study (use zero or mean)"
                        .into(),
                ));
            }
        };
        Ok(Downstream {
            tasks: out,
            values,
            batch_tokens,
        })
    }

    /// Accuracy (% exact match) of every set on every task, `[sets][tasks]`.
    pub fn accuracy(
        &self,
        model: &HookedModel,
        tok: &PromptTokenizer,
        sets: &[Vec<Component>],
        progress: crate::sweep::OnProgress<'_>,
    ) -> Result<Vec<Vec<f64>>, crate::sweep::SweepError> {
        let mut acc = vec![vec![0.0; self.tasks.len()]; sets.len()];
        for (ti, (task, prompts, ids)) in self.tasks.iter().enumerate() {
            let max_new = task.max_new_tokens(prompts);
            let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, r) in ids.iter().enumerate() {
                by_len.entry(r.len()).or_default().push(i);
            }
            let mut correct = vec![0usize; sets.len()];
            for idx in by_len.values() {
                let group: Vec<Vec<u32>> = idx.iter().map(|&i| ids[i].clone()).collect();
                let tokens = group.len() * (group[0].len() + max_new);
                let per = (self.batch_tokens / tokens.max(1)).max(1);
                for (c, chunk) in sets.chunks(per).enumerate() {
                    let continued = generate(model, &group, &self.values, chunk, max_new)?;
                    for (s, rows) in continued.iter().enumerate() {
                        for (r, &i) in rows.iter().zip(idx) {
                            let text: String = r.iter().map(|&t| tok.token_text(t)).collect();
                            if exact_match(&text, &prompts[i].answer) {
                                correct[c * per + s] += 1;
                            }
                        }
                    }
                }
            }
            for (s, n) in correct.iter().enumerate() {
                acc[s][ti] = 100.0 * *n as f64 / prompts.len() as f64;
            }
            crate::sweep::go_on(progress(ti + 1))?;
        }
        Ok(acc)
    }
}

/// Each component's output averaged over every position of every prompt, as one position.
fn position_mean(model: &HookedModel, prompts: &[Vec<u32>]) -> Result<Activations, ModelError> {
    let info = model.info();
    let mut by_len: BTreeMap<usize, Vec<Vec<u32>>> = BTreeMap::new();
    for p in prompts {
        by_len.entry(p.len()).or_default().push(p.clone());
    }
    let mut z: Vec<Option<Tensor>> = vec![None; info.n_layers];
    let mut mlp: Vec<Option<Tensor>> = vec![None; info.n_layers];
    let mut embed: Option<Tensor> = None;
    let mut total = 0usize;
    let add = |acc: &mut Option<Tensor>, t: &Tensor| -> Result<(), ModelError> {
        // Sum over prompts and positions, in f32.
        let s = t.to_dtype(DType::F32)?.sum_keepdim(0)?.sum_keepdim(1)?;
        *acc = Some(match acc.take() {
            None => s,
            Some(a) => (a + s)?,
        });
        Ok(())
    };
    for group in by_len.values() {
        let out = model.run(&RunRequest {
            capture: Capture::all(),
            ..RunRequest::new(Start::Tokens(model.tokens(group)?))
        })?;
        let c = &out.captured;
        for l in 0..info.n_layers {
            add(&mut z[l], c.z[l].as_ref().expect("captured"))?;
            add(&mut mlp[l], c.mlp[l].as_ref().expect("captured"))?;
        }
        add(&mut embed, c.resid[0].as_ref().expect("captured"))?;
        total += group.len() * group[0].len();
    }
    let mean = |t: Option<Tensor>| -> Result<Tensor, ModelError> {
        Ok((t.expect("at least one prompt") / total as f64)?.to_dtype(info.dtype)?)
    };
    if total == 0 {
        return Err(ModelError::InvalidRequest("no downstream prompts".into()));
    }
    Ok(Activations {
        z: z.into_iter().map(mean).collect::<Result<_, _>>()?,
        mlp: mlp.into_iter().map(mean).collect::<Result<_, _>>()?,
        embed: mean(embed)?,
    })
}
