//! Metrics over last-position logits (spec section 4), and how a metric becomes a score.

use crate::spec::{Metric, Normalize};

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

/// The score of a metric value: `100 * m / full`, or `100 * (m - corrupt) / (full - corrupt)`;
/// KL is reported as is (nats, 0 for the full model).
pub fn score(metric: Metric, normalize: Normalize, m: f64, full: f64, corrupt: f64) -> f64 {
    match (metric, normalize) {
        (Metric::Kl, _) => m,
        (_, Normalize::Full) => 100.0 * m / full,
        (_, Normalize::CleanCorrupt) => 100.0 * (m - corrupt) / (full - corrupt),
    }
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
            score(Metric::LogitDiff, Normalize::Full, 2.0, 4.0, 1.0),
            50.0
        );
        assert_eq!(
            score(Metric::LogitDiff, Normalize::CleanCorrupt, 2.5, 4.0, 1.0),
            50.0
        );
        assert_eq!(score(Metric::Kl, Normalize::Full, 0.3, 4.0, 1.0), 0.3);
    }
}
