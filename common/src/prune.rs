//! Greedy iterative pruning (the paper's search) as a state machine: it proposes candidate
//! circuits, an evaluator scores them (in batches), and it records a decision per candidate.
//!
//! A pass visits the components still in the circuit in its order; a candidate `c` is scored
//! with every component outside `C \ {c}` ablated, and removed at once when the score stays
//! above the threshold. Passes repeat until one removes nothing. To batch, the machine may
//! propose the next `k` candidates of a pass at once, assuming none is removed: the decisions
//! are then taken in order and the proposals after the first removal are discarded (they were
//! scored against a circuit that no longer exists), so the result equals one-at-a-time pruning.

use serde::{Deserialize, Serialize};

use crate::component::Component;
use crate::spec::Schedule;

/// The order of one pass.
#[derive(Debug, Clone, PartialEq)]
pub enum PassOrder {
    /// A named schedule over the model's components.
    Schedule(Schedule),
    /// The same explicit order in every pass (order study).
    Fixed(Vec<Component>),
}

/// Backward order: layers last to first; in each layer the MLP first, then heads 0..H-1.
pub fn backward(n_layers: usize, n_heads: usize) -> Vec<Component> {
    (0..n_layers)
        .rev()
        .flat_map(|layer| {
            std::iter::once(Component::Mlp { layer })
                .chain((0..n_heads).map(move |head| Component::Head { layer, head }))
        })
        .collect()
}

/// Forward order: layers first to last; heads 0..H-1, then the MLP.
pub fn forward(n_layers: usize, n_heads: usize) -> Vec<Component> {
    Component::all(n_layers, n_heads)
}

/// One decision of a pruning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The candidate.
    pub component: String,
    /// Score of the circuit without it.
    pub score: f64,
    /// Whether it was removed (score above the threshold).
    pub removed: bool,
    /// Pass number, from 0.
    pub pass: usize,
}

/// The outcome of a pruning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneResult {
    /// The threshold used.
    pub threshold: f64,
    /// Heads in the final circuit.
    pub heads: Vec<String>,
    /// MLPs in the final circuit.
    pub mlps: Vec<String>,
    /// Score of the final circuit.
    pub score: f64,
    /// Candidate evaluations (decisions).
    pub evaluations: usize,
    /// Passes run (the last removed nothing).
    pub passes: usize,
    /// Every decision in order.
    pub decisions: Vec<Decision>,
}

/// A pruning run in progress.
#[derive(Debug, Clone)]
pub struct Pruner {
    n_layers: usize,
    n_heads: usize,
    order: PassOrder,
    threshold: f64,
    /// In the circuit, by component index (`layer * (n_heads + 1) + head`, MLP last).
    kept: Vec<bool>,
    pass: usize,
    /// Position in the current pass's order.
    pos: usize,
    removed_this_pass: bool,
    score: f64,
    decisions: Vec<Decision>,
    done: bool,
}

impl Pruner {
    /// A run starting from `start` (every component when `None`), whose current score is
    /// `start_score` (the score of that circuit).
    pub fn new(
        n_layers: usize,
        n_heads: usize,
        order: PassOrder,
        threshold: f64,
        start: Option<&[Component]>,
        start_score: f64,
    ) -> Self {
        let mut kept = vec![start.is_none(); n_layers * (n_heads + 1)];
        let mut p = Pruner {
            n_layers,
            n_heads,
            order,
            threshold,
            kept: vec![],
            pass: 0,
            pos: 0,
            removed_this_pass: false,
            score: start_score,
            decisions: vec![],
            done: false,
        };
        if let Some(s) = start {
            for c in s {
                kept[p.index(c)] = true;
            }
        }
        p.kept = kept;
        p
    }

    fn index(&self, c: &Component) -> usize {
        match *c {
            Component::Head { layer, head } => layer * (self.n_heads + 1) + head,
            Component::Mlp { layer } => layer * (self.n_heads + 1) + self.n_heads,
        }
    }

    fn pass_order(&self) -> Vec<Component> {
        match &self.order {
            PassOrder::Fixed(o) => o.clone(),
            PassOrder::Schedule(Schedule::Backward) => backward(self.n_layers, self.n_heads),
            PassOrder::Schedule(Schedule::Forward) => forward(self.n_layers, self.n_heads),
            PassOrder::Schedule(Schedule::Paper) if self.pass.is_multiple_of(2) => {
                backward(self.n_layers, self.n_heads)
            }
            PassOrder::Schedule(Schedule::Paper) => forward(self.n_layers, self.n_heads),
        }
    }

    /// Whether the run is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the last recorded decision removed its component.
    pub fn last_removed(&self) -> bool {
        self.decisions.last().is_some_and(|d| d.removed)
    }

    /// Components in the circuit now.
    pub fn circuit(&self) -> Vec<Component> {
        Component::all(self.n_layers, self.n_heads)
            .into_iter()
            .filter(|c| self.kept[self.index(c)])
            .collect()
    }

    /// The ablated set of the circuit without `c` (everything outside it, and `c`).
    fn ablated_without(&self, c: &Component) -> Vec<Component> {
        Component::all(self.n_layers, self.n_heads)
            .into_iter()
            .filter(|x| x == c || !self.kept[self.index(x)])
            .collect()
    }

    /// Moves to the next candidate still in the circuit, starting new passes as needed; ends
    /// the run after a pass that removed nothing.
    fn advance(&mut self) -> Option<(usize, Component)> {
        loop {
            if self.done {
                return None;
            }
            let order = self.pass_order();
            while self.pos < order.len() {
                let c = order[self.pos];
                if self.kept[self.index(&c)] {
                    return Some((self.pos, c));
                }
                self.pos += 1;
            }
            if !self.removed_this_pass {
                self.done = true;
                return None;
            }
            self.pass += 1;
            self.pos = 0;
            self.removed_this_pass = false;
        }
    }

    /// Up to `k` next candidates of the current pass (assuming none is removed), each as the
    /// component and the set of components ablated to score it.
    pub fn propose(&mut self, k: usize) -> Vec<(Component, Vec<Component>)> {
        let Some((start, _)) = self.advance() else {
            return vec![];
        };
        let order = self.pass_order();
        order[start..]
            .iter()
            .filter(|c| self.kept[self.index(c)])
            .take(k.max(1))
            .map(|c| (*c, self.ablated_without(c)))
            .collect()
    }

    /// Takes the scores of proposed candidates in order; stops after the first removal.
    /// Returns how many scores were used (the rest must be proposed again).
    pub fn record(&mut self, proposed: &[(Component, Vec<Component>)], scores: &[f64]) -> usize {
        let mut used = 0;
        for ((c, _), &s) in proposed.iter().zip(scores) {
            let Some((pos, next)) = self.advance() else {
                break;
            };
            assert_eq!(next, *c, "scores must follow the proposal order");
            let removed = s > self.threshold;
            self.decisions.push(Decision {
                component: c.to_string(),
                score: s,
                removed,
                pass: self.pass,
            });
            self.pos = pos + 1;
            used += 1;
            if removed {
                let i = self.index(c);
                self.kept[i] = false;
                self.removed_this_pass = true;
                self.score = s;
                break;
            }
        }
        used
    }

    /// The final result (call when [`Pruner::is_done`]).
    pub fn result(&self) -> PruneResult {
        let circuit = self.circuit();
        let names = |heads: bool| -> Vec<String> {
            circuit
                .iter()
                .filter(|c| matches!(c, Component::Head { .. }) == heads)
                .map(Component::to_string)
                .collect()
        };
        PruneResult {
            threshold: self.threshold,
            heads: names(true),
            mlps: names(false),
            score: self.score,
            evaluations: self.decisions.len(),
            passes: self.pass + 1,
            decisions: self.decisions.clone(),
        }
    }
}

/// Replays a decision list from the full model (or `start`), returning the circuit it leads
/// to: a check that a recorded run is self-consistent.
pub fn replay(
    n_layers: usize,
    n_heads: usize,
    start: Option<&[Component]>,
    decisions: &[Decision],
) -> Result<Vec<Component>, String> {
    let mut circuit: Vec<Component> = match start {
        Some(s) => s.to_vec(),
        None => Component::all(n_layers, n_heads),
    };
    for d in decisions {
        let c: Component = d.component.parse().map_err(|e| format!("{e}"))?;
        if !circuit.contains(&c) {
            return Err(format!(
                "decision on {c}, which is no longer in the circuit"
            ));
        }
        if d.removed {
            circuit.retain(|x| *x != c);
        }
    }
    circuit.sort();
    Ok(circuit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_orders_follow_the_paper() {
        let b: Vec<String> = backward(2, 2).iter().map(|c| c.to_string()).collect();
        assert_eq!(b, ["m1", "h1.0", "h1.1", "m0", "h0.0", "h0.1"]);
        let f: Vec<String> = forward(2, 2).iter().map(|c| c.to_string()).collect();
        assert_eq!(f, ["h0.0", "h0.1", "m0", "h1.0", "h1.1", "m1"]);
    }

    /// A toy evaluator: the score is 100 minus the summed importance of ablated components.
    fn toy_score(ablated: &[Component], importance: impl Fn(&Component) -> f64) -> f64 {
        100.0 - ablated.iter().map(importance).sum::<f64>()
    }

    fn importance(c: &Component) -> f64 {
        match c.to_string().as_str() {
            "h1.1" => 15.0,
            "m0" => 12.0,
            "h0.0" => 6.0,
            _ => 1.0,
        }
    }

    fn run(k: usize, order: PassOrder) -> PruneResult {
        let mut p = Pruner::new(2, 2, order, 80.0, None, 100.0);
        while !p.is_done() {
            let prop = p.propose(k);
            if prop.is_empty() {
                break;
            }
            let scores: Vec<f64> = prop.iter().map(|(_, a)| toy_score(a, importance)).collect();
            p.record(&prop, &scores);
        }
        p.result()
    }

    #[test]
    fn greedy_pruning_by_hand() {
        // Backward: m1 (99, removed), h1.0 (98, removed), h1.1 (83, removed), m0 (71, kept),
        // h0.0 (77, kept), h0.1 (82, removed); forward: h0.0 (76), m0 (70) kept; stop.
        let r = run(1, PassOrder::Schedule(Schedule::Paper));
        assert_eq!(r.heads, ["h0.0"]);
        assert_eq!(r.mlps, ["m0"]);
        assert_eq!(r.score, 82.0);
        assert_eq!(r.passes, 2);
        assert_eq!(r.evaluations, 8);
        let removed: Vec<&str> = r
            .decisions
            .iter()
            .filter(|d| d.removed)
            .map(|d| d.component.as_str())
            .collect();
        assert_eq!(removed, ["m1", "h1.0", "h1.1", "h0.1"]);
        assert_eq!(
            replay(2, 2, None, &r.decisions).unwrap(),
            vec!["h0.0".parse().unwrap(), "m0".parse().unwrap()]
        );
    }

    #[test]
    fn speculative_batches_give_the_same_run() {
        let one = run(1, PassOrder::Schedule(Schedule::Paper));
        for k in [2, 3, 8] {
            assert_eq!(run(k, PassOrder::Schedule(Schedule::Paper)), one, "k = {k}");
        }
        let fixed = PassOrder::Fixed(forward(2, 2));
        assert_eq!(run(4, fixed.clone()), run(1, fixed));
    }

    #[test]
    fn replay_refuses_an_impossible_history() {
        let d = Decision {
            component: "h0.0".into(),
            score: 90.0,
            removed: true,
            pass: 0,
        };
        assert!(
            replay(2, 2, None, &[d.clone(), d])
                .unwrap_err()
                .contains("no longer in the circuit")
        );
    }
}
