//! Attribute, then verify: greedy pruning that visits items in the order an attribution
//! estimates harmless first, and removes them in blocks, each block removed only when an exact
//! evaluation of the circuit without it satisfies the pruning [`Rule`].
//!
//! A pass walks the items still kept in that order. It tests the next `b` of them at once (fewer
//! when their estimated harms add up to more than the rule allows): if the circuit without them
//! satisfies the rule they all go and the next block is twice as large; if not, half as large,
//! and a single item that fails is kept (a decision exactly as plain greedy's). Passes repeat
//! until one removes nothing. When the estimate is good, the harmless
//! bulk goes in a few large blocks and the evaluations are spent where items are kept.
//!
//! To batch, a proposal holds the chain of tests that failures would lead to (`b`, `b/2`, ...,
//! `1`) scored against the same circuit; the first that passes is the one the sequential
//! search would have reached, so the result does not depend on the batch size.

use serde::{Deserialize, Serialize};

use crate::greedy::{Greedy, Rule, Step};

/// How attribution guided a pruning run (`result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    /// The attribution that ordered the candidates: `eap` or `eap_ig`.
    pub method: String,
    /// Its passes per prompt (1 for EAP).
    pub steps: usize,
    /// Blocks of more than one candidate removed by one evaluation.
    pub blocks: usize,
    /// Evaluations plain greedy pruning needs at the least: its first pass scores every
    /// candidate once.
    pub greedy_at_least: usize,
}

/// A pass order from estimated costs: items by cost, ascending (ties by item number).
pub fn harmless_first(cost: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cost.len()).collect();
    order.sort_by(|&a, &b| cost[a].total_cmp(&cost[b]).then(a.cmp(&b)));
    order
}

/// A block search in progress.
#[derive(Debug, Clone)]
pub struct Guided {
    order: Vec<usize>,
    /// Estimated harm of ablating each item, in the rule's unit.
    cost: Vec<f64>,
    rule: Rule,
    kept: Vec<bool>,
    score: f64,
    pass: usize,
    /// Kept items of the current pass, in order, and the position of the next untested one.
    pending: Vec<usize>,
    pos: usize,
    removed_this_pass: bool,
    /// Size of the next block.
    block: usize,
    steps: Vec<Step>,
    /// Exact evaluations the search used.
    tests: usize,
    /// Blocks of more than one item removed at once.
    blocks: usize,
    done: bool,
    /// Sizes of the last proposal's tests.
    proposed: Vec<usize>,
}

impl Guided {
    /// A search over `kept.len()` items from the kept ones, whose score is `start_score`,
    /// visiting items by `cost` (the estimated harm of ablating each alone, in the rule's unit:
    /// % points lost, or nats of KL gained), lowest first.
    pub fn new(cost: &[f64], rule: Rule, kept: Vec<bool>, start_score: f64) -> Self {
        assert_eq!(cost.len(), kept.len(), "a cost per item");
        let order = harmless_first(cost);
        let pending: Vec<usize> = order.iter().copied().filter(|&i| kept[i]).collect();
        Guided {
            done: pending.is_empty(),
            order,
            cost: cost.to_vec(),
            rule,
            kept,
            score: start_score,
            pass: 0,
            pending,
            pos: 0,
            removed_this_pass: false,
            block: 1,
            steps: vec![],
            tests: 0,
            blocks: 0,
            proposed: vec![],
        }
    }

    /// Whether the search is over.
    pub fn is_done(&self) -> bool {
        self.done
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

    /// One decision per item decided (an item removed in a block gets the block's score).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The removal rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Exact evaluations used.
    pub fn evaluations(&self) -> usize {
        self.tests
    }

    /// Blocks of more than one item removed by one evaluation.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Starts the next pass when this one is over; ends the search after a pass that removed
    /// nothing.
    fn advance(&mut self) {
        if self.done || self.pos < self.pending.len() {
            return;
        }
        if !self.removed_this_pass {
            self.done = true;
            return;
        }
        self.pass += 1;
        self.pending = self
            .order
            .iter()
            .copied()
            .filter(|&i| self.kept[i])
            .collect();
        self.pos = 0;
        self.block = 1;
        self.removed_this_pass = false;
        self.done = self.pending.is_empty();
    }

    /// The longest run of next items whose estimated harms add up to less than the rule
    /// allows (at least one): a longer block is predicted to fail, so it is not tried.
    fn predicted_fit(&self) -> usize {
        let slack = match self.rule {
            Rule::Threshold(t) => self.score - t,
            Rule::Tau(tau) => tau,
        };
        let mut sum = 0.0;
        let mut fit = 0;
        for &i in self.pending[self.pos..].iter().take(self.block) {
            sum += self.cost[i];
            if sum >= slack {
                break;
            }
            fit += 1;
        }
        fit.max(1)
    }

    /// Up to `k` next tests, each as its first item and the items ablated to score it: the next
    /// block, then the halves a failure would lead to, all against the current circuit.
    pub fn propose(&mut self, k: usize) -> Vec<(usize, Vec<usize>)> {
        self.advance();
        self.proposed.clear();
        if self.done {
            return vec![];
        }
        let left = self.pending.len() - self.pos;
        let mut size = self.block.min(left).min(self.predicted_fit());
        while self.proposed.len() < k.max(1) {
            self.proposed.push(size);
            if size == 1 {
                break;
            }
            size /= 2;
        }
        let ablated: Vec<usize> = (0..self.kept.len()).filter(|&x| !self.kept[x]).collect();
        let first = self.pending[self.pos];
        self.proposed
            .iter()
            .map(|&s| {
                let mut a = ablated.clone();
                a.extend_from_slice(&self.pending[self.pos..self.pos + s]);
                a.sort_unstable();
                (first, a)
            })
            .collect()
    }

    /// Takes the scores of the last proposal's tests in order, up to the first that decides
    /// (a block removed, or a single item kept). Returns how many scores were used.
    pub fn record(&mut self, scores: &[f64]) -> usize {
        let proposed = std::mem::take(&mut self.proposed);
        let mut used = 0;
        for (&size, &s) in proposed.iter().zip(scores) {
            used += 1;
            self.tests += 1;
            let items = &self.pending[self.pos..self.pos + size];
            if self.rule.removes(s, self.score) {
                for &i in items {
                    self.kept[i] = false;
                    self.steps.push(Step {
                        item: i,
                        score: s,
                        removed: true,
                        pass: self.pass,
                    });
                }
                self.blocks += usize::from(size > 1);
                self.score = s;
                self.removed_this_pass = true;
                self.pos += size;
                self.block = size * 2;
                return used;
            }
            if size == 1 {
                self.steps.push(Step {
                    item: items[0],
                    score: s,
                    removed: false,
                    pass: self.pass,
                });
                self.pos += 1;
                self.block = 1;
                return used;
            }
            self.block = size / 2;
        }
        used
    }
}

/// The search of a pruning run: plain greedy, or attribute-then-verify.
#[derive(Debug, Clone)]
pub enum Search {
    /// Every candidate decided one at a time, in the pass orders.
    Greedy(Greedy),
    /// Candidates in attribution order, removed in verified blocks.
    Guided(Guided),
}

impl Search {
    /// Whether the search is over.
    pub fn is_done(&self) -> bool {
        match self {
            Search::Greedy(g) => g.is_done(),
            Search::Guided(g) => g.is_done(),
        }
    }

    /// Which items are kept.
    pub fn kept(&self) -> &[bool] {
        match self {
            Search::Greedy(g) => g.kept(),
            Search::Guided(g) => g.kept(),
        }
    }

    /// Score of the kept items.
    pub fn score(&self) -> f64 {
        match self {
            Search::Greedy(g) => g.score(),
            Search::Guided(g) => g.score(),
        }
    }

    /// Passes started so far.
    pub fn passes(&self) -> usize {
        match self {
            Search::Greedy(g) => g.passes(),
            Search::Guided(g) => g.passes(),
        }
    }

    /// The decisions so far, one per item decided.
    pub fn steps(&self) -> &[Step] {
        match self {
            Search::Greedy(g) => g.steps(),
            Search::Guided(g) => g.steps(),
        }
    }

    /// The removal rule.
    pub fn rule(&self) -> Rule {
        match self {
            Search::Greedy(g) => g.rule(),
            Search::Guided(g) => g.rule(),
        }
    }

    /// Exact evaluations used (plain greedy: one per decision).
    pub fn evaluations(&self) -> usize {
        match self {
            Search::Greedy(g) => g.steps().len(),
            Search::Guided(g) => g.evaluations(),
        }
    }

    /// Blocks of more than one item removed at once (plain greedy: none).
    pub fn blocks(&self) -> usize {
        match self {
            Search::Greedy(_) => 0,
            Search::Guided(g) => g.blocks(),
        }
    }

    /// Up to `k` next candidates, each as an item and the items ablated to score it.
    pub fn propose(&mut self, k: usize) -> Vec<(usize, Vec<usize>)> {
        match self {
            Search::Greedy(g) => g.propose(k),
            Search::Guided(g) => g.propose(k),
        }
    }

    /// Takes the scores of the last proposal (whose items are `items`) in order; returns how
    /// many were used.
    pub fn record(&mut self, items: &[usize], scores: &[f64]) -> usize {
        match self {
            Search::Greedy(g) => g.record(items, scores),
            Search::Guided(g) => g.record(scores),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Score: 100 minus the summed importance of the ablated items.
    fn toy(importance: &[f64], ablated: &[usize]) -> f64 {
        100.0 - ablated.iter().map(|&i| importance[i]).sum::<f64>()
    }

    fn run(importance: &[f64], cost: &[f64], rule: Rule, k: usize) -> Guided {
        let n = importance.len();
        let mut g = Guided::new(cost, rule, vec![true; n], 100.0);
        while !g.is_done() {
            let p = g.propose(k);
            if p.is_empty() {
                break;
            }
            let s: Vec<f64> = p.iter().map(|(_, a)| toy(importance, a)).collect();
            let used = g.record(&s);
            assert!(used >= 1 && used <= p.len());
        }
        g
    }

    /// 200 items, three of which matter; the rest cost 0.01 each.
    fn importance() -> Vec<f64> {
        let mut imp = vec![0.01; 200];
        imp[17] = 12.0;
        imp[90] = 9.0;
        imp[150] = 4.0;
        imp
    }

    #[test]
    fn a_good_estimate_removes_the_bulk_in_blocks_and_keeps_what_matters() {
        let imp = importance();
        let g = run(&imp, &imp, Rule::Threshold(90.0), 1);
        let kept: Vec<usize> = (0..200).filter(|&i| g.kept()[i]).collect();
        // 1.97 for the bulk plus 4 for item 150 stays above 90; 9 or 12 more would not.
        assert_eq!(kept, [17, 90]);
        assert!((g.score() - 94.03).abs() < 1e-9, "{}", g.score());
        assert!(
            g.evaluations() < 40,
            "{} evaluations for 200 items",
            g.evaluations()
        );
        assert!(g.blocks() >= 5);
        // Every item decided once per pass it was pending in; removals carry their block's score.
        assert_eq!(g.steps().iter().filter(|s| s.removed).count(), 198);
        let last_pass = g.passes() - 1;
        assert!(g.steps().iter().any(|s| s.pass == last_pass && !s.removed));
    }

    #[test]
    fn estimates_in_the_rules_unit_spare_blocks_predicted_to_fail() {
        let imp = importance();
        let rule = Rule::Threshold(90.0);
        let exact = run(&imp, &imp, rule, 1);
        // The same order with estimates far too small: every block is tried at full size.
        let tiny: Vec<f64> = imp.iter().map(|x| x * 1e-9).collect();
        let blind = run(&imp, &tiny, rule, 1);
        assert_eq!(exact.kept(), blind.kept());
        assert!(
            exact.evaluations() < blind.evaluations(),
            "{} with the estimates' scale, {} without",
            exact.evaluations(),
            blind.evaluations()
        );
    }

    #[test]
    fn the_result_does_not_depend_on_the_batch() {
        let imp = importance();
        // A poor estimate (reversed) still ends in a circuit that satisfies the rule.
        let reversed: Vec<f64> = imp.iter().map(|x| -x).collect();
        for cost in [&imp, &reversed] {
            let one = run(&imp, cost, Rule::Threshold(80.0), 1);
            for k in [2, 3, 8, 64] {
                let g = run(&imp, cost, Rule::Threshold(80.0), k);
                assert_eq!(g.kept(), one.kept(), "k = {k}");
                assert_eq!(g.steps(), one.steps(), "k = {k}");
                assert_eq!(g.evaluations(), one.evaluations(), "k = {k}");
            }
            assert!(one.score() > 80.0);
        }
    }

    #[test]
    fn a_single_failing_item_is_kept_as_plain_greedy_keeps_it() {
        // Two items: the first alone drops the score below the threshold.
        let imp = [30.0, 1.0];
        let g = run(&imp, &[0.0, 1.0], Rule::Threshold(80.0), 4);
        assert_eq!(g.kept(), &[true, false]);
        // Pass 0: item 0 fails, item 1 goes; pass 1: item 0 fails again; done.
        let d: Vec<(usize, bool, usize)> = g
            .steps()
            .iter()
            .map(|s| (s.item, s.removed, s.pass))
            .collect();
        assert_eq!(d, [(0, false, 0), (1, true, 0), (0, false, 1)]);
        assert_eq!(g.evaluations(), 3);
    }

    #[test]
    fn under_the_kl_rule_a_block_goes_when_it_adds_less_than_tau() {
        // KL of a circuit: the sum of its ablated items' costs (lower is better).
        let cost = [0.002, 0.003, 0.5, 0.004];
        let mut g = Guided::new(&cost, Rule::Tau(0.01), vec![true; 4], 0.0);
        while !g.is_done() {
            let p = g.propose(2);
            if p.is_empty() {
                break;
            }
            let s: Vec<f64> = p
                .iter()
                .map(|(_, a)| a.iter().map(|&i| cost[i]).sum())
                .collect();
            g.record(&s);
        }
        assert_eq!(g.kept(), &[false, false, true, false]);
        assert!((g.score() - 0.009).abs() < 1e-12);
    }

    #[test]
    fn orders_sort_by_cost_then_item() {
        assert_eq!(harmless_first(&[0.5, -1.0, 0.5, 0.0]), [1, 3, 0, 2]);
    }
}
