//! `orders = "auto"`: an order study runs batches of orders until every inclusion frequency's
//! 95 % Wilson interval has a half-width of at most `ci_width`, or until `max_orders`. The rule
//! and the batch sizes depend on the circuits alone, never on the workers, so the same spec
//! stops at the same order on 1 or N workers.

use serde::{Deserialize, Serialize};

use crate::orders::{Z95, wilson};
use crate::spec::{OrderCount, SweepKindSpec};

/// Default half-width of the intervals an `auto` study runs to.
pub const DEFAULT_CI_WIDTH: f64 = 0.05;

/// Default cap of an `auto` study.
pub const DEFAULT_MAX_ORDERS: usize = 1000;

/// Shards of orders in an `auto` study's first batch.
pub const FIRST_BATCH_SHARDS: usize = 4;

/// The rule of an `auto` study.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoRule {
    /// The widest half-width allowed.
    pub ci_width: f64,
    /// The most orders.
    pub max_orders: usize,
    /// Orders per shard: batches are whole shards.
    pub per_shard: usize,
}

impl AutoRule {
    /// The rule of `sweep` (none unless `orders = "auto"`), batches of `per_shard` orders.
    pub fn of(sweep: &SweepKindSpec, per_shard: usize) -> Option<Self> {
        (sweep.orders == Some(OrderCount::Auto)).then(|| AutoRule {
            ci_width: sweep.ci_width.unwrap_or(DEFAULT_CI_WIDTH),
            max_orders: sweep.max_orders.unwrap_or(DEFAULT_MAX_ORDERS),
            per_shard,
        })
    }

    /// Orders of a new study's first batch (an extension's first batch is what [`Self::next`]
    /// asks of the earlier runs).
    pub fn first_batch(&self) -> usize {
        (FIRST_BATCH_SHARDS * self.per_shard).min(self.max_orders)
    }

    /// What to do after `n` orders whose circuits hold each item `counts` times (items held by
    /// none may be left out: theirs is the narrowest interval there is).
    pub fn next(&self, counts: &[usize], n: usize) -> Next {
        let widest = counts
            .iter()
            .map(|&k| half_width(k, n))
            .fold(half_width(0, n), f64::max);
        let state = AutoState {
            ci_width: self.ci_width,
            max_orders: self.max_orders,
            widest,
            converged: widest <= self.ci_width,
        };
        if state.converged || n >= self.max_orders {
            return Next::Stop(state);
        }
        // The normal approximation of the orders the widest interval needs: at most doubling
        // the study, so that one noisy estimate cannot overshoot by much.
        let z2 = Z95 * Z95;
        let need = counts
            .iter()
            .map(|&k| {
                let p = k as f64 / n.max(1) as f64;
                (z2 * p * (1.0 - p) / (self.ci_width * self.ci_width)).ceil() as usize
            })
            .max()
            .unwrap_or(0);
        let more = need
            .saturating_sub(n)
            .clamp(self.per_shard, n.max(self.per_shard))
            .next_multiple_of(self.per_shard)
            .min(self.max_orders - n);
        Next::More(more)
    }
}

/// Half the width of the 95 % Wilson interval of `k` of `n`.
pub fn half_width(k: usize, n: usize) -> f64 {
    let [lo, hi] = wilson(k, n);
    (hi - lo) / 2.0
}

/// What an `auto` study does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run this many more orders.
    More(usize),
    /// Stop: converged, or at the cap.
    Stop(AutoState),
}

/// Where an `auto` study stopped (`result.json`'s `orders.auto`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutoState {
    /// The half-width it ran to.
    pub ci_width: f64,
    /// Its cap.
    pub max_orders: usize,
    /// The widest half-width of any frequency's interval at the end.
    pub widest: f64,
    /// Whether every interval is narrow enough (false: stopped at the cap).
    pub converged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> AutoRule {
        AutoRule {
            ci_width: 0.05,
            max_orders: 1000,
            per_shard: 16,
        }
    }

    #[test]
    fn half_widths_by_hand() {
        // 50 of 100: centre 0.5, half-width 1.96 sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100).
        let z = Z95;
        let by_hand = z * (0.0025f64 + z * z / 40000.0).sqrt() / (1.0 + z * z / 100.0);
        assert!((half_width(50, 100) - by_hand).abs() < 1e-12);
        assert!((half_width(50, 100) - 0.0962).abs() < 1e-4);
        // 0 of 100: [0, z^2 / (100 + z^2)].
        assert!((half_width(0, 100) - z * z / (100.0 + z * z) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn stops_when_every_interval_is_narrow_enough() {
        // At 400 orders a frequency of 0.5 has half-width 0.0488: converged.
        match rule().next(&[200, 400, 3], 400) {
            Next::Stop(s) => {
                assert!(s.converged);
                assert!((s.widest - half_width(200, 400)).abs() < 1e-15);
            }
            n => panic!("{n:?}"),
        }
        // At 384 it is 0.0498, at 368 0.0508: the normal approximation asks for 385 orders,
        // 17 more, rounded up to two shards.
        assert!(half_width(192, 384) <= 0.05);
        assert!(half_width(184, 368) > 0.05);
        assert_eq!(rule().next(&[184, 368], 368), Next::More(32));
        assert!(matches!(rule().next(&[192, 384], 384), Next::Stop(_)));
    }

    #[test]
    fn batches_are_whole_shards_at_most_doubling_within_the_cap() {
        // 64 orders, one item at 0.5: needs 385 (normal approximation), so doubles: 64 more.
        assert_eq!(rule().next(&[32, 64, 64], 64), Next::More(64));
        // 300 orders at 0.5: needs 85 more, rounded up to 96.
        assert_eq!(rule().next(&[150], 300), Next::More(96));
        // At 0.1 of 200 the half-width is 0.042: converged; at 0.3 of 200, 0.063: 123 more
        // needed (323 in all), rounded up to 128.
        assert!(matches!(rule().next(&[20], 200), Next::Stop(_)));
        assert_eq!(rule().next(&[60], 200), Next::More(128));
        // The cap: 990 orders of a cap of 1000 run 10 more, then stop unconverged.
        let tight = AutoRule {
            ci_width: 0.001,
            ..rule()
        };
        assert_eq!(tight.next(&[495], 990), Next::More(10));
        match tight.next(&[500], 1000) {
            Next::Stop(s) => assert!(!s.converged && s.widest > 0.001),
            n => panic!("{n:?}"),
        }
        assert_eq!(tight.first_batch(), 64);
        let small = AutoRule {
            max_orders: 20,
            ..rule()
        };
        assert_eq!(small.first_batch(), 20);
    }
}
