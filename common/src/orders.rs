//! The order study: the same greedy pruning over many visiting orders, and how much the
//! circuit depends on the order (inclusion frequency, Jaccard similarity, core and union).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::component::Component;
use crate::prune::PruneResult;
use crate::rng::Rng;

/// `K` seeded random orders of all components (each a permutation).
pub fn random_orders(n_layers: usize, n_heads: usize, k: usize, seed: u64) -> Vec<Vec<Component>> {
    let mut rng = Rng::derive(seed, "orders");
    (0..k)
        .map(|_| {
            let mut o = Component::all(n_layers, n_heads);
            rng.shuffle(&mut o);
            o
        })
        .collect()
}

/// Reads explicit orders: a JSON list of lists of component names, each a permutation of every
/// component of the model. Errors name the file, the order and the component.
pub fn read_orders(
    path: &Path,
    n_layers: usize,
    n_heads: usize,
) -> Result<Vec<Vec<Component>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_orders(&text, &path.display().to_string(), n_layers, n_heads)
}

/// Parses explicit orders from `text` (see [`read_orders`]); errors start with `source`.
pub fn parse_orders(
    text: &str,
    source: &str,
    n_layers: usize,
    n_heads: usize,
) -> Result<Vec<Vec<Component>>, String> {
    let lists: Vec<Vec<String>> = serde_json::from_str(text)
        .map_err(|e| format!("{source}: expected a JSON list of lists of component names: {e}"))?;
    if lists.is_empty() {
        return Err(format!("{source}: no orders"));
    }
    if lists.len() > crate::limits::MAX_ORDERS {
        return Err(format!(
            "{source}: {} orders, more than the cap of {}",
            lists.len(),
            crate::limits::MAX_ORDERS
        ));
    }
    let all: BTreeSet<Component> = Component::all(n_layers, n_heads).into_iter().collect();
    lists
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let mut seen = BTreeSet::new();
            let mut order = Vec::with_capacity(names.len());
            for n in names {
                let c: Component = n
                    .parse()
                    .map_err(|e| format!("{source}: order {i}: {e}"))?;
                c.check(n_layers, n_heads)
                    .map_err(|e| format!("{source}: order {i}: {e}"))?;
                if !seen.insert(c) {
                    return Err(format!("{source}: order {i}: {c} appears twice"));
                }
                order.push(c);
            }
            if let Some(missing) = all.iter().find(|c| !seen.contains(c)) {
                return Err(format!(
                    "{source}: order {i}: {missing} is missing (each order lists all {} components)",
                    all.len()
                ));
            }
            Ok(order)
        })
        .collect()
}

/// One run of the study.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderRun {
    /// The visiting order.
    pub order: Vec<String>,
    /// Heads kept.
    pub heads: Vec<String>,
    /// MLPs kept.
    pub mlps: Vec<String>,
    /// Score of the circuit.
    pub score: f64,
    /// Candidate evaluations.
    pub evaluations: usize,
    /// What removing each component of `order` cost when the run first decided it (the run's
    /// part of [`marginal_effects`]); empty in results written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub costs: Vec<(String, f64)>,
}

/// The study's aggregates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderStudy {
    /// Every run.
    pub runs: Vec<OrderRun>,
    /// Agreement of the circuits (frequency, Jaccard, core, union, sizes).
    #[serde(flatten)]
    pub stats: SetStats,
    /// Circuit scores, run by run.
    pub scores: Vec<f64>,
    /// Each component's marginal effect when its order first decided it, over the orders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub marginal: BTreeMap<String, Marginal>,
    /// Where the paper-schedule circuit at the same rule sits among the orders' circuits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<Placement>,
    /// `orders = "auto"`: where the study stopped, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::convergence::AutoState>,
}

/// Where one circuit (the paper schedule's) sits among an order study's circuits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    /// Its components.
    pub components: Vec<String>,
    /// Its score.
    pub score: f64,
    /// Share of the orders' circuits no larger than it.
    pub size_quantile: f64,
    /// Share of the orders' circuits scoring no higher than it (under KL, a higher score is a
    /// worse circuit).
    pub score_quantile: f64,
    /// Its mean Jaccard similarity with the orders' circuits.
    pub jaccard_mean: f64,
    /// Its smallest and largest Jaccard similarity with them.
    pub jaccard_range: [f64; 2],
}

/// Where `circuit` (scoring `score`) sits among `sets` (scoring `scores`).
pub fn place<T: Ord + std::fmt::Display>(
    circuit: &BTreeSet<T>,
    score: f64,
    sets: &[BTreeSet<T>],
    scores: &[f64],
) -> Placement {
    let k = sets.len().max(1) as f64;
    let js: Vec<f64> = sets
        .iter()
        .map(|s| {
            let union = s.union(circuit).count();
            if union == 0 {
                1.0
            } else {
                s.intersection(circuit).count() as f64 / union as f64
            }
        })
        .collect();
    Placement {
        components: circuit.iter().map(T::to_string).collect(),
        score,
        size_quantile: sets.iter().filter(|s| s.len() <= circuit.len()).count() as f64 / k,
        score_quantile: scores.iter().filter(|&&x| x <= score).count() as f64 / k,
        jaccard_mean: js.iter().sum::<f64>() / k,
        jaccard_range: [
            js.iter().copied().fold(1.0, f64::min),
            js.iter().copied().fold(0.0, f64::max),
        ],
    }
}

/// An item's marginal effect at the moment a run first decided it: what removing it from the
/// circuit of that moment costs (% points of the score lost; KL: nats gained), a Shapley-style
/// by-product of the decisions the runs make anyway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Marginal {
    /// Mean over the runs.
    pub mean: f64,
    /// 95 % interval of the mean (normal approximation, sample deviation); none with one run.
    pub ci: Option<[f64; 2]>,
    /// Runs that decided it (all, unless a run started without it).
    pub runs: usize,
    /// Edge order studies: the sum of squared deviations from the mean (Welford's), so that an
    /// extension of the study goes on from it without the earlier runs' costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m2: Option<f64>,
}

/// Marginal effects that go on from `start` (a study's, with `m2`) over more `costs`, each
/// added in turn by Welford's update: the same costs in the same order give the same bits
/// whether they come at once or in two parts.
pub fn running_marginals<'a>(
    mut start: BTreeMap<String, Marginal>,
    costs: impl IntoIterator<Item = (&'a str, f64)>,
) -> BTreeMap<String, Marginal> {
    for (item, x) in costs {
        let m = start.entry(item.to_string()).or_insert(Marginal {
            mean: 0.0,
            ci: None,
            runs: 0,
            m2: Some(0.0),
        });
        m.runs += 1;
        let d = x - m.mean;
        m.mean += d / m.runs as f64;
        m.m2 = Some(m.m2.unwrap_or(0.0) + d * (x - m.mean));
    }
    for m in start.values_mut() {
        let n = m.runs as f64;
        m.ci = (m.runs > 1).then(|| {
            let var = m.m2.unwrap_or(0.0) / (n - 1.0);
            let half = Z95 * (var / n).sqrt();
            [m.mean - half, m.mean + half]
        });
    }
    start
}

/// One decision of a run, as [`marginal_effects`] reads it: item, score without it, removed.
pub type Decided<'a> = (&'a str, f64, bool);

/// Marginal effects of every item over `runs` (each its decisions in order), every run having
/// started at `start` (the score of the graph pruned from); `kl` when lower scores are better.
pub fn marginal_effects<'a>(
    runs: impl IntoIterator<Item = Vec<Decided<'a>>>,
    start: f64,
    kl: bool,
) -> BTreeMap<String, Marginal> {
    let costs: Vec<Vec<(&str, f64)>> = runs
        .into_iter()
        .map(|d| first_costs(d, start, kl))
        .collect();
    marginals(costs.iter().flatten().map(|(i, c)| (*i, *c)))
}

/// What removing each item cost when a run (its decisions in order, from a graph scoring
/// `start`) first decided it, in the order decided.
pub fn first_costs<'a>(decisions: Vec<Decided<'a>>, start: f64, kl: bool) -> Vec<(&'a str, f64)> {
    let mut current = start;
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for (item, without, removed) in decisions {
        if seen.insert(item) {
            out.push((
                item,
                if kl {
                    without - current
                } else {
                    current - without
                },
            ));
        }
        if removed {
            current = without;
        }
    }
    out
}

/// Mean and interval of each item's costs, over the runs (in the order given).
pub(crate) fn marginals<'a>(
    costs: impl IntoIterator<Item = (&'a str, f64)>,
) -> BTreeMap<String, Marginal> {
    let mut effects: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (item, cost) in costs {
        effects.entry(item).or_default().push(cost);
    }
    effects
        .into_iter()
        .map(|(item, xs)| {
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let ci = (xs.len() > 1).then(|| {
                let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
                let half = Z95 * (var / n).sqrt();
                [mean - half, mean + half]
            });
            (
                item.to_string(),
                Marginal {
                    mean,
                    ci,
                    runs: xs.len(),
                    m2: None,
                },
            )
        })
        .collect()
}

/// How much a family of circuits agree (each a set of components or edges).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetStats {
    /// Share of circuits holding each item (items in no circuit omitted).
    pub frequency: BTreeMap<String, f64>,
    /// Mean pairwise Jaccard similarity (1 with a single circuit).
    pub jaccard_mean: f64,
    /// Smallest and largest pairwise Jaccard similarity.
    pub jaccard_range: [f64; 2],
    /// Node order studies: the mean pairwise Jaccard similarity of the heads alone (MLPs, kept
    /// in nearly every circuit, inflate `jaccard_mean`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaccard_heads_mean: Option<f64>,
    /// Node order studies: smallest and largest pairwise Jaccard similarity of the heads alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaccard_heads_range: Option<[f64; 2]>,
    /// Distribution of the pairwise Jaccard similarities: counts in [`JACCARD_BINS`] bins of
    /// equal width over [0, 1] (the last closed).
    #[serde(default)]
    pub jaccard_histogram: Vec<u64>,
    /// Node order studies: the same for the heads alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jaccard_heads_histogram: Option<Vec<u64>>,
    /// 95 % Wilson interval of each item's frequency (items in no circuit omitted: theirs is
    /// `[0, z^2 / (K + z^2)]` for K circuits).
    #[serde(default)]
    pub frequency_ci: BTreeMap<String, [f64; 2]>,
    /// Items in every circuit, in item order.
    pub core: Vec<String>,
    /// Items in any circuit, in item order.
    pub union: Vec<String>,
    /// The consensus: items in at least half the circuits, and its own exact score.
    #[serde(default)]
    pub consensus: Consensus,
    /// Circuit sizes.
    pub sizes: Vec<usize>,
}

/// An order study's consensus circuit: the items (components, or edges) in at least half of
/// the circuits.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Consensus {
    /// Its items, in item order.
    pub components: Vec<String>,
    /// Its score, evaluated exactly once the orders are done (in the unit of the runs'
    /// scores); absent in results written before it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

impl<'de> Deserialize<'de> for Consensus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Results written before the consensus was scored hold its items alone.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Items(Vec<String>),
            Scored {
                components: Vec<String>,
                score: Option<f64>,
            },
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Items(components) => Consensus {
                components,
                score: None,
            },
            Stored::Scored { components, score } => Consensus { components, score },
        })
    }
}

/// The two-sided 95 % quantile of the standard normal distribution.
pub(crate) const Z95: f64 = 1.959_963_984_540_054;

/// Bins of the Jaccard histograms.
pub const JACCARD_BINS: usize = 20;

/// The 95 % Wilson score interval of a proportion: `k` of `n` (`[0, 1]` with no trials). Unlike
/// the normal interval it stays inside [0, 1] and is not empty at 0 or `n`.
pub fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (k, n, z2) = (k as f64, n as f64, Z95 * Z95);
    let p = k / n;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// Pairwise Jaccard similarities of circuits: mean, range and histogram.
struct Pairs {
    mean: f64,
    range: [f64; 2],
    histogram: Vec<u64>,
}

/// Mean, smallest, largest and histogram of the pairwise Jaccard similarities of `sets` (two
/// empty sets are alike: 1; a single set: 1, no pairs). The K(K-1)/2 pairs are summed as they
/// come, on bitsets, so that ten thousand circuits cost seconds and no memory beyond the sets.
fn jaccard<T: Ord>(sets: &[BTreeSet<T>]) -> Pairs {
    let universe: BTreeSet<&T> = sets.iter().flatten().collect();
    let index: BTreeMap<&T, usize> = universe.into_iter().zip(0..).collect();
    let words = index.len().div_ceil(64);
    let bits: Vec<Vec<u64>> = sets
        .iter()
        .map(|s| {
            let mut b = vec![0u64; words];
            for item in s {
                let i = index[item];
                b[i / 64] |= 1 << (i % 64);
            }
            b
        })
        .collect();
    let (mut sum, mut n, mut lo, mut hi) = (0.0, 0u64, 1.0f64, 0.0f64);
    let mut histogram = vec![0u64; JACCARD_BINS];
    for (i, a) in bits.iter().enumerate() {
        for b in &bits[i + 1..] {
            let (mut inter, mut uni) = (0u32, 0u32);
            for (x, y) in a.iter().zip(b) {
                inter += (x & y).count_ones();
                uni += (x | y).count_ones();
            }
            let j = if uni == 0 {
                1.0
            } else {
                inter as f64 / uni as f64
            };
            sum += j;
            n += 1;
            histogram[((j * JACCARD_BINS as f64) as usize).min(JACCARD_BINS - 1)] += 1;
            lo = lo.min(j);
            hi = hi.max(j);
        }
    }
    let (mean, range) = if n == 0 {
        (1.0, [1.0, 1.0])
    } else {
        (sum / n as f64, [lo, hi])
    };
    Pairs {
        mean,
        range,
        histogram,
    }
}

/// How many of `sets` hold each item (items in none left out).
pub fn item_counts<T: Ord + Clone>(sets: &[BTreeSet<T>]) -> BTreeMap<T, usize> {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for s in sets {
        for c in s {
            *counts.entry(c.clone()).or_default() += 1;
        }
    }
    counts
}

/// The consensus of `sets`: the items in at least half of them, in item order.
pub fn consensus_items<T: Ord + Clone>(sets: &[BTreeSet<T>]) -> Vec<T> {
    item_counts(sets)
        .into_iter()
        .filter(|(_, n)| 2 * *n >= sets.len())
        .map(|(c, _)| c)
        .collect()
}

/// Inclusion frequency, pairwise Jaccard similarity, core and union of `sets`.
pub fn set_stats<T: Ord + Clone + std::fmt::Display>(sets: &[BTreeSet<T>]) -> SetStats {
    let k = sets.len().max(1) as f64;
    let counts = item_counts(sets);
    let pairs = jaccard(sets);
    SetStats {
        frequency: counts
            .iter()
            .map(|(c, n)| (c.to_string(), *n as f64 / k))
            .collect(),
        frequency_ci: counts
            .iter()
            .map(|(c, n)| (c.to_string(), wilson(*n, sets.len())))
            .collect(),
        jaccard_mean: pairs.mean,
        jaccard_range: pairs.range,
        jaccard_histogram: pairs.histogram,
        jaccard_heads_mean: None,
        jaccard_heads_range: None,
        jaccard_heads_histogram: None,
        core: counts
            .iter()
            .filter(|(_, n)| **n == sets.len())
            .map(|(c, _)| c.to_string())
            .collect(),
        union: counts.keys().map(T::to_string).collect(),
        consensus: Consensus {
            components: consensus_items(sets).iter().map(T::to_string).collect(),
            score: None,
        },
        sizes: sets.iter().map(BTreeSet::len).collect(),
    }
}

/// [`set_stats`] of node circuits, with the Jaccard similarity of their heads alone.
pub fn component_stats(sets: &[BTreeSet<Component>]) -> SetStats {
    let heads: Vec<BTreeSet<Component>> = sets
        .iter()
        .map(|s| {
            s.iter()
                .filter(|c| matches!(c, Component::Head { .. }))
                .copied()
                .collect()
        })
        .collect();
    let pairs = jaccard(&heads);
    SetStats {
        jaccard_heads_mean: Some(pairs.mean),
        jaccard_heads_range: Some(pairs.range),
        jaccard_heads_histogram: Some(pairs.histogram),
        ..set_stats(sets)
    }
}

/// A pruning run's circuit as a set.
pub fn circuit_set(r: &PruneResult) -> BTreeSet<Component> {
    names_set(r.heads.iter().chain(&r.mlps))
}

/// A study run's circuit as a set.
pub fn run_set(r: &OrderRun) -> BTreeSet<Component> {
    names_set(r.heads.iter().chain(&r.mlps))
}

fn names_set<'a>(names: impl Iterator<Item = &'a String>) -> BTreeSet<Component> {
    names.map(|n| n.parse().expect("names we wrote")).collect()
}

/// A study's run: its order and pruning result, pruned from a graph scoring `start`.
pub fn order_run(order: &[Component], r: &PruneResult, start: f64) -> OrderRun {
    let decisions = r
        .decisions
        .iter()
        .map(|d| (d.component.as_str(), d.score, d.removed))
        .collect();
    OrderRun {
        order: order.iter().map(Component::to_string).collect(),
        heads: r.heads.clone(),
        mlps: r.mlps.clone(),
        score: r.score,
        evaluations: r.evaluations,
        costs: first_costs(decisions, start, r.tau.is_some())
            .into_iter()
            .map(|(c, x)| (c.to_string(), x))
            .collect(),
    }
}

/// Aggregates per-order pruning results, every run pruned from a graph scoring `start`, and
/// places the paper-schedule run `paper` among them.
pub fn summarize(
    orders: &[Vec<Component>],
    results: &[PruneResult],
    start: f64,
    paper: Option<&PruneResult>,
) -> OrderStudy {
    let runs = orders
        .iter()
        .zip(results)
        .map(|(o, r)| order_run(o, r, start))
        .collect();
    summarize_runs(runs, paper)
}

/// Aggregates a study's runs (those of an earlier study it extends first) and places the
/// paper-schedule run `paper` among them.
pub fn summarize_runs(runs: Vec<OrderRun>, paper: Option<&PruneResult>) -> OrderStudy {
    let sets: Vec<BTreeSet<Component>> = runs.iter().map(run_set).collect();
    let scores: Vec<f64> = runs.iter().map(|r| r.score).collect();
    let marginal = marginals(
        runs.iter()
            .flat_map(|r| r.costs.iter().map(|(c, x)| (c.as_str(), *x))),
    );
    OrderStudy {
        stats: component_stats(&sets),
        paper: paper
            .filter(|_| !sets.is_empty())
            .map(|p| place(&circuit_set(p), p.score, &sets, &scores)),
        scores,
        marginal,
        runs,
        auto: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(names: &[&str]) -> PruneResult {
        let (h, m): (Vec<String>, Vec<String>) = names
            .iter()
            .map(|s| s.to_string())
            .partition(|n| n.starts_with('h'));
        PruneResult {
            threshold: Some(80.0),
            tau: None,
            heads: h,
            mlps: m,
            score: 81.0,
            evaluations: 3,
            passes: 2,
            decisions: vec![],
            guided: None,
        }
    }

    #[test]
    fn frequency_jaccard_core_union_by_hand() {
        let orders = random_orders(1, 2, 3, 0);
        let res = [
            result(&["h0.0", "m0"]),
            result(&["h0.0"]),
            result(&["h0.0", "h0.1"]),
        ];
        let s = summarize(&orders, &res, 100.0, None);
        assert_eq!(s.stats.frequency["h0.0"], 1.0);
        assert!((s.stats.frequency["m0"] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.stats.core, ["h0.0"]);
        assert_eq!(s.stats.union, ["h0.0", "h0.1", "m0"]);
        // In at least half of the circuits: h0.0 alone (m0 and h0.1 are in one of three).
        assert_eq!(s.stats.consensus.components, ["h0.0"]);
        let two = summarize(&orders[..2], &res[..2], 100.0, None);
        assert_eq!(two.stats.consensus.components, ["h0.0", "m0"]);
        // Results written before the consensus was scored hold its items alone.
        let old: Consensus = serde_json::from_str(r#"["h0.0", "m0"]"#).unwrap();
        assert_eq!((old.components.len(), old.score), (2, None));
        let new: Consensus =
            serde_json::from_str(r#"{"components": ["h0.0"], "score": 81.5}"#).unwrap();
        assert_eq!(new.score, Some(81.5));
        // Pairs: {h0.0,m0}-{h0.0} = 1/2, {h0.0,m0}-{h0.0,h0.1} = 1/3, {h0.0}-{h0.0,h0.1} = 1/2.
        assert!((s.stats.jaccard_mean - (0.5 + 1.0 / 3.0 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(s.stats.jaccard_range, [1.0 / 3.0, 0.5]);
        assert_eq!(s.stats.sizes, [2, 1, 2]);
        // Heads alone: {h0.0}-{h0.0} = 1, {h0.0}-{h0.0,h0.1} = 1/2 (twice).
        assert!((s.stats.jaccard_heads_mean.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.stats.jaccard_heads_range, Some([0.5, 1.0]));
        // Histograms of 20 bins: 1/3 falls in [0.30, 0.35), 1/2 in [0.50, 0.55), 1 in the last.
        let mut h = vec![0u64; JACCARD_BINS];
        h[6] = 1;
        h[10] = 2;
        assert_eq!(s.stats.jaccard_histogram, h);
        let mut h = vec![0u64; JACCARD_BINS];
        h[10] = 2;
        h[19] = 1;
        assert_eq!(s.stats.jaccard_heads_histogram, Some(h));
        // Wilson intervals of 3 of 3 and 1 of 3.
        assert_eq!(s.stats.frequency_ci["h0.0"], wilson(3, 3));
        assert_eq!(s.stats.frequency_ci["m0"], wilson(1, 3));
    }

    #[test]
    fn the_paper_circuit_is_placed_among_the_orders_circuits() {
        let orders = random_orders(1, 2, 3, 0);
        let res = [
            result(&["h0.0", "m0"]),
            result(&["h0.0"]),
            result(&["h0.0", "h0.1"]),
        ];
        let mut paper = result(&["h0.0", "m0"]);
        paper.score = 81.0;
        let s = summarize(&orders, &res, 100.0, Some(&paper));
        let p = s.paper.unwrap();
        assert_eq!(p.components, ["h0.0", "m0"]);
        // Sizes 2, 1, 2: all no larger; scores all 81: all no higher.
        assert_eq!((p.size_quantile, p.score_quantile), (1.0, 1.0));
        // Jaccard 1, 1/2, 1/3.
        assert!((p.jaccard_mean - (1.0 + 0.5 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(p.jaccard_range, [1.0 / 3.0, 1.0]);
    }

    #[test]
    fn marginal_effects_by_hand() {
        // Run 1 decides a (100 -> 90, removed), b (90 -> 60, kept); run 2 decides b first
        // (100 -> 80, kept), then a (100 -> 95, removed), then b again (pass 2: not counted).
        let runs = vec![
            vec![("a", 90.0, true), ("b", 60.0, false)],
            vec![("b", 80.0, false), ("a", 95.0, true), ("b", 70.0, false)],
        ];
        let m = marginal_effects(runs, 100.0, false);
        assert_eq!(m["a"].mean, 7.5);
        assert_eq!(m["b"].mean, 25.0);
        assert_eq!(m["a"].runs, 2);
        // Sample deviation of (10, 5): 3.5355; half-width 1.959964 x 3.5355 / sqrt 2 = 4.9.
        let [lo, hi] = m["a"].ci.unwrap();
        assert!((lo - (7.5 - 4.899910)).abs() < 1e-5 && (hi - (7.5 + 4.899910)).abs() < 1e-5);
        // KL: lower is better, the cost is the divergence gained.
        let kl = marginal_effects(vec![vec![("a", 0.3, true), ("b", 0.5, false)]], 0.1, true);
        assert!((kl["a"].mean - 0.2).abs() < 1e-12 && (kl["b"].mean - 0.2).abs() < 1e-12);
        assert_eq!(kl["a"].ci, None);
    }

    #[test]
    fn running_marginals_go_on_from_a_stored_part_bit_for_bit() {
        let costs: Vec<(&str, f64)> = (0..40)
            .map(|i| (["a", "b", "c"][i % 3], (i as f64 * 0.37).sin() * 3.0 + 0.1))
            .collect();
        let at_once = running_marginals(BTreeMap::new(), costs.iter().copied());
        let first = running_marginals(BTreeMap::new(), costs[..17].iter().copied());
        // Through result.json and back, as an extension reads it.
        let stored: BTreeMap<String, Marginal> =
            serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
        let extended = running_marginals(stored, costs[17..].iter().copied());
        assert_eq!(extended, at_once);
        // The same statistics as the two-pass formula, to rounding.
        let two_pass = marginals(costs.iter().copied());
        for (item, m) in &at_once {
            let t = &two_pass[item];
            assert_eq!(m.runs, t.runs);
            assert!((m.mean - t.mean).abs() < 1e-12, "{item}");
            let (a, b) = (m.ci.unwrap(), t.ci.unwrap());
            assert!(
                (a[0] - b[0]).abs() < 1e-12 && (a[1] - b[1]).abs() < 1e-12,
                "{item}"
            );
        }
    }

    #[test]
    fn wilson_intervals_by_hand() {
        let close =
            |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).abs() < 1e-6 && (a[1] - b[1]).abs() < 1e-6;
        // 0 of 10: [0, z^2 / (10 + z^2)] with z = 1.959964 (z^2 = 3.841459).
        assert!(
            close(wilson(0, 10), [0.0, 3.841459 / 13.841459]),
            "{:?}",
            wilson(0, 10)
        );
        assert!(
            close(wilson(10, 10), [10.0 / 13.841459, 1.0]),
            "{:?}",
            wilson(10, 10)
        );
        // 5 of 10: centre 1/2, half-width z sqrt(1/40 + z^2/400) / (1 + z^2/10) = 0.263407.
        assert!(
            close(wilson(5, 10), [0.236593, 0.763407]),
            "{:?}",
            wilson(5, 10)
        );
        // 81 of 263: p = 0.307985, centre 0.310749, half-width 0.055461.
        assert!(
            close(wilson(81, 263), [0.255289, 0.366210]),
            "{:?}",
            wilson(81, 263)
        );
        assert_eq!(wilson(0, 0), [0.0, 1.0]);
        // The interval narrows as the orders grow.
        let w = |n: usize| {
            let [lo, hi] = wilson(n / 2, n);
            hi - lo
        };
        assert!(w(1000) < w(100) && w(100) < w(10));
    }

    #[test]
    fn heads_only_jaccard_ignores_the_mlps_and_counts_two_headless_circuits_alike() {
        let orders = random_orders(2, 2, 3, 0);
        // Identical MLPs, disjoint heads, and one circuit without heads.
        let res = [
            result(&["h0.0", "m0", "m1"]),
            result(&["h1.1", "m0", "m1"]),
            result(&["m0", "m1"]),
        ];
        let s = summarize(&orders, &res, 100.0, None);
        // All: {h0.0,m0,m1}-{h1.1,m0,m1} = 2/4, each with {m0,m1} = 2/3.
        assert!((s.stats.jaccard_mean - (0.5 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // Heads: {h0.0}-{h1.1} = 0, each with {} = 0.
        assert_eq!(s.stats.jaccard_heads_mean, Some(0.0));
        assert_eq!(s.stats.jaccard_heads_range, Some([0.0, 0.0]));
        // Two circuits of MLPs only: empty head sets are alike, as `jaccard_mean` counts them.
        let s = summarize(
            &orders[..2],
            &[result(&["m0"]), result(&["m1"])],
            100.0,
            None,
        );
        assert_eq!(s.stats.jaccard_heads_mean, Some(1.0));
        assert_eq!(s.stats.jaccard_heads_range, Some([1.0, 1.0]));
        // One order: 1, as for `jaccard_mean`.
        let s = summarize(&orders[..1], &res[..1], 100.0, None);
        assert_eq!(s.stats.jaccard_heads_mean, Some(1.0));
        assert_eq!(s.stats.jaccard_heads_range, Some([1.0, 1.0]));
        // Generic sets (edges) have none, and their JSON has no such field.
        let e = set_stats(&[BTreeSet::from(["a->b"]), BTreeSet::from(["a->b", "c->d"])]);
        assert_eq!(e.jaccard_heads_mean, None);
        let j = serde_json::to_value(&e).unwrap();
        assert!(j.get("jaccard_heads_mean").is_none() && j.get("jaccard_heads_range").is_none());
        assert!(j.get("jaccard_mean").is_some());
    }

    #[test]
    fn an_orders_file_beyond_the_cap_is_refused() {
        let text =
            serde_json::to_string(&vec![Vec::<String>::new(); crate::limits::MAX_ORDERS + 1])
                .unwrap();
        let e = parse_orders(&text, "o.json", 1, 2).unwrap_err();
        assert!(
            e.starts_with("o.json: 100001 orders, more than the cap"),
            "{e}"
        );
    }

    #[test]
    fn random_orders_are_seeded_permutations() {
        let a = random_orders(3, 4, 5, 9);
        assert_eq!(a, random_orders(3, 4, 5, 9));
        assert_ne!(a, random_orders(3, 4, 5, 10));
        for o in &a {
            let mut s = o.clone();
            s.sort();
            assert_eq!(
                s,
                Component::all(3, 4)
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn explicit_orders_are_checked() {
        let dir = std::env::temp_dir().join(format!("cs-orders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("o.json");
        let write = |t: &str| std::fs::write(&f, t).unwrap();
        write(r#"[["h0.0","m0","h0.1"],["m0","h0.1","h0.0"]]"#);
        assert_eq!(read_orders(&f, 1, 2).unwrap().len(), 2);
        write(r#"[["h0.0","m0","h40.2"]]"#);
        assert!(
            read_orders(&f, 1, 2)
                .unwrap_err()
                .contains("order 0: component `h40.2` does not exist")
        );
        write(r#"[["h0.0","m0"]]"#);
        assert!(
            read_orders(&f, 1, 2)
                .unwrap_err()
                .contains("h0.1 is missing")
        );
        write(r#"[["h0.0","m0","m0"]]"#);
        assert!(
            read_orders(&f, 1, 2)
                .unwrap_err()
                .contains("m0 appears twice")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
