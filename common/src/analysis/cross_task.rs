//! Cross-task circuits: which components the circuits of several tasks share, which belong to
//! one task only, and the circuits to score on every task's data (each task's own, the shared
//! sub-circuit and the union).

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
