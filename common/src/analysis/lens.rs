//! Logit-lens summaries: per prompt, the top-1 token after each layer at the last position;
//! over a dataset, where the answer first becomes top-1 and where it stays top-1 from.

use serde::Serialize;

/// Counts over a dataset of where the answer becomes the top-1 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LensCounts {
    /// Per layer, prompts whose answer is top-1 after that layer for the first time.
    pub first: Vec<usize>,
    /// Per layer, prompts whose answer is top-1 after that layer and every later one.
    pub stays: Vec<usize>,
    /// Per layer, prompts whose answer is top-1 after that layer.
    pub top1: Vec<usize>,
    /// Prompts whose answer is never top-1.
    pub never: usize,
    /// Prompts.
    pub prompts: usize,
}

/// Counts from `hits[prompt][layer]` (whether the answer is top-1 after the layer).
pub fn counts(hits: &[Vec<bool>], n_layers: usize) -> LensCounts {
    let mut c = LensCounts {
        first: vec![0; n_layers],
        stays: vec![0; n_layers],
        top1: vec![0; n_layers],
        never: 0,
        prompts: hits.len(),
    };
    for h in hits {
        for (l, &x) in h.iter().enumerate() {
            if x {
                c.top1[l] += 1;
            }
        }
        match h.iter().position(|&x| x) {
            Some(l) => c.first[l] += 1,
            None => c.never += 1,
        }
        // From the last miss on; only when the final layer gets it right.
        if h.last() == Some(&true) {
            let from = h.iter().rposition(|&x| !x).map_or(0, |l| l + 1);
            c.stays[from] += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_stays_differ_when_the_answer_flickers() {
        let c = counts(
            &[
                vec![false, true, false, true],
                vec![false, false, true, true],
                vec![false, false, false, false],
                vec![true, true, true, false],
            ],
            4,
        );
        assert_eq!(c.first, vec![1, 1, 1, 0]);
        assert_eq!(c.stays, vec![0, 0, 1, 1]);
        assert_eq!(c.top1, vec![1, 2, 2, 2]);
        assert_eq!(c.never, 1);
        assert_eq!(c.prompts, 4);
    }
}
