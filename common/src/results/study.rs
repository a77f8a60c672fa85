//! The figures of an order study (of nodes or edges) beside its frequency drawings: the
//! distribution of pairwise Jaccard similarities, and every order's circuit by size and score.

use crate::orders::{JACCARD_BINS, SetStats};

use super::{Mark, bars_svg, scatter_svg};

/// `jaccard.svg`: the pairwise Jaccard similarities as a histogram (and those of the heads
/// alone, for node studies).
pub fn jaccard_svg(stats: &SetStats, title: &str) -> String {
    let w = 1.0 / JACCARD_BINS as f64;
    let categories: Vec<String> = (0..JACCARD_BINS)
        .map(|b| format!("{:.2}", b as f64 * w))
        .collect();
    let counts = |h: &[u64]| h.iter().map(|&c| c as f64).collect::<Vec<f64>>();
    let mut series = vec![("all".to_string(), counts(&stats.jaccard_histogram))];
    if let Some(h) = &stats.jaccard_heads_histogram {
        series.push(("heads only".to_string(), counts(h)));
    }
    let pairs: u64 = stats.jaccard_histogram.iter().sum();
    let mut sub = format!(
        "pairs of orders by the Jaccard similarity of their circuits (bins of {w:.2} from the value shown); {pairs} pairs, mean {:.3}",
        stats.jaccard_mean
    );
    if let Some(m) = stats.jaccard_heads_mean {
        sub.push_str(&format!(", heads only {m:.3}"));
    }
    bars_svg(&categories, &series, title, &sub)
}

/// `size-score.svg`: each order's circuit by its size (`unit`: components or edges) and score,
/// with named circuits marked and the pruning threshold dashed.
pub fn size_score_svg(
    sizes: &[usize],
    scores: &[f64],
    marks: &[Mark],
    threshold: Option<f64>,
    unit: &str,
    score_label: &str,
    title: &str,
) -> String {
    let points: Vec<(f64, f64)> = sizes
        .iter()
        .zip(scores)
        .map(|(&n, &s)| (n as f64, s))
        .collect();
    let sub = format!(
        "one dot per order's circuit ({} orders; darker where several coincide)",
        points.len()
    );
    scatter_svg(
        &points,
        marks,
        threshold,
        (&format!("circuit size ({unit})"), score_label),
        title,
        &sub,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::set_stats;
    use std::collections::BTreeSet;

    #[test]
    fn the_histogram_has_a_bar_per_bin_and_the_scatter_a_dot_per_order() {
        let sets: Vec<BTreeSet<u32>> = vec![
            [1, 2].into_iter().collect(),
            [1].into_iter().collect(),
            [1, 3].into_iter().collect(),
        ];
        let stats = set_stats(&sets);
        let svg = jaccard_svg(&stats, "t");
        assert_eq!(
            svg.matches("<rect x=").count(),
            JACCARD_BINS + 1,
            "bars and a legend"
        );
        assert!(svg.contains("<title>all 0.50: 2</title>"));
        assert!(svg.contains("3 pairs"));
        let svg = size_score_svg(
            &stats.sizes,
            &[81.0, 80.5, 82.0],
            &[("paper".into(), 2.0, 80.1)],
            Some(80.0),
            "components",
            "score (%)",
            "t",
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("circuit size (components)"));
    }
}
