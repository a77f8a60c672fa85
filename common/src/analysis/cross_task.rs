//! Cross-task circuits: which components the circuits of several tasks share, which belong to
//! one task only, and the circuits to score on every task's data (each task's own, the shared
//! sub-circuit and the union), and the score each circuit's own run recorded.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::Component;

/// The set algebra of named circuits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    /// The tasks, in the order given.
    pub tasks: Vec<String>,
    /// Components in every task's circuit (the shared sub-circuit).
    pub shared: Vec<Component>,
    /// Components in any task's circuit.
    pub union: Vec<Component>,
    /// Per task, components in its circuit only.
    pub only: Vec<Vec<Component>>,
    /// Every non-empty combination of tasks (bit `i` = task `i`) with the components in
    /// exactly those tasks' circuits, largest groups first: the rows of an UpSet figure.
    pub exclusive: Vec<(u32, Vec<Component>)>,
    /// Pairwise Jaccard similarity `[tasks][tasks]`.
    pub jaccard: Vec<Vec<f64>>,
}

/// What a results folder records of its circuit's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedKind {
    /// A pruning run's last circuit: the very circuit scored here.
    Circuit,
    /// An order study records no score of its core: the mean score of its orders' circuits
    /// (each holds the core and more, so the core's own score is usually lower).
    OrdersMean,
}

impl RecordedKind {
    /// The name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            RecordedKind::Circuit => "circuit",
            RecordedKind::OrdersMean => "orders_mean",
        }
    }
}

/// A circuit's score as its own run recorded it, in %.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecordedScore {
    /// The score.
    pub score: f64,
    /// What it is the score of.
    pub kind: RecordedKind,
}

impl RecordedScore {
    /// Re-scoring the same circuit on the same data may differ by this much (pp) before the
    /// difference means the data, spec or model changed.
    pub const TOLERANCE: f64 = 0.01;

    /// The score a `result.json` records for the circuit that `circuit_file` takes from it: a
    /// pruning run's last circuit score, else an order study's mean circuit score.
    pub fn from_result(doc: &crate::results::ResultDoc) -> Option<Self> {
        Self::recorded(
            doc.prune.as_ref(),
            doc.orders.as_ref().map(|o| o.scores.as_slice()),
        )
    }

    /// The score recorded by pruning runs, else by an order study's circuit scores.
    pub fn recorded(
        prune: Option<&crate::results::PruneRuns>,
        orders: Option<&[f64]>,
    ) -> Option<Self> {
        if let Some(runs) = prune {
            return runs.last().map(|r| RecordedScore {
                score: r.score,
                kind: RecordedKind::Circuit,
            });
        }
        let scores = orders.filter(|s| !s.is_empty())?;
        Some(RecordedScore {
            score: scores.iter().sum::<f64>() / scores.len() as f64,
            kind: RecordedKind::OrdersMean,
        })
    }

    /// Whether `rescored`, the circuit scored again on its own data, contradicts the record
    /// (only a record of the very circuit can).
    pub fn contradicted_by(&self, rescored: f64) -> bool {
        self.kind == RecordedKind::Circuit && (self.score - rescored).abs() > Self::TOLERANCE
    }
}

/// The overlap of `circuits` (one per task; at most 16 tasks).
pub fn overlap(tasks: &[String], circuits: &[Vec<Component>]) -> Overlap {
    let sets: Vec<BTreeSet<Component>> = circuits
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let union: BTreeSet<Component> = sets.iter().flatten().copied().collect();
    let mut groups: std::collections::BTreeMap<u32, Vec<Component>> = Default::default();
    for c in &union {
        let mask = sets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.contains(c))
            .fold(0u32, |m, (i, _)| m | (1 << i));
        groups.entry(mask).or_default().push(*c);
    }
    let all = if sets.is_empty() {
        0
    } else {
        (1u32 << sets.len()) - 1
    };
    let shared = groups.get(&all).cloned().unwrap_or_default();
    let only = (0..sets.len())
        .map(|i| groups.get(&(1 << i)).cloned().unwrap_or_default())
        .collect();
    let mut exclusive: Vec<(u32, Vec<Component>)> = groups.into_iter().collect();
    exclusive.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let jaccard = sets
        .iter()
        .map(|a| {
            sets.iter()
                .map(|b| {
                    let u = a.union(b).count();
                    if u == 0 {
                        1.0
                    } else {
                        a.intersection(b).count() as f64 / u as f64
                    }
                })
                .collect()
        })
        .collect();
    Overlap {
        tasks: tasks.to_vec(),
        shared,
        union: union.into_iter().collect(),
        only,
        exclusive,
        jaccard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(names: &[&str]) -> Vec<Component> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn recorded_scores_of_pruning_runs_and_order_studies() {
        use crate::prune::PruneResult;
        use crate::results::PruneRuns;
        let run = |score| PruneResult {
            threshold: Some(80.0),
            tau: None,
            heads: vec![],
            mlps: vec![],
            score,
            evaluations: 1,
            passes: 1,
            decisions: vec![],
            guided: None,
        };
        let pruned = |scores: &[f64]| {
            let runs = PruneRuns::of(scores.iter().map(|&s| run(s)).collect());
            RecordedScore::recorded(Some(&runs), None)
        };
        let studied = |scores: &[f64]| RecordedScore::recorded(None, Some(scores));
        let circuit = |score| {
            Some(RecordedScore {
                score,
                kind: RecordedKind::Circuit,
            })
        };
        assert_eq!(pruned(&[80.5]), circuit(80.5));
        // Nested thresholds: the last circuit, the one `circuit_file` takes.
        assert_eq!(pruned(&[97.1, 80.2]), circuit(80.2));
        let o = studied(&[80.0, 82.0, 84.5]).unwrap();
        assert_eq!(o.kind, RecordedKind::OrdersMean);
        assert!((o.score - 82.166_666_666_666_67).abs() < 1e-9);
        assert_eq!(studied(&[]), None);
        assert_eq!(RecordedScore::recorded(None, None), None);
        // Only a record of the very circuit is contradicted, beyond 0.01 pp.
        let c = circuit(80.0).unwrap();
        assert!(!c.contradicted_by(80.009) && !c.contradicted_by(79.991));
        assert!(c.contradicted_by(80.02) && c.contradicted_by(79.9));
        assert!(!o.contradicted_by(40.0));
        for k in [RecordedKind::Circuit, RecordedKind::OrdersMean] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn shared_only_and_exclusive_groups_partition_the_union() {
        let tasks: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let o = overlap(
            &tasks,
            &[
                c(&["h0.1", "h9.1", "m0", "h5.0"]),
                c(&["h0.1", "h9.1", "m0", "h7.2"]),
                c(&["h0.1", "h9.1", "h7.2", "h10.7"]),
            ],
        );
        assert_eq!(o.shared, c(&["h0.1", "h9.1"]));
        assert_eq!(o.only, vec![c(&["h5.0"]), vec![], c(&["h10.7"])]);
        assert_eq!(o.union.len(), 6);
        let n: usize = o.exclusive.iter().map(|(_, g)| g.len()).sum();
        assert_eq!(n, o.union.len());
        assert_eq!(o.exclusive[0], (0b111, c(&["h0.1", "h9.1"])));
        assert!(o.exclusive.contains(&(0b011, c(&["m0"]))));
        assert_eq!(o.jaccard[0][0], 1.0);
        assert!((o.jaccard[0][1] - 3.0 / 5.0).abs() < 1e-12);
    }
}
