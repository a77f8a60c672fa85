//! The batched ablation evaluator: scores of candidate circuits, many per forward pass.
//!
//! Each candidate is a set of ablated components. Candidates are stacked as variants in the
//! batch, grouped by the first layer they touch so that (when noising) each group starts from
//! the cached clean residual stream at that layer; replacement values (per-position means over
//! the corrupt prompts, zeros, or paired activations) are computed once; only the logits the
//! metric needs are computed.

use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::metric;
use circuit_sweep_common::spec::{AblationKind, AblationSpec, Direction, Metric};

use crate::model::{
    Activations, Capture, HookedModel, Interventions, LogitSelection, ModelError, RunRequest, Start,
};

mod attribution;
mod budget;
mod edges;
mod nodes;
mod path;
mod prompts;

pub use attribution::PROMPTS_PER_PASS as ATTRIBUTION_PROMPTS_PER_PASS;
pub use budget::PassBudget;
use edges::Base;
pub use edges::EdgeCandidate;
pub use nodes::NodeCandidate;
pub use prompts::PromptSet;

/// Scores candidate circuits on one model and prompt set.
pub struct Evaluator {
    model: HookedModel,
    ablation: AblationSpec,
    /// The run that is patched: clean ids (noising) or corrupt ids (denoising).
    input: Tensor,
    values: Activations,
    /// Residual stream of the unpatched `input` run at each block's input (noising only).
    resid: Vec<Tensor>,
    /// Activations of the unpatched `input` run (noising only): what senders below a cached
    /// start wrote.
    clean: Option<Activations>,
    /// The residual stream each MLP reads, and the final block's output, in the unpatched run
    /// (noising only; the edge reference path reads them).
    mlp_in: Vec<Tensor>,
    final_resid_post: Option<Tensor>,
    prompts: usize,
    seq_len: usize,
    logit_ids: Vec<u32>,
    answer_col: Vec<usize>,
    wrong_col: Vec<usize>,
    answers: Vec<u32>,
    /// The full model's next-token log-probabilities on the clean prompts (KL only).
    full_logprobs: Vec<Vec<f64>>,
    /// Metric of the unablated model on the clean prompts.
    pub full: f64,
    /// Metric of the unablated model on the corrupt prompts.
    pub corrupt: f64,
    /// Metric of the empty circuit (everything ablated), where scores are normalised by it.
    pub empty: Option<f64>,
    budget: PassBudget,
    forward_passes: std::sync::atomic::AtomicUsize,
    /// Base runs of edge candidates with nodes and settled edges ablated, the last used last
    /// (see [`Evaluator::edge_metrics`]).
    bases: Mutex<Vec<(edges::BaseKey, Arc<Base>)>>,
    /// Positions where edges are ablated (all when `None`).
    edge_positions: Option<Vec<usize>>,
    /// Key and value receivers are per query head (else per key/value head).
    kv_per_query: bool,
    /// Runs node candidates start from (see [`Evaluator::node_metrics`]).
    node_bases: Mutex<Vec<Arc<nodes::NodeBase>>>,
    /// Node candidates run in staggered passes (else each from its lowest ablated layer).
    stagger_nodes: bool,
    /// Node candidates scored, and the blocks their variants (and bases) ran, for benchmarks.
    node_work: [std::sync::atomic::AtomicUsize; 2],
}

impl Evaluator {
    /// Runs the clean and corrupt prompts once, caching what every later evaluation needs.
    pub fn new(
        model: &HookedModel,
        prompts: &PromptSet,
        ablation: AblationSpec,
        batch_tokens: usize,
    ) -> Result<Self, ModelError> {
        let n = prompts.clean.len();
        if n == 0
            || prompts.corrupt.len() != n
            || prompts.answer.len() != n
            || prompts.wrong.len() != n
        {
            return Err(ModelError::InvalidRequest(format!(
                "prompt set of {n} clean, {} corrupt, {} answers, {} wrong",
                prompts.corrupt.len(),
                prompts.answer.len(),
                prompts.wrong.len()
            )));
        }
        let clean = model.tokens(&prompts.clean)?;
        let corrupt = model.tokens(&prompts.corrupt)?;
        if clean.dims() != corrupt.dims() {
            return Err(ModelError::InvalidRequest(format!(
                "clean prompts are {:?} tokens, corrupt {:?}: they must align",
                clean.dims(),
                corrupt.dims()
            )));
        }
        let seq_len = clean.dim(1)?;
        // Columns of the logits the metric reads.
        let mut logit_ids: Vec<u32> = prompts
            .answer
            .iter()
            .chain(&prompts.wrong)
            .copied()
            .collect();
        logit_ids.sort_unstable();
        logit_ids.dedup();
        let col = |id: &u32| logit_ids.binary_search(id).expect("id is in the list");
        let answer_col = prompts.answer.iter().map(col).collect();
        let wrong_col = prompts.wrong.iter().map(col).collect();
        let capture = Capture::all();
        let run = |ids: &Tensor, logits| {
            model.run(&RunRequest {
                capture,
                logits,
                ..RunRequest::new(Start::Tokens(ids.clone()))
            })
        };
        let clean_run = run(&clean, LogitSelection::Last)?;
        let corrupt_run = run(&corrupt, LogitSelection::Last)?;
        let clean_act = Activations::from_captured(&clean_run.captured)?;
        let corrupt_act = Activations::from_captured(&corrupt_run.captured)?;
        let (input, values, resid, clean_acts) = match ablation.direction {
            Direction::Noising => {
                let values = match ablation.kind {
                    AblationKind::Mean => corrupt_act.mean_over_prompts()?,
                    AblationKind::Resample => corrupt_act,
                    AblationKind::Zero => {
                        Activations::zero_for(model, seq_len, ablation.fold_value_bias)?
                    }
                };
                let resid = clean_run
                    .captured
                    .resid
                    .iter()
                    .map(|r| r.clone().expect("captured"))
                    .collect();
                (clean.clone(), values, resid, Some(clean_act))
            }
            Direction::Denoising => {
                // The circuit takes its paired clean activations and everything else computes on
                // the corrupt prompt: a mean or zero there has no sound meaning.
                if ablation.kind != AblationKind::Resample {
                    return Err(ModelError::InvalidRequest(
                        "denoising patches each kept component's paired clean activation into the corrupt run; the ablated side is the corrupt run itself (kind = \"resample\")".into(),
                    ));
                }
                if let Some(i) = prompts.last_token_mismatch() {
                    return Err(ModelError::InvalidRequest(format!(
                        "denoising: prompt pair {i}'s clean and corrupt prompts end with different tokens; the last token's embedding reaches the logits directly, so even the whole circuit could not reproduce the clean run"
                    )));
                }
                (corrupt.clone(), clean_act, vec![], None)
            }
        };
        let (mlp_in, final_resid_post) = if clean_acts.is_some() {
            let c = &clean_run.captured;
            (
                c.mlp_in
                    .iter()
                    .map(|m| m.clone().expect("captured"))
                    .collect(),
                c.final_resid_post.clone(),
            )
        } else {
            (vec![], None)
        };
        let vocab = model.info().vocab_size;
        // The full model's logits through the path every variant takes (the final block at the
        // last position only).
        let clean_logits: Vec<f32> = model
            .run(&RunRequest {
                logits: LogitSelection::Last,
                ..RunRequest::new(Start::Tokens(clean.clone()))
            })?
            .logits
            .expect("asked")
            .flatten_all()?
            .to_vec1()?;
        let corrupt_logits: Vec<f32> = corrupt_run
            .logits
            .expect("asked")
            .flatten_all()?
            .to_vec1()?;
        let full_logprobs: Vec<Vec<f64>> = if ablation.metric == Metric::Kl {
            clean_logits
                .chunks(vocab)
                .map(metric::log_softmax)
                .collect()
        } else {
            vec![]
        };
        let mut ev = Evaluator {
            model: model.clone(),
            ablation,
            input,
            values,
            resid,
            clean: clean_acts,
            mlp_in,
            final_resid_post,
            prompts: n,
            seq_len,
            logit_ids,
            answer_col,
            wrong_col,
            answers: prompts.answer.clone(),
            full_logprobs,
            full: 0.0,
            corrupt: 0.0,
            empty: None,
            budget: PassBudget::new(batch_tokens),
            forward_passes: std::sync::atomic::AtomicUsize::new(3),
            bases: Mutex::new(vec![]),
            edge_positions: None,
            kv_per_query: true,
            node_bases: Mutex::new(vec![]),
            stagger_nodes: true,
            node_work: Default::default(),
        };
        ev.full = ev.metric_of_full_logits(&clean_logits);
        ev.corrupt = ev.metric_of_full_logits(&corrupt_logits);
        match ev.ablation.direction {
            Direction::Noising => {
                // The unpatched model through the variants' own path (the metric's logit
                // columns only), so that a variant that changes nothing scores exactly 100.
                let n_layers = model.info().n_layers;
                ev.full = ev.run_variants(n_layers, vec![vec![]])?[0];
            }
            Direction::Denoising => {
                // The whole circuit restored (every head and MLP patched clean) and the empty
                // one (nothing patched: the corrupt run), through the variants' own path.
                let all = Component::all(model.info().n_layers, model.info().n_heads);
                let m = ev.metrics(&[vec![], all])?;
                (ev.full, ev.corrupt) = (m[0], m[1]);
            }
        }
        Ok(ev)
    }

    /// The token budget of a pass, which shrinks when a pass runs out of device memory.
    pub fn pass_budget(&self) -> &PassBudget {
        &self.budget
    }

    /// Whether node candidates run in staggered passes (the default) or each from the lowest
    /// layer it ablates, as before staggering (for benchmarks; the numbers are the same).
    pub fn set_node_staggering(&mut self, on: bool) {
        self.stagger_nodes = on;
    }

    /// Drops the runs kept for node candidates (a search is over: its circuits will not be
    /// continued).
    pub fn forget_node_bases(&self) {
        self.node_bases.lock().expect("not poisoned").clear();
    }

    /// Node candidates scored so far (see [`Evaluator::node_metrics`]) and the blocks their
    /// passes ran (each variant's blocks from where it started; bases included).
    pub fn node_work(&self) -> (usize, usize) {
        let r = |i: usize| self.node_work[i].load(std::sync::atomic::Ordering::Relaxed);
        (r(0), r(1))
    }

    /// Sets the empty circuit's metric, the zero of `normalize = "empty"` scores.
    pub fn set_empty(&mut self, m: f64) {
        self.empty = Some(m);
    }

    /// Forward passes run so far (the setup passes included).
    pub fn forward_passes(&self) -> usize {
        self.forward_passes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of prompts.
    pub fn prompts(&self) -> usize {
        self.prompts
    }

    /// The metric from full-vocabulary logits `[prompts * vocab]` of one unpatched run.
    fn metric_of_full_logits(&self, logits: &[f32]) -> f64 {
        let vocab = self.model.info().vocab_size;
        match self.ablation.metric {
            Metric::LogitDiff => {
                let a: Vec<usize> = self.answers.iter().map(|&i| i as usize).collect();
                let w: Vec<usize> = self
                    .wrong_col
                    .iter()
                    .map(|&c| self.logit_ids[c] as usize)
                    .collect();
                metric::logit_diff(logits, vocab, &a, &w)
            }
            Metric::Accuracy => metric::accuracy(logits, vocab, &self.answers),
            Metric::Kl => metric::kl(&self.full_logprobs, logits, vocab),
        }
    }

    /// The score of a metric value (% of the full model, normalised as the spec says; KL as
    /// is).
    pub fn score_of(&self, m: f64) -> f64 {
        metric::score(
            self.ablation.metric,
            self.ablation.normalize,
            m,
            self.full,
            self.corrupt,
            self.empty,
        )
    }

    /// What a variant patches: the ablated set when noising, everything else when denoising.
    fn patched(&self, ablated: &[Component]) -> Vec<Component> {
        match self.ablation.direction {
            Direction::Noising => ablated.to_vec(),
            Direction::Denoising => {
                let i = self.model.info();
                Component::all(i.n_layers, i.n_heads)
                    .into_iter()
                    .filter(|c| !ablated.contains(c))
                    .collect()
            }
        }
    }

    /// Scores of candidate circuits, each given as its set of ablated components, batched.
    pub fn scores(&self, candidates: &[Vec<Component>]) -> Result<Vec<f64>, ModelError> {
        Ok(self
            .metrics(candidates)?
            .into_iter()
            .map(|m| self.score_of(m))
            .collect())
    }

    /// Metric values of candidate circuits (see [`Evaluator::scores`]).
    pub fn metrics(&self, candidates: &[Vec<Component>]) -> Result<Vec<f64>, ModelError> {
        let n_layers = self.model.info().n_layers;
        // Group by start layer: the first layer a variant patches (noising), else 0.
        let mut groups: Vec<Vec<usize>> = vec![vec![]; n_layers + 1];
        let patched: Vec<Vec<Component>> = candidates.iter().map(|c| self.patched(c)).collect();
        for (i, p) in patched.iter().enumerate() {
            let start = match self.ablation.direction {
                Direction::Noising => p.iter().map(Component::layer).min().unwrap_or(n_layers),
                Direction::Denoising => 0,
            };
            groups[start].push(i);
        }
        let per_variant = (self.prompts * self.seq_len).max(1);
        let mut out = vec![0.0; candidates.len()];
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.node_work[0].fetch_add(candidates.len(), relaxed);
        for (start, idx) in groups.iter().enumerate() {
            let blocks = n_layers - start.min(n_layers.saturating_sub(1));
            self.node_work[1].fetch_add(idx.len() * blocks, relaxed);
            let values = self.budget.run_sliced(idx, per_variant, &mut |part| {
                let variants: Vec<Vec<Component>> =
                    part.iter().map(|&i| patched[i].clone()).collect();
                self.run_variants(start, variants)
            })?;
            for (&i, v) in idx.iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Where a pass that first patches layer `start` begins: the cached residual stream there,
    /// or the tokens.
    fn start_point(&self, start: usize) -> Start {
        let n_layers = self.model.info().n_layers;
        if start == 0 || self.resid.is_empty() {
            Start::Tokens(self.input.clone())
        } else if start >= n_layers {
            // Nothing patched below the logits: the unpatched run's last residual is the final
            // block's output, which is not cached; start at the last block instead.
            Start::Resid {
                layer: n_layers - 1,
                resid: self.resid[n_layers - 1].clone(),
            }
        } else {
            Start::Resid {
                layer: start,
                resid: self.resid[start].clone(),
            }
        }
    }

    /// One forward pass of `variants` starting at `start` (the cached residual stream there,
    /// or the tokens at 0); returns the metric of each variant.
    fn run_variants(
        &self,
        start: usize,
        variants: Vec<Vec<Component>>,
    ) -> Result<Vec<f64>, ModelError> {
        self.run_pass(
            self.start_point(start),
            Interventions::nodes(&self.values, variants),
        )
    }

    /// One forward pass; the metric of each variant.
    fn run_pass(&self, start: Start, iv: Interventions<'_>) -> Result<Vec<f64>, ModelError> {
        Ok(self.run_pass_captured(start, iv)?.0)
    }

    /// One forward pass; the metric of each variant, and what the pass captured (the kept
    /// variants' streams of a staggered pass).
    fn run_pass_captured(
        &self,
        start: Start,
        iv: Interventions<'_>,
    ) -> Result<(Vec<f64>, crate::model::Captured), ModelError> {
        let v = iv.variants.len().max(iv.edges.len()).max(1);
        let logits = match self.ablation.metric {
            Metric::LogitDiff => LogitSelection::LastIds(self.logit_ids.clone()),
            Metric::Accuracy | Metric::Kl => LogitSelection::Last,
        };
        let out = self.model.run(&RunRequest {
            interventions: Some(iv),
            logits,
            ..RunRequest::new(start)
        })?;
        self.forward_passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let logits: Vec<f32> = out
            .logits
            .expect("asked")
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let rows_per_variant = logits.len() / v;
        let vocab = self.model.info().vocab_size;
        let metrics = (0..v)
            .map(|i| {
                let l = &logits[i * rows_per_variant..(i + 1) * rows_per_variant];
                match self.ablation.metric {
                    Metric::LogitDiff => metric::logit_diff(
                        l,
                        self.logit_ids.len(),
                        &self.answer_col,
                        &self.wrong_col,
                    ),
                    Metric::Accuracy => metric::accuracy(l, vocab, &self.answers),
                    Metric::Kl => metric::kl(&self.full_logprobs, l, vocab),
                }
            })
            .collect();
        Ok((metrics, out.captured))
    }

    /// The reference path: one full, unbatched forward pass per candidate from the tokens, no
    /// cached residual stream (for tests and the naive baseline of `bench`). With `all_logits`,
    /// every block at every position and logits at every position, as `model(ids)` returns
    /// them (the metric reads the last); otherwise full-vocabulary logits at the last position
    /// only.
    pub fn metrics_naive(
        &self,
        candidates: &[Vec<Component>],
        all_logits: bool,
    ) -> Result<Vec<f64>, ModelError> {
        candidates
            .iter()
            .map(|c| {
                let out = self.model.run(&RunRequest {
                    interventions: Some(Interventions::nodes(&self.values, vec![self.patched(c)])),
                    logits: if all_logits {
                        LogitSelection::All
                    } else {
                        LogitSelection::Last
                    },
                    ..RunRequest::new(Start::Tokens(self.input.clone()))
                })?;
                self.forward_passes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut logits = out.logits.expect("asked");
                if all_logits {
                    let t = logits.dim(1)?;
                    logits = logits.i((.., t - 1, ..))?.contiguous()?;
                }
                let l: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                Ok(self.metric_of_full_logits(&l))
            })
            .collect()
    }
}
