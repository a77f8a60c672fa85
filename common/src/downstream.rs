//! The downstream sweep (`kind = "downstream"`): which head sets a study ablates (the full
//! model, a circuit's heads, seeded random head sets as the control), what its mean ablation
//! averages, and the spread of the random sets' accuracies. The tasks themselves are in
//! `tasks::downstream`.

use serde::{Deserialize, Serialize};

use crate::Component;
use crate::rng::Rng;

/// `k` random sets of `size` heads, drawn without replacement within a set from every head of
/// an `n_layers` x `n_heads` model, set `i` from its own stream of `seed`: the same seed gives
/// the same sets whatever subset of them a shard draws.
pub fn random_head_sets(
    n_layers: usize,
    n_heads: usize,
    size: usize,
    seed: u64,
    sets: std::ops::Range<usize>,
) -> Vec<Vec<Component>> {
    let all: Vec<Component> = (0..n_layers)
        .flat_map(|layer| (0..n_heads).map(move |head| Component::Head { layer, head }))
        .collect();
    let size = size.min(all.len());
    sets.map(|i| {
        let mut rng = Rng::derive(seed, &format!("head-set-{i}"));
        let mut pool = all.clone();
        let mut set = vec![];
        for _ in 0..size {
            let j = rng.below(pool.len());
            set.push(pool.swap_remove(j));
        }
        set.sort();
        set
    })
    .collect()
}

/// The sets of a downstream study, in shard order: the full model (nothing ablated), the
/// circuit's heads when a circuit is given, then `[sweep] random_sets` random head sets (default 20) of
/// `set_size` heads (default: the circuit's heads, else 10) drawn from `[sweep] seed`.
pub fn study_sets(
    sweep: &crate::spec::SweepKindSpec,
    circuit: Option<&[Component]>,
    n_layers: usize,
    n_heads: usize,
) -> Vec<(String, Vec<Component>)> {
    let mut sets = vec![("full model".to_string(), vec![])];
    // The study ablates heads: a circuit's MLPs are left in place, as random sets are heads.
    let circuit_heads: Option<Vec<Component>> = circuit.map(|c| {
        c.iter()
            .filter(|x| matches!(x, Component::Head { .. }))
            .copied()
            .collect()
    });
    if let Some(c) = &circuit_heads {
        sets.push(("circuit heads".to_string(), c.clone()));
    }
    let size = sweep
        .set_size
        .or(circuit_heads.map(|c| c.len()).filter(|&n| n > 0))
        .unwrap_or(10);
    let k = sweep.random_sets.unwrap_or(20);
    for (i, s) in random_head_sets(n_layers, n_heads, size, sweep.seed, 0..k)
        .into_iter()
        .enumerate()
    {
        sets.push((format!("random {i}"), s));
    }
    sets
}

/// What a downstream study's mean ablation averages: generated positions have no per-position
/// counterpart, so one mean per component serves every position.
pub const MEAN_OVER: &str =
    "every position of every prompt of every task, unablated: the same value at every position";

/// The ablation a downstream study's results record: `{"ablation": "zero"}`, or
/// `{"ablation": "mean", "mean_over": MEAN_OVER}`.
pub fn ablation_record(kind: crate::spec::AblationKind) -> serde_json::Value {
    let mut v = serde_json::json!({ "ablation": kind });
    if kind == crate::spec::AblationKind::Mean {
        v["mean_over"] = serde_json::json!(MEAN_OVER);
    }
    v
}

/// Mean, minimum, maximum and standard deviation of accuracies (in %).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Population standard deviation.
    pub std: f64,
}

impl Spread {
    /// The spread of `xs` (`None` when empty).
    pub fn of(xs: &[f64]) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Some(Spread {
            mean,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            std: var.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablation_record_names_the_kind_and_what_a_mean_is_over() {
        use crate::spec::AblationKind;
        assert_eq!(
            ablation_record(AblationKind::Zero),
            serde_json::json!({"ablation": "zero"})
        );
        let m = ablation_record(AblationKind::Mean);
        assert_eq!(m["ablation"], "mean");
        assert!(
            m["mean_over"]
                .as_str()
                .unwrap()
                .contains("every position of every prompt")
        );
    }

    #[test]
    fn random_sets_are_seeded_distinct_and_shard_independent() {
        let all = random_head_sets(12, 12, 10, 3, 0..20);
        assert_eq!(all.len(), 20);
        for s in &all {
            let mut d = s.clone();
            d.dedup();
            assert_eq!(d.len(), 10);
        }
        assert_ne!(all[0], all[1]);
        assert_eq!(random_head_sets(12, 12, 10, 3, 5..9), all[5..9].to_vec());
        assert_ne!(random_head_sets(12, 12, 10, 4, 0..1)[0], all[0]);
    }

    #[test]
    fn study_sets_are_full_model_circuit_then_random_sets_of_the_circuits_size() {
        let circuit: Vec<Component> = ["h1.2", "h3.0", "m2"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let sweep = crate::spec::SweepKindSpec {
            random_sets: Some(5),
            seed: 9,
            ..Default::default()
        };
        let sets = study_sets(&sweep, Some(&circuit), 4, 4);
        assert_eq!(sets.len(), 7);
        assert_eq!(sets[0], ("full model".to_string(), vec![]));
        assert_eq!(sets[1].1, circuit[..2].to_vec(), "the circuit's heads");
        assert!(sets[2..].iter().all(|(_, s)| s.len() == 2));
        assert_eq!(sets[2].1, random_head_sets(4, 4, 2, 9, 0..1)[0]);
        let plain = study_sets(&crate::spec::SweepKindSpec::default(), None, 12, 12);
        assert_eq!(plain.len(), 21);
        assert!(plain[1..].iter().all(|(_, s)| s.len() == 10));
    }

    #[test]
    fn spread_of_accuracies() {
        let s = Spread::of(&[0.0, 50.0, 100.0]).unwrap();
        assert_eq!((s.mean, s.min, s.max), (50.0, 0.0, 100.0));
        assert!((s.std - 40.824829).abs() < 1e-5);
        assert!(Spread::of(&[]).is_none());
    }
}
