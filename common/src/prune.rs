//! Greedy iterative pruning of nodes (the paper's search) as a state machine: it proposes
//! candidate circuits, an evaluator scores them (in batches), and it records a decision per
//! candidate. The search itself is [`crate::greedy::Greedy`]; this file maps components to its
//! items and gives the paper's pass orders.

use serde::{Deserialize, Serialize};

use crate::component::Component;
use crate::greedy::{Greedy, Rule};
use crate::guided::{Guidance, Guided, Search};
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

impl PruneResult {
    /// The rule the run pruned by.
    pub fn rule(&self) -> Rule {
        Rule::recorded(self.threshold, self.tau)
    }
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
    /// The % threshold used (metrics scored in % of the full model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The KL tolerance in nats used (`metric = "kl"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// Heads in the final circuit.
    pub heads: Vec<String>,
    /// MLPs in the final circuit.
    pub mlps: Vec<String>,
    /// Score of the final circuit.
    pub score: f64,
    /// Exact evaluations (plain greedy: one per decision).
    pub evaluations: usize,
    /// Passes run (the last removed nothing).
    pub passes: usize,
    /// Every decision in order.
    pub decisions: Vec<Decision>,
    /// With `candidates = "attribution"`: the attribution and what it saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<Guidance>,
}

/// A component's item number: its place in [`Component::all`].
fn number(n_heads: usize, c: &Component) -> usize {
    match *c {
        Component::Head { layer, head } => layer * (n_heads + 1) + head,
        Component::Mlp { layer } => layer * (n_heads + 1) + n_heads,
    }
}

/// A pruning run in progress.
#[derive(Debug, Clone)]
pub struct Pruner {
    n_layers: usize,
    n_heads: usize,
    /// Over components numbered as in [`Component::all`].
    greedy: Search,
}

impl Pruner {
    /// A run starting from `start` (every component when `None`), whose current score is
    /// `start_score` (the score of that circuit).
    pub fn new(
        n_layers: usize,
        n_heads: usize,
        order: PassOrder,
        rule: Rule,
        start: Option<&[Component]>,
        start_score: f64,
    ) -> Self {
        let numbered =
            |cs: Vec<Component>| -> Vec<usize> { cs.iter().map(|c| number(n_heads, c)).collect() };
        let orders = match order {
            PassOrder::Fixed(o) => vec![numbered(o)],
            PassOrder::Schedule(Schedule::Backward) => vec![numbered(backward(n_layers, n_heads))],
            PassOrder::Schedule(Schedule::Forward) => vec![numbered(forward(n_layers, n_heads))],
            PassOrder::Schedule(Schedule::Paper) => vec![
                numbered(backward(n_layers, n_heads)),
                numbered(forward(n_layers, n_heads)),
            ],
        };
        Pruner {
            n_layers,
            n_heads,
            greedy: Search::Greedy(Greedy::new(
                orders,
                rule,
                Self::start(n_layers, n_heads, start),
                start_score,
            )),
        }
    }

    /// Attribute, then verify: a run visiting components by `cost` (per component in
    /// [`Component::all`] order: the estimated harm of ablating it, lowest first) and removing
    /// them in blocks, each verified by an exact evaluation (see [`crate::guided`]).
    pub fn guided(
        n_layers: usize,
        n_heads: usize,
        cost: &[f64],
        rule: Rule,
        start: Option<&[Component]>,
        start_score: f64,
    ) -> Self {
        assert_eq!(cost.len(), n_layers * (n_heads + 1), "a cost per component");
        Pruner {
            n_layers,
            n_heads,
            greedy: Search::Guided(Guided::new(
                cost,
                rule,
                Self::start(n_layers, n_heads, start),
                start_score,
            )),
        }
    }

    /// Which components a run from `start` keeps at first.
    fn start(n_layers: usize, n_heads: usize, start: Option<&[Component]>) -> Vec<bool> {
        let mut kept = vec![start.is_none(); n_layers * (n_heads + 1)];
        for c in start.unwrap_or(&[]) {
            kept[number(n_heads, c)] = true;
        }
        kept
    }

    /// Blocks removed at once by a guided run (0 for plain greedy).
    pub fn blocks(&self) -> usize {
        self.greedy.blocks()
    }

    fn component(&self, i: usize) -> Component {
        let (layer, k) = (i / (self.n_heads + 1), i % (self.n_heads + 1));
        if k == self.n_heads {
            Component::Mlp { layer }
        } else {
            Component::Head { layer, head: k }
        }
    }

    fn components(&self, items: &[usize]) -> Vec<Component> {
        items.iter().map(|&i| self.component(i)).collect()
    }

    /// Whether the run is over.
    pub fn is_done(&self) -> bool {
        self.greedy.is_done()
    }

    /// Components in the circuit now.
    pub fn circuit(&self) -> Vec<Component> {
        let kept: Vec<usize> = (0..self.n_layers * (self.n_heads + 1))
            .filter(|&i| self.greedy.kept()[i])
            .collect();
        self.components(&kept)
    }

    /// Up to `k` next candidates of the current pass (a speculative batch, see
    /// [`Greedy::propose`]), each as the component and the set of components ablated to score
    /// it.
    pub fn propose(&mut self, k: usize) -> Vec<(Component, Vec<Component>)> {
        self.greedy
            .propose(k)
            .into_iter()
            .map(|(c, ablated)| (self.component(c), self.components(&ablated)))
            .collect()
    }

    /// Takes the scores of proposed candidates in order, up to the first wrong guess.
    /// Returns how many scores were used (the rest must be proposed again).
    pub fn record(&mut self, proposed: &[(Component, Vec<Component>)], scores: &[f64]) -> usize {
        let items: Vec<usize> = proposed
            .iter()
            .map(|(c, _)| number(self.n_heads, c))
            .collect();
        self.greedy.record(&items, scores)
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
            threshold: self.greedy.rule().threshold(),
            tau: self.greedy.rule().tau(),
            heads: names(true),
            mlps: names(false),
            score: self.greedy.score(),
            evaluations: self.greedy.evaluations(),
            passes: self.greedy.passes(),
            decisions: self
                .greedy
                .steps()
                .iter()
                .map(|s| Decision {
                    component: self.component(s.item).to_string(),
                    score: s.score,
                    removed: s.removed,
                    pass: s.pass,
                })
                .collect(),
            guided: None,
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
        let mut p = Pruner::new(2, 2, order, Rule::Threshold(80.0), None, 100.0);
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
