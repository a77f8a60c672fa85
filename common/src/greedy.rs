//! The greedy search behind node and edge pruning, over items numbered `0..n`.
//!
//! A pass visits the items still kept in its order; a candidate is scored with every item not
//! kept, and itself, ablated, and removed at once when its [`Rule`] says so: the score stays
//! above a % threshold, or (KL) the divergence grows by less than `tau` nats.
//! Passes repeat (cycling through the given orders) until one removes nothing. To batch, the
//! search may propose the next `k` candidates of a pass at once, guessing how the earlier ones
//! are decided (as the last decision was: decisions come in runs): the decisions are then
//! taken in order and the proposals after the first wrong guess are discarded (they were
//! scored against a circuit that does not exist), so the result equals one-at-a-time pruning.

/// When a candidate is removed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// The score without it (% of the full model) stays above this threshold.
    Threshold(f64),
    /// ACDC's rule for KL divergence (lower is better): removing it raises the circuit's KL
    /// from the full model by less than `tau` nats.
    Tau(f64),
}

impl Rule {
    /// Whether a candidate whose removal scores `without` goes, the circuit scoring `current`.
    pub fn removes(self, without: f64, current: f64) -> bool {
        match self {
            Rule::Threshold(t) => without > t,
            Rule::Tau(tau) => without - current < tau,
        }
    }

    /// The rule recorded as a result's `threshold` and `tau` fields (a result without either
    /// was pruned at the default 80 %).
    pub fn recorded(threshold: Option<f64>, tau: Option<f64>) -> Self {
        match (threshold, tau) {
            (_, Some(t)) => Rule::Tau(t),
            (t, None) => Rule::Threshold(t.unwrap_or(80.0)),
        }
    }

    /// The % threshold, if that is the rule.
    pub fn threshold(self) -> Option<f64> {
        match self {
            Rule::Threshold(t) => Some(t),
            Rule::Tau(_) => None,
        }
    }

    /// The KL tolerance in nats, if that is the rule.
    pub fn tau(self) -> Option<f64> {
        match self {
            Rule::Tau(t) => Some(t),
            Rule::Threshold(_) => None,
        }
    }

    /// The rule in words, for titles and logs (`80%`, `tau 0.01 nats`).
    pub fn describe(self) -> String {
        match self {
            Rule::Threshold(t) => format!("{t}%"),
            Rule::Tau(t) => format!("tau {t} nats"),
        }
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The candidate.
    pub item: usize,
    /// Score without it.
    pub score: f64,
    /// Whether it was removed.
    pub removed: bool,
    /// Pass number, from 0.
    pub pass: usize,
}

/// A greedy search in progress.
#[derive(Debug, Clone)]
pub struct Greedy {
    /// Pass `p` visits `orders[p % orders.len()]`.
    orders: Vec<Vec<usize>>,
    rule: Rule,
    kept: Vec<bool>,
    pass: usize,
    /// Position in the current pass's order.
    pos: usize,
    removed_this_pass: bool,
    score: f64,
    steps: Vec<Step>,
    done: bool,
    /// The last proposal guessed that its candidates are removed (else kept).
    guess_removed: bool,
}

impl Greedy {
    /// A search over `kept.len()` items starting from the kept ones, whose score is
    /// `start_score`.
    pub fn new(orders: Vec<Vec<usize>>, rule: Rule, kept: Vec<bool>, start_score: f64) -> Self {
        assert!(!orders.is_empty(), "at least one pass order");
        Greedy {
            orders,
            rule,
            kept,
            pass: 0,
            pos: 0,
            removed_this_pass: false,
            score: start_score,
            steps: vec![],
            done: false,
            guess_removed: false,
        }
    }

    fn order(&self) -> &[usize] {
        &self.orders[self.pass % self.orders.len()]
    }

    /// Whether the search is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the last decision removed its item.
    fn last_removed(&self) -> bool {
        self.steps.last().is_some_and(|d| d.removed)
    }

    /// Which items are kept.
    pub fn kept(&self) -> &[bool] {
        &self.kept
    }

    /// Score of the kept items.
    pub fn score(&self) -> f64 {
        self.score
    }

    /// Passes started so far.
    pub fn passes(&self) -> usize {
        self.pass + 1
    }

    /// The decisions so far.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The removal rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Moves to the next candidate still kept, starting new passes as needed; ends the search
    /// after a pass that removed nothing.
    fn advance(&mut self) -> Option<(usize, usize)> {
        loop {
            if self.done {
                return None;
            }
            while self.pos < self.order().len() {
                let c = self.order()[self.pos];
                if self.kept[c] {
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

    /// Up to `k` next candidates of the current pass, each with the items ablated to score it.
    /// The batch is speculative: it guesses that every candidate but the last goes the way the
    /// last decision went (kept after a keep, removed after a removal: pruning decides in
    /// runs), and [`Greedy::record`] keeps the decisions up to the first wrong guess, each
    /// scored with the very items the search one at a time would have ablated.
    pub fn propose(&mut self, k: usize) -> Vec<(usize, Vec<usize>)> {
        let Some((start, _)) = self.advance() else {
            return vec![];
        };
        self.guess_removed = self.last_removed();
        let items: Vec<usize> = self.order()[start..]
            .iter()
            .copied()
            .filter(|&c| self.kept[c])
            .take(k.max(1))
            .collect();
        let ablated: Vec<usize> = (0..self.kept.len()).filter(|&x| !self.kept[x]).collect();
        items
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let earlier = if self.guess_removed { &items[..i] } else { &[] };
                let mut a: Vec<usize> =
                    ablated.iter().chain(earlier).chain([&c]).copied().collect();
                a.sort_unstable();
                (c, a)
            })
            .collect()
    }

    /// Takes the scores of the last proposal's candidates in order, up to the first decision
    /// that is not what the proposal guessed. Returns how many scores were used (the rest must
    /// be proposed again).
    pub fn record(&mut self, proposed: &[usize], scores: &[f64]) -> usize {
        let mut used = 0;
        for (&c, &s) in proposed.iter().zip(scores) {
            let Some((pos, next)) = self.advance() else {
                break;
            };
            assert_eq!(next, c, "scores must follow the proposal order");
            let removed = self.rule.removes(s, self.score);
            self.steps.push(Step {
                item: c,
                score: s,
                removed,
                pass: self.pass,
            });
            self.pos = pos + 1;
            used += 1;
            if removed {
                self.kept[c] = false;
                self.removed_this_pass = true;
                self.score = s;
            }
            if removed != self.guess_removed {
                break;
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kl_rule_compares_with_the_current_circuit() {
        // Threshold: a score above 80 % goes.
        assert!(Rule::Threshold(80.0).removes(80.5, 100.0));
        assert!(!Rule::Threshold(80.0).removes(79.0, 100.0));
        // Tau: KL rising by less than tau goes, whatever the absolute KL.
        assert!(Rule::Tau(0.01).removes(0.305, 0.3));
        assert!(!Rule::Tau(0.01).removes(0.32, 0.3));
        assert!(!Rule::Tau(0.01).removes(5.0, 0.0));
    }

    #[test]
    fn kl_pruning_removes_what_barely_moves_the_divergence() {
        // Three items; KL of a circuit = sum of the ablated items' costs.
        let cost = [0.5, 0.001, 0.002];
        let mut g = Greedy::new(vec![vec![0, 1, 2]], Rule::Tau(0.01), vec![true; 3], 0.0);
        while !g.is_done() {
            let p = g.propose(1);
            if p.is_empty() {
                break;
            }
            let s: Vec<f64> = p
                .iter()
                .map(|(_, a)| a.iter().map(|&i| cost[i]).sum())
                .collect();
            let items: Vec<usize> = p.iter().map(|(c, _)| *c).collect();
            g.record(&items, &s);
        }
        assert_eq!(g.kept(), &[true, false, false]);
        assert!((g.score() - 0.003).abs() < 1e-12);
    }
}
