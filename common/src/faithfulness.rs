//! MIB's faithfulness curve: circuits of fixed shares of the graph's edges, each scored as
//! `f = (m(C) - m(empty)) / (m(full) - m(empty))` (0 for the empty circuit, 1 for the full
//! model), and two areas over the shares: CPR, the area under `f` (higher is better), and CMD,
//! the area under `|1 - f|` (lower is better). Areas are trapezoids over the shares as
//! fractions (0.001 to 1), not rescaled: a curve at 1 throughout has CPR 0.999. The arithmetic
//! follows MIB's evaluation step by step, so the numbers agree to the last bit.

/// The shares of edges MIB evaluates, as fractions: 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %,
/// 20 %, 50 % and 100 %.
pub const FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// A faithfulness that cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum FaithfulnessError {
    /// The full model and the empty circuit score alike: `f` would divide by zero.
    #[error(
        "the full model and the empty circuit both score {0}: faithfulness divides by their difference"
    )]
    NoGap(f64),
}

/// How many edges MIB takes for `fraction` of a graph of `total` edges: the product rounded
/// toward zero (`int(fraction * total)` in floating point).
pub fn edges_at(fraction: f64, total: usize) -> usize {
    (fraction * total as f64) as usize
}

/// The faithfulness of a circuit whose metric is `circuit`, between the empty circuit's
/// metric `empty` (0) and the full model's `full` (1).
pub fn faithfulness(circuit: f64, empty: f64, full: f64) -> Result<f64, FaithfulnessError> {
    if full == empty {
        return Err(FaithfulnessError::NoGap(full));
    }
    Ok((circuit - empty) / (full - empty))
}

/// Trapezoids of `y(f)` over consecutive `(fraction, f)` points, summed left to right.
fn area(points: &[(f64, f64)], y: impl Fn(f64) -> f64) -> f64 {
    points.windows(2).fold(0.0, |sum, w| {
        let ((x1, f1), (x2, f2)) = (w[0], w[1]);
        sum + (x2 - x1) * ((y(f1) + y(f2)) / 2.0)
    })
}

/// CPR: the area under the faithfulness curve, `points` being `(fraction, f)` in increasing
/// fraction ([`FRACTIONS`] for MIB's).
pub fn cpr(points: &[(f64, f64)]) -> f64 {
    area(points, |f| f)
}

/// CMD: the area between the faithfulness curve and 1.
pub fn cmd(points: &[(f64, f64)]) -> f64 {
    area(points, |f| (1.0 - f).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: [f64; 10]) -> Vec<(f64, f64)> {
        FRACTIONS.into_iter().zip(f).collect()
    }

    #[test]
    fn faithfulness_is_0_for_the_empty_circuit_and_1_for_the_full_model() {
        for (empty, full) in [(2.0, 10.0), (-1.5, 3.25), (4.0, -2.0)] {
            assert_eq!(faithfulness(empty, empty, full).unwrap(), 0.0);
            assert_eq!(faithfulness(full, empty, full).unwrap(), 1.0);
        }
        // Halfway from 2 to 10 is 6.
        assert_eq!(faithfulness(6.0, 2.0, 10.0).unwrap(), 0.5);
        // Worse than the empty circuit is negative, better than the full model above 1.
        assert_eq!(faithfulness(0.0, 2.0, 10.0).unwrap(), -0.25);
        assert_eq!(faithfulness(12.0, 2.0, 10.0).unwrap(), 1.25);
        assert_eq!(
            faithfulness(1.0, 3.0, 3.0),
            Err(FaithfulnessError::NoGap(3.0))
        );
    }

    #[test]
    fn areas_by_hand() {
        // At 1 throughout: CPR is the width of the axis, 1 - 0.001; CMD is 0.
        let one = curve([1.0; 10]);
        assert!((cpr(&one) - 0.999).abs() < 1e-15);
        assert_eq!(cmd(&one), 0.0);
        // At 0 up to 20 %, 1 from 50 %: CPR = 0.3 * (0 + 1) / 2 + 0.5 * 1 = 0.65;
        // CMD = (0.2 - 0.001) * 1 + 0.3 * (1 + 0) / 2 + 0 = 0.349.
        let step = curve([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!((cpr(&step) - 0.65).abs() < 1e-12, "{}", cpr(&step));
        assert!((cmd(&step) - 0.349).abs() < 1e-12, "{}", cmd(&step));
        // Overshoot counts against CMD: 1.5 at 50 % only.
        // CPR = 0.3 * (1 + 1.5) / 2 + 0.5 * (1.5 + 1) / 2 + (0.2 - 0.001) * 1 = 0.375 + 0.625 +
        // 0.199 = 1.199; CMD = 0.3 * 0.5 / 2 + 0.5 * 0.5 / 2 = 0.075 + 0.125 = 0.2.
        let over = curve([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.0]);
        assert!((cpr(&over) - 1.199).abs() < 1e-12, "{}", cpr(&over));
        assert!((cmd(&over) - 0.2).abs() < 1e-12, "{}", cmd(&over));
        // Left to right, as MIB sums: bit for bit the same as the loop written out.
        let f = [0.1, 0.15, 0.3, 0.42, 0.5, 0.61, 0.77, 0.9, 0.97, 1.0];
        let mut by_hand = 0.0;
        for i in 0..9 {
            by_hand += (FRACTIONS[i + 1] - FRACTIONS[i]) * ((f[i] + f[i + 1]) / 2.0);
        }
        assert_eq!(cpr(&curve(f)), by_hand);
        // A single point has no area.
        assert_eq!(cpr(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn edge_counts_round_toward_zero() {
        // GPT-2 small's 32,491 edges.
        let counts: Vec<usize> = FRACTIONS.iter().map(|&f| edges_at(f, 32_491)).collect();
        assert_eq!(
            counts,
            [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
        );
        assert_eq!(edges_at(0.001, 999), 0);
        assert_eq!(edges_at(0.05, 20), 1);
        assert_eq!(edges_at(1.0, 0), 0);
    }
}
