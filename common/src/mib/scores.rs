//! Our edge scores as MIB's. Ours are the metric with the edge ablated, in % of the full model
//! (100: no change) or, for KL, the divergence in nats; MIB's are differences of the raw
//! metric. Given the full model's metric (and the corrupt run's or the empty circuit's, which
//! scores are normalised by), a score turns back into the metric with the edge ablated, and its
//! difference from the full model's is MIB's score.
//!
//! The sign: MIB's attribution takes its metric as a loss (logit difference negated, KL as is)
//! and scores each edge by how much ablating it raises that loss, so an edge the behaviour
//! needs scores high, and MIB's signed selection (for CPR) takes the highest. That is
//! [`Convention::Loss`]. MIB's published example circuit file has the metric's own difference
//! instead (a name mover's edge to the logits is negative): [`Convention::Metric`].

use crate::results::ResultDoc;
use crate::spec::{Metric, Normalize};

/// Which difference MIB's scores hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Convention {
    /// How much ablating the edge raises the loss (`m(full) - m(ablated)` for logit difference
    /// and accuracy, the KL itself for KL): what MIB's attribution writes.
    #[default]
    Loss,
    /// How much ablating the edge changes the metric (`m(ablated) - m(full)`).
    Metric,
}

/// A baseline the conversion needs is not in `result.json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "result.json has no `{0}`: scores normalised by it cannot be turned back into metric differences"
)]
pub struct MissingBaseline(pub &'static str);

/// How a run's scores map to metric values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    metric: Metric,
    /// The full model's metric.
    full: f64,
    /// The metric a score of 0 stands for.
    zero: f64,
}

impl Scale {
    /// The scale of a run's scores, from its spec and baselines.
    pub fn new(
        metric: Metric,
        normalize: Normalize,
        full: Option<f64>,
        corrupt: Option<f64>,
        empty: Option<f64>,
    ) -> Result<Self, MissingBaseline> {
        if metric == Metric::Kl {
            return Ok(Scale {
                metric,
                full: 0.0,
                zero: 0.0,
            });
        }
        let full = full.ok_or(MissingBaseline("full"))?;
        let zero = match normalize {
            Normalize::Full => 0.0,
            Normalize::CleanCorrupt => corrupt.ok_or(MissingBaseline("corrupt"))?,
            Normalize::Empty => empty.ok_or(MissingBaseline("empty"))?,
        };
        Ok(Scale { metric, full, zero })
    }

    /// The scale of the scores in a `result.json`.
    pub fn of(doc: &ResultDoc) -> Result<Self, MissingBaseline> {
        Self::new(
            doc.spec.ablation.metric,
            doc.spec.ablation.normalize,
            doc.full,
            doc.corrupt,
            doc.empty,
        )
    }

    /// MIB's score of an edge whose score (ablated alone) is `score`.
    pub fn to_mib(&self, score: f64, convention: Convention) -> f64 {
        if self.metric == Metric::Kl {
            // The KL is both the metric and the loss, 0 for the full model.
            return score;
        }
        // score = 100 (m - zero) / (full - zero), so m - full = (score - 100) (full - zero) / 100.
        let change = (score - 100.0) * (self.full - self.zero) / 100.0;
        match convention {
            Convention::Loss => -change,
            Convention::Metric => change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_become_metric_differences() {
        // Full logit difference 4: an edge at 75 % leaves 3, a change of -1.
        let s = Scale::new(Metric::LogitDiff, Normalize::Full, Some(4.0), None, None).unwrap();
        assert_eq!(s.to_mib(75.0, Convention::Metric), -1.0);
        assert_eq!(s.to_mib(75.0, Convention::Loss), 1.0);
        assert_eq!(s.to_mib(100.0, Convention::Loss), 0.0);
        // Normalised by the corrupt run (1): 50 % is halfway from 1 to 4, 2.5, a change of -1.5.
        let s = Scale::new(
            Metric::LogitDiff,
            Normalize::CleanCorrupt,
            Some(4.0),
            Some(1.0),
            None,
        )
        .unwrap();
        assert_eq!(s.to_mib(50.0, Convention::Metric), -1.5);
        // KL: the score is the divergence the edge adds, in both conventions.
        let s = Scale::new(Metric::Kl, Normalize::Full, None, None, None).unwrap();
        assert_eq!(s.to_mib(0.25, Convention::Loss), 0.25);
        assert_eq!(s.to_mib(0.25, Convention::Metric), 0.25);
        let e = Scale::new(Metric::Accuracy, Normalize::Empty, Some(0.9), None, None).unwrap_err();
        assert_eq!(e, MissingBaseline("empty"));
        assert!(e.to_string().contains("no `empty`"));
    }
}
