//! Attribution (EAP, EAP-IG) of every edge and node on a range of the evaluator's prompts:
//! estimated metric changes that add up over prompt ranges, so shards can be summed.

use std::ops::Range;

use candle_core::{D, DType, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::spec::{Direction, Metric};

use super::Evaluator;
use crate::model::{AttributionPass, AttributionSums, LogitSelection, ModelError};

/// Prompts of one differentiated pass. Fixed, not sized from free memory, so that the sums
/// (whose order of additions follows the passes) are the same on every device of a numeric
/// profile; a pass keeps every intermediate for the backward pass, and every receiver its own
/// copy of its input's norm and projection.
pub const PROMPTS_PER_PASS: usize = 4;

impl Evaluator {
    /// Estimated metric changes when each edge (node) alone is ablated, summed over the prompts
    /// `prompts` (each prompt weighted as the metric's mean over all prompts weighs it): `steps`
    /// passes with every sender moved `k / steps` of the way to its ablated value (`k = 0..steps`,
    /// so one step is EAP), their products averaged. Edges of the evaluator's graph when
    /// `edges`, nodes always. The nodes `outside` are ablated outright in every pass (the
    /// estimates are then those of the graph restricted to the other nodes).
    pub fn attribute(
        &self,
        steps: usize,
        edges: bool,
        outside: &[Component],
        prompts: Range<usize>,
    ) -> Result<AttributionSums, ModelError> {
        if self.ablation.direction == Direction::Denoising {
            return Err(ModelError::InvalidRequest(
                "attribution is implemented for noising".into(),
            ));
        }
        if self.ablation.metric == Metric::Accuracy {
            return Err(ModelError::InvalidRequest(
                "attribution differentiates the metric; accuracy is a step function with no gradient (use logit_diff or kl)".into(),
            ));
        }
        if steps == 0 {
            return Err(ModelError::InvalidRequest(
                "attribution takes at least one step".into(),
            ));
        }
        if prompts.start >= prompts.end || prompts.end > self.prompts {
            return Err(ModelError::InvalidRequest(format!(
                "prompts {}..{} are not within the {} prompts",
                prompts.start, prompts.end, self.prompts
            )));
        }
        let per_pass = PROMPTS_PER_PASS;
        let mut total = AttributionSums::default();
        let mut lo = prompts.start;
        while lo < prompts.end {
            let hi = (lo + per_pass).min(prompts.end);
            for k in 0..steps {
                let c = k as f64 / steps as f64;
                let sums = self.attribution_pass(c, edges, outside, lo..hi)?;
                total.add(&sums, 1.0 / steps as f64);
            }
            lo = hi;
        }
        Ok(total)
    }

    /// One differentiated pass on prompts `range` with every sender moved `coefficient` of the
    /// way to its ablated value.
    fn attribution_pass(
        &self,
        coefficient: f64,
        edges: bool,
        outside: &[Component],
        range: Range<usize>,
    ) -> Result<AttributionSums, ModelError> {
        let (lo, n) = (range.start, range.len());
        let rows = |t: &Tensor| -> candle_core::Result<Tensor> {
            if t.dim(0)? == 1 {
                Ok(t.clone())
            } else {
                t.narrow(0, lo, n)
            }
        };
        let values = crate::model::Activations {
            z: self.values.z.iter().map(rows).collect::<Result<_, _>>()?,
            mlp: self.values.mlp.iter().map(rows).collect::<Result<_, _>>()?,
            embed: rows(&self.values.embed)?,
        };
        let device = self.model.device().clone();
        let total = self.prompts as f64;
        let (logits, weights) = match self.ablation.metric {
            Metric::LogitDiff => {
                // +1/N at each prompt's answer column, -1/N at its wrong one.
                let k = self.logit_ids.len();
                let mut c = vec![0f32; n * k];
                for i in 0..n {
                    c[i * k + self.answer_col[lo + i]] += (1.0 / total) as f32;
                    c[i * k + self.wrong_col[lo + i]] -= (1.0 / total) as f32;
                }
                (
                    LogitSelection::LastIds(self.logit_ids.clone()),
                    Tensor::from_vec(c, (n, k), &device)?,
                )
            }
            _ => {
                let vocab = self.model.info().vocab_size;
                let lp: Vec<f32> = self.full_logprobs[lo..lo + n]
                    .iter()
                    .flatten()
                    .map(|&x| x as f32)
                    .collect();
                (
                    LogitSelection::Last,
                    Tensor::from_vec(lp, (n, vocab), &device)?,
                )
            }
        };
        let metric_kind = self.ablation.metric;
        let metric = move |l: &Tensor| -> candle_core::Result<Tensor> {
            match metric_kind {
                Metric::LogitDiff => (l * &weights)?.sum_all(),
                // KL(full || ablated) averaged over every prompt: sum p (log p - log q) / N.
                _ => {
                    let lq = candle_nn::ops::log_softmax(l, D::Minus1)?;
                    ((weights.exp()? * (&weights - lq)?)?.sum_all()? / total)?.to_dtype(DType::F32)
                }
            }
        };
        let pass = AttributionPass {
            ids: self.input.narrow(0, lo, n)?,
            values: &values,
            coefficient,
            graph: edges.then(|| self.graph_shape()),
            positions: self.edge_positions.clone(),
            outside,
            logits,
        };
        let out = self.model.attribution_pass(&pass, &metric)?;
        self.forward_passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }
}
