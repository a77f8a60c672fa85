//! Two pruning runs side by side: what each circuit holds, what it cost, and how the circuits
//! differ (plain greedy against attribute-then-verify, two thresholds, two datasets).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::guided::Guidance;
use crate::results::ResultDoc;

/// The circuit of a pruning run and what finding it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrunedCircuit {
    /// `edges` or `nodes`.
    pub over: &'static str,
    /// Edge names (`h3.1->m5`) or component names (`h9.1`, `m9`).
    pub items: BTreeSet<String>,
    /// Candidates pruned from (edges of the graph, components at the start).
    pub candidates: usize,
    /// Score of the circuit.
    pub score: f64,
    /// Exact evaluations.
    pub evaluations: usize,
    /// Passes.
    pub passes: usize,
    /// How attribution guided the run, if it did.
    pub guided: Option<Guidance>,
}

impl PrunedCircuit {
    /// The circuit of a `result.json`: an edge pruning run's, or the last circuit of node
    /// pruning (nested thresholds: the smallest).
    pub fn of(doc: &ResultDoc) -> Result<Self, String> {
        if let Some(r) = &doc.edge_prune {
            return Ok(PrunedCircuit {
                over: "edges",
                items: r.edges.iter().cloned().collect(),
                candidates: r.graph_edges,
                score: r.score,
                evaluations: r.evaluations,
                passes: r.passes,
                guided: r.guided.clone(),
            });
        }
        let runs = doc.prune.as_ref().map(|p| p.runs()).unwrap_or_default();
        let Some(last) = runs.last() else {
            let what = if doc.orders.is_some() || doc.edge_orders.is_some() {
                "an order study, many circuits"
            } else {
                "no pruning run"
            };
            return Err(format!(
                "holds {what} (kind = \"{}\"): compare results of one pruning run each (kind = \"prune\", or \"edge_prune\" without orders)",
                doc.spec.sweep.kind.name()
            ));
        };
        // Nested runs each start from the last circuit: the first started from every node.
        let first = &runs[0];
        let started = first.heads.len()
            + first.mlps.len()
            + first.decisions.iter().filter(|d| d.removed).count();
        Ok(PrunedCircuit {
            over: "nodes",
            items: last.heads.iter().chain(&last.mlps).cloned().collect(),
            candidates: started,
            score: last.score,
            evaluations: runs.iter().map(|r| r.evaluations).sum(),
            passes: runs.iter().map(|r| r.passes).sum(),
            guided: last.guided.clone(),
        })
    }
}

/// How two circuits overlap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    /// In both.
    pub both: Vec<String>,
    /// In the first only.
    pub only_first: Vec<String>,
    /// In the second only.
    pub only_second: Vec<String>,
    /// |both| / |either| (1 for two empty circuits).
    pub jaccard: f64,
}

/// The overlap of two circuits.
pub fn overlap(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Overlap {
    let both: Vec<String> = a.intersection(b).cloned().collect();
    let union = a.union(b).count();
    Overlap {
        jaccard: if union == 0 {
            1.0
        } else {
            both.len() as f64 / union as f64
        },
        both,
        only_first: a.difference(b).cloned().collect(),
        only_second: b.difference(a).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlap_by_hand() {
        let o = overlap(&set(&["a", "b", "c"]), &set(&["b", "c", "d", "e"]));
        assert_eq!(o.both, ["b", "c"]);
        assert_eq!(o.only_first, ["a"]);
        assert_eq!(o.only_second, ["d", "e"]);
        assert_eq!(o.jaccard, 2.0 / 5.0);
        assert_eq!(overlap(&set(&[]), &set(&[])).jaccard, 1.0);
    }
}
