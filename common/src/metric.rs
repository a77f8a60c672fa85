//! Metrics over last-position logits, and how a metric becomes a score.

use crate::spec::{Metric, Normalize};

/// What scores are measured in: % of the full model (higher keeps more), or a KL divergence
/// from the full model in nats (higher has lost more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// % of the full model's metric.
    Percent,
    /// KL divergence from the full model, nats.
    Nats,
}

impl Unit {
    /// The unit of a metric's scores.
    pub fn of(metric: Metric) -> Self {
        match metric {
            Metric::Kl => Unit::Nats,
            _ => Unit::Percent,
        }
    }

    /// How much ablating something costs, from its score and the score of what it was ablated
    /// from: the distance from that score in %, the KL gained in nats.
    pub fn cost(self, score: f64, baseline: f64) -> f64 {
        match self {
            Unit::Percent => (baseline - score).abs(),
            Unit::Nats => (score - baseline).max(0.0),
        }
    }

    /// A score with its unit (`81.3%`, `0.0123 nats`).
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.1}%"),
            Unit::Nats => format!("{v:.4} nats"),
        }
    }

    /// The unit's name in JSON and drawings.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Percent => "%",
            Unit::Nats => "nats",
        }
    }
}

/// Mean over prompts of `logit[answer] - logit[wrong]`; `logits` is row-major `[prompts, k]`
/// and `answer_col[p]`, `wrong_col[p]` are the columns of prompt `p`'s tokens.
pub fn logit_diff(logits: &[f32], k: usize, answer_col: &[usize], wrong_col: &[usize]) -> f64 {
    let p = answer_col.len();
    let sum: f64 = (0..p)
        .map(|i| (logits[i * k + answer_col[i]] - logits[i * k + wrong_col[i]]) as f64)
        .sum();
    sum / p as f64
}

/// Share of prompts whose top-1 token is the answer; `logits` is `[prompts, vocab]`.
pub fn accuracy(logits: &[f32], vocab: usize, answers: &[u32]) -> f64 {
    let right = answers
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let top = row
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(j, _)| j);
            top == Some(**a as usize)
        })
        .count();
    right as f64 / answers.len() as f64
}

/// Log-softmax of one row, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Mean over prompts of KL(full || ablated) of the next-token distributions; `full` holds the
/// full model's log-probabilities per prompt, `logits` the ablated logits `[prompts, vocab]`.
pub fn kl(full: &[Vec<f64>], logits: &[f32], vocab: usize) -> f64 {
    let sum: f64 = full
        .iter()
        .enumerate()
        .map(|(i, lp)| {
            let lq = log_softmax(&logits[i * vocab..(i + 1) * vocab]);
            lp.iter()
                .zip(&lq)
                .map(|(&a, &b)| a.exp() * (a - b))
                .sum::<f64>()
        })
        .sum();
    sum / full.len() as f64
}

/// The score of a metric value: `100 * m / full`, or `100 * (m - zero) / (full - zero)` where
/// `zero` is the corrupt run's metric (`clean_corrupt`) or the empty circuit's (`empty`); KL
/// is reported as is (nats, 0 for the full model).
pub fn score(
    metric: Metric,
    normalize: Normalize,
    m: f64,
    full: f64,
    corrupt: f64,
    empty: Option<f64>,
) -> f64 {
    match (metric, normalize) {
        (Metric::Kl, _) => m,
        (_, Normalize::Full) => 100.0 * m / full,
        (_, Normalize::CleanCorrupt) => 100.0 * (m - corrupt) / (full - corrupt),
        (_, Normalize::Empty) => {
            let e = empty.unwrap_or(f64::NAN);
            100.0 * (m - e) / (full - e)
        }
    }
}

/// Smallest share of the full metric that the corrupt run (or the empty circuit) must remove
/// for `clean_corrupt` (`empty`) scores: below it, scores are a ratio of two near-equal numbers.
pub const MIN_GAP: f64 = 0.1;

/// Refuses baselines that would turn every score into noise or flip its sign, naming the metric
/// values: a full logit difference <= 0 (the model prefers `wrong`), a full accuracy of 0, and a
/// corrupt run (empty circuit) within [`MIN_GAP`] of the full model when scores are normalised
/// by it. `empty` is the empty circuit's metric where `normalize = "empty"`.
pub fn check_baselines(
    metric: Metric,
    normalize: Normalize,
    full: f64,
    corrupt: f64,
    empty: Option<f64>,
) -> Result<(), String> {
    let hint = "check the prompts' `answer` and `wrong` fields, or keep the prompts the model gets right with `circuit-sweep prompts check FILE --filter -o OUT`";
    match metric {
        Metric::Kl => return Ok(()),
        Metric::LogitDiff if full <= 0.0 || full.is_nan() => {
            return Err(format!(
                "the full model's mean logit difference on the clean prompts is {full:.4} (<= 0): it prefers `wrong` to `answer`, so every score would change sign and pruning would keep the components that hurt; {hint}"
            ));
        }
        Metric::Accuracy if full <= 0.0 || full.is_nan() => {
            return Err(format!(
                "the full model's accuracy on the clean prompts is {full:.4}: there is nothing to keep a share of; {hint}"
            ));
        }
        _ => {}
    }
    let (name, zero) = match normalize {
        Normalize::Full => return Ok(()),
        Normalize::CleanCorrupt => ("the corrupt run's", corrupt),
        Normalize::Empty => ("the empty circuit's", empty.unwrap_or(f64::NAN)),
    };
    let field = match normalize {
        Normalize::CleanCorrupt => "clean_corrupt",
        _ => "empty",
    };
    let gap = full - zero;
    if gap < MIN_GAP * full.abs() || gap.is_nan() {
        return Err(format!(
            "[ablation] normalize = \"{field}\": the full model's metric {full:.4} and {name} {zero:.4} are too close (scores divide by their difference, which must be at least {}% of the full metric); use normalize = \"full\", or a corruption that removes the behaviour",
            MIN_GAP * 100.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_diff_and_accuracy_by_hand() {
        // Two prompts, three logits each.
        let l = [3.0f32, 1.0, 0.0, 0.5, 2.0, 1.0];
        assert_eq!(
            logit_diff(&l, 3, &[0, 1], &[1, 2]),
            ((3.0 - 1.0) + (2.0 - 1.0)) / 2.0
        );
        assert_eq!(accuracy(&l, 3, &[0, 2]), 0.5);
    }

    #[test]
    fn kl_is_zero_for_the_same_distribution_and_positive_otherwise() {
        let l = [1.0f32, 2.0, 3.0];
        let full = vec![log_softmax(&l)];
        assert!(kl(&full, &l, 3).abs() < 1e-12);
        let other = [3.0f32, 2.0, 1.0];
        let d = kl(&full, &other, 3);
        // By hand: sum p (log p - log q) with p = softmax(1,2,3), q = softmax(3,2,1).
        let p: Vec<f64> = full[0].iter().map(|x| x.exp()).collect();
        let want = 2.0 * (p[2] - p[0]);
        assert!((d - want).abs() < 1e-12, "{d} vs {want}");
    }

    #[test]
    fn scores() {
        assert_eq!(
            score(Metric::LogitDiff, Normalize::Full, 2.0, 4.0, 1.0, None),
            50.0
        );
        assert_eq!(
            score(
                Metric::LogitDiff,
                Normalize::CleanCorrupt,
                2.5,
                4.0,
                1.0,
                None
            ),
            50.0
        );
        assert_eq!(score(Metric::Kl, Normalize::Full, 0.3, 4.0, 1.0, None), 0.3);
        assert_eq!(
            score(
                Metric::LogitDiff,
                Normalize::Empty,
                2.5,
                4.0,
                1.0,
                Some(-2.0)
            ),
            75.0
        );
    }

    #[test]
    fn degenerate_baselines_are_refused_naming_the_values() {
        let ok = |m, n, f, c, e| check_baselines(m, n, f, c, e);
        assert!(ok(Metric::LogitDiff, Normalize::Full, 2.0, 0.1, None).is_ok());
        let e = ok(Metric::LogitDiff, Normalize::Full, -1.96, 0.1, None).unwrap_err();
        assert!(
            e.contains("-1.9600 (<= 0)") && e.contains("prompts check"),
            "{e}"
        );
        let e = ok(Metric::Accuracy, Normalize::Full, 0.0, 0.0, None).unwrap_err();
        assert!(e.contains("accuracy on the clean prompts is 0.0000"), "{e}");
        let e = ok(Metric::LogitDiff, Normalize::CleanCorrupt, 2.0, 1.95, None).unwrap_err();
        assert!(
            e.contains("clean_corrupt") && e.contains("2.0000") && e.contains("1.9500"),
            "{e}"
        );
        // A corruption that raises the metric is refused too.
        assert!(ok(Metric::LogitDiff, Normalize::CleanCorrupt, 2.0, 3.0, None).is_err());
        assert!(ok(Metric::LogitDiff, Normalize::CleanCorrupt, 2.0, 0.5, None).is_ok());
        let e = ok(Metric::LogitDiff, Normalize::Empty, 2.0, 0.0, Some(1.99)).unwrap_err();
        assert!(e.contains("empty circuit's 1.9900"), "{e}");
        assert!(ok(Metric::Kl, Normalize::Full, 0.0, 3.0, None).is_ok());
    }
}
