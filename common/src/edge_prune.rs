//! Greedy pruning over edges: the same search as node pruning
//! ([`crate::greedy`]), over the edges of a graph. The default order visits receivers in reverse
//! topological order (the logits first) and, within a receiver, senders in reverse order; every
//! pass uses the same order. An order study gives each run its own seeded random order.

use serde::{Deserialize, Serialize};

use std::collections::BTreeSet;

use crate::edge::Edge;
use crate::greedy::{Greedy, Rule};
use crate::guided::{Guidance, Guided, Search};
use crate::orders::{Marginal, SetStats, first_costs, running_marginals, set_stats};
use crate::rng::Rng;

/// Order `index` of an edge order study: a seeded permutation of `edges`, drawn on its own so
/// that any shard can draw its orders without the others.
pub fn random_edge_order(edges: &[Edge], seed: u64, index: usize) -> Vec<Edge> {
    let mut rng = Rng::derive(seed, &format!("edge-order-{index}"));
    let mut o = edges.to_vec();
    rng.shuffle(&mut o);
    o
}

/// A short fingerprint of an edge order: the first 16 hex digits of the SHA-256 of its edge
/// names, one per line. An edge study records it for each run instead of the order itself (a
/// permutation of every edge of the graph), so that an extension can check that the earlier
/// runs were pruned in the orders the seed draws.
pub fn order_fingerprint(order: &[Edge]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in order {
        h.update(e.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The [`order_fingerprint`] of order `index` of an edge order study over `edges`.
pub fn seeded_order_fingerprint(edges: &[Edge], seed: u64, index: usize) -> String {
    order_fingerprint(&random_edge_order(edges, seed, index))
}

/// One run of an edge order study.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeRun {
    /// Edges kept.
    pub edges: Vec<String>,
    /// Score of the circuit.
    pub score: f64,
    /// Candidate evaluations.
    pub evaluations: usize,
    /// Passes over the edges.
    pub passes: usize,
    /// Its order's [`order_fingerprint`] (absent in results written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// The aggregates of an edge order study.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeOrderStudy {
    /// Kept edges, score and evaluations of each run (decisions left out).
    pub runs: Vec<EdgeRun>,
    /// Agreement of the edge circuits.
    #[serde(flatten)]
    pub stats: SetStats,
    /// Circuit scores, run by run.
    pub scores: Vec<f64>,
    /// Each edge's marginal effect when its order first decided it, over the orders (with
    /// `m2`, from which an extension goes on).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub marginal: std::collections::BTreeMap<String, Marginal>,
    /// `orders = "auto"`: where the study stopped, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::convergence::AutoState>,
}

/// Aggregates the runs of an edge order study, every run pruned from a graph scoring `start`,
/// run `i` in order `orders[i]` (its fingerprint).
pub fn summarize_edge_orders(
    runs: &[EdgePruneResult],
    orders: &[String],
    start: f64,
) -> EdgeOrderStudy {
    summarize_edge_study(None, runs, orders, start)
}

/// Aggregates an edge order study: the runs of an `earlier` study it extends, then `results`
/// (every run pruned from a graph scoring `start`, in the orders `orders` fingerprint). The
/// marginal effects go on from the earlier study's, so the result is the one the larger study
/// gives at once.
pub fn summarize_edge_study(
    earlier: Option<&EdgeOrderStudy>,
    results: &[EdgePruneResult],
    orders: &[String],
    start: f64,
) -> EdgeOrderStudy {
    assert_eq!(results.len(), orders.len(), "an order for every run");
    let mut runs: Vec<EdgeRun> = earlier.map_or(vec![], |e| e.runs.clone());
    runs.extend(results.iter().zip(orders).map(|(r, o)| EdgeRun {
        edges: r.edges.clone(),
        score: r.score,
        evaluations: r.evaluations,
        passes: r.passes,
        order: Some(o.clone()),
    }));
    let costs: Vec<Vec<(&str, f64)>> = results
        .iter()
        .map(|r| {
            let decisions = r
                .decisions
                .iter()
                .map(|d| (d.edge.as_str(), d.score, d.removed))
                .collect();
            first_costs(decisions, start, r.tau.is_some())
        })
        .collect();
    let sets: Vec<BTreeSet<Edge>> = runs.iter().map(EdgeRun::edge_set).collect();
    EdgeOrderStudy {
        stats: set_stats(&sets),
        scores: runs.iter().map(|r| r.score).collect(),
        marginal: running_marginals(
            earlier.map_or_else(Default::default, |e| e.marginal.clone()),
            costs.iter().flatten().copied(),
        ),
        runs,
        auto: None,
    }
}

impl EdgeRun {
    /// The kept edges as a set.
    pub fn edge_set(&self) -> BTreeSet<Edge> {
        self.edges
            .iter()
            .map(|e| e.parse().expect("names we wrote"))
            .collect()
    }
}

/// One decision of an edge pruning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeDecision {
    /// The candidate edge.
    pub edge: String,
    /// Score of the circuit without it.
    pub score: f64,
    /// Whether it was removed.
    pub removed: bool,
    /// Pass number, from 0.
    pub pass: usize,
}

/// The outcome of an edge pruning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgePruneResult {
    /// The % threshold used (metrics scored in % of the full model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The KL tolerance in nats used (`metric = "kl"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// Edges kept, in graph order.
    pub edges: Vec<String>,
    /// Edges in the graph pruned from.
    pub graph_edges: usize,
    /// Score of the final circuit.
    pub score: f64,
    /// Exact evaluations (plain greedy: one per decision).
    pub evaluations: usize,
    /// Passes run (the last removed nothing).
    pub passes: usize,
    /// Every decision in order.
    pub decisions: Vec<EdgeDecision>,
    /// With `candidates = "attribution"`: the attribution and what it saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<Guidance>,
}

impl EdgePruneResult {
    /// The rule the run pruned by.
    pub fn rule(&self) -> Rule {
        Rule::recorded(self.threshold, self.tau)
    }

    /// The kept edges as a set.
    pub fn edge_set(&self) -> BTreeSet<Edge> {
        self.edges
            .iter()
            .map(|e| e.parse().expect("names we wrote"))
            .collect()
    }

    /// The paper's one-pass rule over single-edge scores (path patching): an edge is kept when
    /// ablating it alone costs more than the rule allows (`scores[i]` of `edges[i]`, the graph
    /// scoring `start`); `score` is the kept circuit's own score.
    pub fn one_pass(edges: &[Edge], scores: &[f64], rule: Rule, start: f64, score: f64) -> Self {
        let decisions: Vec<EdgeDecision> = edges
            .iter()
            .zip(scores)
            .map(|(e, &s)| EdgeDecision {
                edge: e.to_string(),
                score: s,
                removed: rule.removes(s, start),
                pass: 0,
            })
            .collect();
        EdgePruneResult {
            threshold: rule.threshold(),
            tau: rule.tau(),
            edges: decisions
                .iter()
                .filter(|d| !d.removed)
                .map(|d| d.edge.clone())
                .collect(),
            graph_edges: edges.len(),
            score,
            evaluations: edges.len(),
            passes: 1,
            decisions,
            guided: None,
        }
    }
}

/// An edge pruning run in progress.
#[derive(Debug, Clone)]
pub struct EdgePruner {
    edges: Vec<Edge>,
    greedy: Search,
}

impl EdgePruner {
    /// A run over `edges` (the graph, every edge kept), whose score is `start_score`, visiting
    /// `order` (a permutation of `edges`) or, by default, the edges in reverse graph order.
    pub fn new(
        edges: Vec<Edge>,
        order: Option<&[Edge]>,
        rule: Rule,
        start_score: f64,
    ) -> Result<Self, String> {
        let index: std::collections::HashMap<Edge, usize> =
            edges.iter().enumerate().map(|(i, e)| (*e, i)).collect();
        let numbered: Vec<usize> = match order {
            None => (0..edges.len()).rev().collect(),
            Some(o) => {
                if o.len() != edges.len() {
                    return Err(format!(
                        "an order of {} edges for a graph of {}",
                        o.len(),
                        edges.len()
                    ));
                }
                let mut seen = vec![false; edges.len()];
                let mut out = Vec::with_capacity(o.len());
                for e in o {
                    let i = *index
                        .get(e)
                        .ok_or_else(|| format!("{e} is not in the graph"))?;
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(format!("{e} appears twice in the order"));
                    }
                    out.push(i);
                }
                out
            }
        };
        let n = edges.len();
        Ok(EdgePruner {
            edges,
            greedy: Search::Greedy(Greedy::new(
                vec![numbered],
                rule,
                vec![true; n],
                start_score,
            )),
        })
    }

    /// Attribute, then verify: a run over `edges` visiting them by `cost` (per edge: the
    /// estimated harm of ablating it, lowest first) and removing them in blocks, each verified
    /// by an exact evaluation (see [`crate::guided`]).
    pub fn guided(edges: Vec<Edge>, cost: &[f64], rule: Rule, start_score: f64) -> Self {
        assert_eq!(cost.len(), edges.len(), "a cost per edge");
        let n = edges.len();
        EdgePruner {
            edges,
            greedy: Search::Guided(Guided::new(cost, rule, vec![true; n], start_score)),
        }
    }

    /// A guided run's edges removed so far (`None` for plain greedy).
    pub fn removed(&self) -> Option<Vec<Edge>> {
        match &self.greedy {
            Search::Guided(g) => Some(
                self.edges
                    .iter()
                    .zip(g.kept())
                    .filter(|(_, k)| !**k)
                    .map(|(e, _)| *e)
                    .collect(),
            ),
            Search::Greedy(_) => None,
        }
    }

    /// Blocks removed at once by a guided run (0 for plain greedy).
    pub fn blocks(&self) -> usize {
        self.greedy.blocks()
    }

    fn edges_of(&self, items: &[usize]) -> Vec<Edge> {
        items.iter().map(|&i| self.edges[i]).collect()
    }

    /// Whether the run is over.
    pub fn is_done(&self) -> bool {
        self.greedy.is_done()
    }

    /// Edges kept now, in graph order.
    pub fn kept(&self) -> Vec<Edge> {
        let kept: Vec<usize> = (0..self.edges.len())
            .filter(|&i| self.greedy.kept()[i])
            .collect();
        self.edges_of(&kept)
    }

    /// Up to `k` next candidates, each as the edge and the set of edges ablated to score it.
    pub fn propose(&mut self, k: usize) -> Vec<(Edge, Vec<Edge>)> {
        self.greedy
            .propose(k)
            .into_iter()
            .map(|(c, ablated)| (self.edges[c], self.edges_of(&ablated)))
            .collect()
    }

    /// Takes the scores of proposed candidates in order; returns how many were used.
    pub fn record(&mut self, proposed: &[(Edge, Vec<Edge>)], scores: &[f64]) -> usize {
        if let Search::Guided(g) = &mut self.greedy {
            return g.record(scores);
        }
        let items: Vec<usize> = proposed
            .iter()
            .map(|(e, _)| {
                self.edges
                    .iter()
                    .position(|x| x == e)
                    .expect("a proposed edge")
            })
            .collect();
        self.greedy.record(&items, scores)
    }

    /// The final result (call when [`EdgePruner::is_done`]).
    pub fn result(&self) -> EdgePruneResult {
        EdgePruneResult {
            threshold: self.greedy.rule().threshold(),
            tau: self.greedy.rule().tau(),
            edges: self.kept().iter().map(Edge::to_string).collect(),
            graph_edges: self.edges.len(),
            score: self.greedy.score(),
            evaluations: self.greedy.evaluations(),
            passes: self.greedy.passes(),
            decisions: self
                .greedy
                .steps()
                .iter()
                .map(|s| EdgeDecision {
                    edge: self.edges[s.item].to_string(),
                    score: s.score,
                    removed: s.removed,
                    pass: s.pass,
                })
                .collect(),
            guided: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::GraphShape;

    fn graph() -> Vec<Edge> {
        GraphShape {
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 2,
            parallel: false,
            kv_per_query: true,
            embed: true,
        }
        .edges()
    }

    /// Score: 100 minus the importance of each ablated edge (two edges matter).
    fn toy(ablated: &[Edge]) -> f64 {
        100.0
            - ablated
                .iter()
                .map(|e| match e.to_string().as_str() {
                    "h1.0->logits" => 30.0,
                    "h0.1->h1.0.v" => 15.0,
                    _ => 0.5,
                })
                .sum::<f64>()
    }

    fn run(k: usize, order: Option<&[Edge]>) -> EdgePruneResult {
        let mut p = EdgePruner::new(graph(), order, Rule::Threshold(80.0), 100.0).unwrap();
        while !p.is_done() {
            let prop = p.propose(k);
            if prop.is_empty() {
                break;
            }
            let scores: Vec<f64> = prop.iter().map(|(_, a)| toy(a)).collect();
            p.record(&prop, &scores);
        }
        p.result()
    }

    #[test]
    fn the_default_order_visits_the_logits_first_and_keeps_what_matters() {
        let r = run(1, None);
        assert_eq!(r.decisions[0].edge, "m1->logits");
        assert!(
            r.edges.contains(&"h1.0->logits".to_string()),
            "{:?}",
            r.edges
        );
        assert!(r.edges.contains(&"h0.1->h1.0.v".to_string()));
        assert!(r.score > 80.0);
        // Speculative batches give the same run.
        for k in [2, 5, 16] {
            assert_eq!(run(k, None), r, "k = {k}");
        }
    }

    #[test]
    fn edge_orders_are_seeded_permutations_that_agree_on_what_matters() {
        let g = graph();
        let a = random_edge_order(&g, 5, 0);
        assert_eq!(a, random_edge_order(&g, 5, 0));
        assert_ne!(a, random_edge_order(&g, 5, 1));
        let mut sorted = a.clone();
        sorted.sort();
        let mut all = g.clone();
        all.sort();
        assert_eq!(sorted, all);
        let orders: Vec<Vec<Edge>> = (0..3).map(|i| random_edge_order(&g, 5, i)).collect();
        let runs: Vec<EdgePruneResult> = orders.iter().map(|o| run(4, Some(o))).collect();
        let prints: Vec<String> = orders.iter().map(|o| order_fingerprint(o)).collect();
        let study = summarize_edge_orders(&runs, &prints, 100.0);
        assert_eq!(study.runs[2].order.as_deref(), Some(&prints[2][..]));
        // A fingerprint tells orders apart, and is stable: SHA-256's of nothing, for no edges.
        assert_eq!(order_fingerprint(&[]), "e3b0c44298fc1c14");
        assert_eq!(prints[0].len(), 16);
        assert_ne!(prints[0], prints[1]);
        assert_eq!(prints[0], order_fingerprint(&random_edge_order(&g, 5, 0)));
        // The two edges that matter are in every circuit.
        assert!(study.stats.core.contains(&"h1.0->logits".to_string()));
        assert!(study.stats.core.contains(&"h0.1->h1.0.v".to_string()));
        assert_eq!(study.stats.frequency["h1.0->logits"], 1.0);
        assert_eq!(study.scores.len(), 3);
    }

    #[test]
    fn orders_must_be_permutations_of_the_graph() {
        let g = graph();
        let mut o = g.clone();
        o.reverse();
        assert_eq!(run(1, Some(&o)).edges.len(), run(1, None).edges.len());
        let short = &g[1..];
        assert!(EdgePruner::new(g.clone(), Some(short), Rule::Threshold(80.0), 100.0).is_err());
        let mut twice = g.clone();
        twice[0] = twice[1];
        let e = EdgePruner::new(g, Some(&twice), Rule::Threshold(80.0), 100.0).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn one_pass_keeps_the_edges_whose_ablation_costs_more_than_the_rule() {
        let g = graph();
        let scores: Vec<f64> = g.iter().map(|e| toy(std::slice::from_ref(e))).collect();
        let r = EdgePruneResult::one_pass(&g, &scores, Rule::Threshold(80.0), 100.0, 70.0);
        // Only h1.0->logits (70 alone) drops below 80.
        assert_eq!(r.edges, ["h1.0->logits"]);
        assert_eq!((r.passes, r.evaluations, r.score), (1, g.len(), 70.0));
        assert_eq!(r.decisions.iter().filter(|d| !d.removed).count(), 1);
        // KL: kept when the edge adds at least tau nats.
        let kl: Vec<f64> = g
            .iter()
            .map(|e| {
                if e.to_string() == "m0->m1" {
                    0.5
                } else {
                    0.001
                }
            })
            .collect();
        let r = EdgePruneResult::one_pass(&g, &kl, Rule::Tau(0.01), 0.0, 0.2);
        assert_eq!(r.edges, ["m0->m1"]);
        assert_eq!((r.threshold, r.tau), (None, Some(0.01)));
    }
}
