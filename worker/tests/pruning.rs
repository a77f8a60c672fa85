//! Pruning and the order study on a small random-weight GPT-2, against a brute-force reference
//! written here independently (a full, unbatched forward pass per candidate).

mod common;

use circuit_sweep_common::Component;
use circuit_sweep_common::greedy::Rule;
use circuit_sweep_common::orders;
use circuit_sweep_common::prune::{self, PassOrder, Pruner};
use circuit_sweep_common::spec::{AblationSpec, Metric, Schedule};
use circuit_sweep_worker::{Evaluator, HookedModel, PromptSet, sweep};
use common::*;

/// Clean prompts from the fixture; the answer is each prompt's top-1 token and the wrong one
/// its least likely, so the full model has a clear logit difference to lose.
fn prompts(m: &HookedModel) -> PromptSet {
    let clean = id_rows(&expected("gpt2")["input_ids"]);
    let logits = m.last_logits(&clean, 8).unwrap();
    let arg = |row: &Vec<f32>, best: bool| -> u32 {
        let it = row.iter().enumerate();
        let pick = if best {
            it.max_by(|a, b| a.1.total_cmp(b.1))
        } else {
            it.min_by(|a, b| a.1.total_cmp(b.1))
        };
        pick.unwrap().0 as u32
    };
    let corrupt = clean
        .iter()
        .map(|r| r.iter().map(|&t| (t * 7 + 5) % 96).collect())
        .collect();
    PromptSet {
        answer: logits.iter().map(|r| arg(r, true)).collect(),
        wrong: logits.iter().map(|r| arg(r, false)).collect(),
        clean,
        corrupt,
    }
}

/// The reference: greedy pruning exactly as the spec words it, one full forward per candidate.
fn brute_force(
    ev: &Evaluator,
    n_layers: usize,
    n_heads: usize,
    threshold: f64,
    order_of_pass: &dyn Fn(usize) -> Vec<Component>,
) -> (Vec<Component>, Vec<(String, bool)>) {
    brute_force_by(
        ev,
        n_layers,
        n_heads,
        &|score, _| score > threshold,
        order_of_pass,
    )
}

/// The reference with any removal rule: `remove(score without the candidate, score of the
/// current circuit)`.
fn brute_force_by(
    ev: &Evaluator,
    n_layers: usize,
    n_heads: usize,
    remove: &dyn Fn(f64, f64) -> bool,
    order_of_pass: &dyn Fn(usize) -> Vec<Component>,
) -> (Vec<Component>, Vec<(String, bool)>) {
    let mut circuit: Vec<Component> = Component::all(n_layers, n_heads);
    let mut current = ev.score_of(ev.metrics_naive(&[vec![]], true).unwrap()[0]);
    let mut decisions = vec![];
    for pass in 0.. {
        let mut removed_any = false;
        for c in order_of_pass(pass) {
            if !circuit.contains(&c) {
                continue;
            }
            let ablated: Vec<Component> = Component::all(n_layers, n_heads)
                .into_iter()
                .filter(|x| *x == c || !circuit.contains(x))
                .collect();
            let score = ev.score_of(ev.metrics_naive(&[ablated], true).unwrap()[0]);
            let removed = remove(score, current);
            decisions.push((c.to_string(), removed));
            if removed {
                circuit.retain(|x| *x != c);
                current = score;
                removed_any = true;
            }
        }
        if !removed_any {
            break;
        }
    }
    circuit.sort();
    (circuit, decisions)
}

fn backward(n_layers: usize, n_heads: usize) -> Vec<Component> {
    // Written out again here: layers last to first, the MLP then heads 0..H-1.
    let mut v = vec![];
    for layer in (0..n_layers).rev() {
        v.push(Component::Mlp { layer });
        for head in 0..n_heads {
            v.push(Component::Head { layer, head });
        }
    }
    v
}

fn forward(n_layers: usize, n_heads: usize) -> Vec<Component> {
    let mut v = vec![];
    for layer in 0..n_layers {
        for head in 0..n_heads {
            v.push(Component::Head { layer, head });
        }
        v.push(Component::Mlp { layer });
    }
    v
}

fn run_pruner(ev: &Evaluator, n_layers: usize, n_heads: usize, order: PassOrder, t: f64) -> Pruner {
    run_by(ev, n_layers, n_heads, order, Rule::Threshold(t))
}

fn run_by(ev: &Evaluator, n_layers: usize, n_heads: usize, order: PassOrder, rule: Rule) -> Pruner {
    let start = ev.scores(&[vec![]]).unwrap()[0];
    let mut p = Pruner::new(n_layers, n_heads, order, rule, None, start);
    sweep::prune_lockstep(ev, std::slice::from_mut(&mut p), &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    p
}

#[test]
fn pruning_equals_the_brute_force_reference_and_replays() {
    let m = load_fixture("gpt2").model;
    let (l, h) = (m.info().n_layers, m.info().n_heads);
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    assert!(ev.full > 2.0, "a clear logit difference: {}", ev.full);
    for t in [60.0, 80.0, 95.0] {
        let p = run_pruner(&ev, l, h, PassOrder::Schedule(Schedule::Paper), t);
        let r = p.result();
        let paper = |pass: usize| {
            if pass.is_multiple_of(2) {
                backward(l, h)
            } else {
                forward(l, h)
            }
        };
        let (want_circuit, want_decisions) = brute_force(&ev, l, h, t, &paper);
        let got: Vec<(String, bool)> = r
            .decisions
            .iter()
            .map(|d| (d.component.clone(), d.removed))
            .collect();
        assert_eq!(got, want_decisions, "threshold {t}");
        let mut circuit = p.circuit();
        circuit.sort();
        assert_eq!(circuit, want_circuit, "threshold {t}");
        assert!(
            r.score > t,
            "the circuit keeps more than the threshold: {} at {t}",
            r.score
        );
        assert!(
            want_circuit.len() < l * (h + 1),
            "threshold {t} removed something"
        );
        assert_eq!(
            prune::replay(l, h, None, &r.decisions).unwrap(),
            want_circuit
        );
        // The recorded score is the circuit's own score.
        let ablated: Vec<Component> = Component::all(l, h)
            .into_iter()
            .filter(|c| !circuit.contains(c))
            .collect();
        assert!((ev.scores(&[ablated]).unwrap()[0] - r.score).abs() < 1e-9);
    }
}

#[test]
fn nested_thresholds_give_nested_circuits() {
    let m = load_fixture("gpt2").model;
    let (l, h) = (m.info().n_layers, m.info().n_heads);
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    let mut start: Option<Vec<Component>> = None;
    let mut score = ev.scores(&[vec![]]).unwrap()[0];
    let mut sizes = vec![];
    for t in [97.0, 90.0, 80.0, 70.0] {
        let mut p = Pruner::new(
            l,
            h,
            PassOrder::Schedule(Schedule::Paper),
            Rule::Threshold(t),
            start.as_deref(),
            score,
        );
        sweep::prune_lockstep(&ev, std::slice::from_mut(&mut p), &mut |_, _| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        let c = p.circuit();
        if let Some(prev) = &start {
            assert!(
                c.iter().all(|x| prev.contains(x)),
                "the {t}% circuit is inside the previous one"
            );
        }
        sizes.push(c.len());
        score = p.result().score;
        start = Some(c);
    }
    assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
}

#[test]
fn the_order_study_in_lockstep_equals_one_prune_per_order_for_any_batch() {
    let m = load_fixture("gpt2").model;
    let (l, h) = (m.info().n_layers, m.info().n_heads);
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("orders.json");
    let orders = orders::random_orders(l, h, 5, 3);
    let names: Vec<Vec<String>> = orders
        .iter()
        .map(|o| o.iter().map(|c| c.to_string()).collect())
        .collect();
    std::fs::write(&f, serde_json::to_string(&names).unwrap()).unwrap();
    let read = orders::read_orders(&f, l, h).unwrap();
    assert_eq!(read, orders);
    let start = ev.scores(&[vec![]]).unwrap()[0];
    let mut pruners: Vec<Pruner> = read
        .iter()
        .map(|o| {
            Pruner::new(
                l,
                h,
                PassOrder::Fixed(o.clone()),
                Rule::Threshold(80.0),
                None,
                start,
            )
        })
        .collect();
    sweep::prune_lockstep(&ev, &mut pruners, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let together: Vec<_> = pruners.iter().map(Pruner::result).collect();
    // Any lockstep batch, and passes cut small by the token budget, take the same decisions.
    let small = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 40).unwrap();
    for (size, ev) in [(2, &ev), (3, &small), (5, &small)] {
        let mut batched = vec![];
        for group in read.chunks(size) {
            let mut ps: Vec<Pruner> = group
                .iter()
                .map(|o| {
                    let r = Rule::Threshold(80.0);
                    Pruner::new(l, h, PassOrder::Fixed(o.clone()), r, None, start)
                })
                .collect();
            sweep::prune_lockstep(ev, &mut ps, &mut |_, _| std::ops::ControlFlow::Continue(()))
                .unwrap();
            batched.extend(ps.iter().map(Pruner::result));
        }
        assert_eq!(batched, together, "lockstep batches of {size}");
    }
    for (o, r) in read.iter().zip(&together) {
        let alone = run_pruner(&ev, l, h, PassOrder::Fixed(o.clone()), 80.0).result();
        assert_eq!(&alone, r);
        let (circuit, _) = brute_force(&ev, l, h, 80.0, &|_| o.clone());
        let mut mine: Vec<Component> = r
            .heads
            .iter()
            .chain(&r.mlps)
            .map(|n| n.parse().unwrap())
            .collect();
        mine.sort();
        assert_eq!(mine, circuit);
    }
    let study = orders::summarize(&read, &together, 100.0, None);
    assert_eq!(study.runs.len(), 5);
    assert!(study.stats.jaccard_mean > 0.0 && study.stats.jaccard_mean <= 1.0);
    assert!(
        study
            .stats
            .core
            .iter()
            .all(|c| study.stats.frequency[c] == 1.0)
    );
}

#[test]
fn kl_pruning_follows_acdcs_rule_and_keeps_what_matters() {
    let m = load_fixture("gpt2").model;
    let (l, h) = (m.info().n_layers, m.info().n_heads);
    let spec = AblationSpec {
        metric: Metric::Kl,
        ..AblationSpec::default()
    };
    let ev = Evaluator::new(&m, &prompts(&m), spec, 4096).unwrap();
    let paper = |pass: usize| {
        if pass.is_multiple_of(2) {
            backward(l, h)
        } else {
            forward(l, h)
        }
    };
    let all = l * (h + 1);
    let mut sizes = vec![];
    for tau in [0.001, 0.01, 0.05, 0.1] {
        let p = run_by(
            &ev,
            l,
            h,
            PassOrder::Schedule(Schedule::Paper),
            Rule::Tau(tau),
        );
        let r = p.result();
        // ACDC: remove when KL(circuit without it) - KL(circuit) < tau.
        let (want, decisions) =
            brute_force_by(&ev, l, h, &|kl, current| kl - current < tau, &paper);
        let got: Vec<(String, bool)> = r
            .decisions
            .iter()
            .map(|d| (d.component.clone(), d.removed))
            .collect();
        assert_eq!(got, decisions, "tau {tau}");
        let mut circuit = p.circuit();
        circuit.sort();
        assert_eq!(circuit, want, "tau {tau}");
        assert_eq!((r.threshold, r.tau), (None, Some(tau)));
        // Every removal cost less than tau: the circuit's KL stays within removals * tau.
        let removals = r.decisions.iter().filter(|d| d.removed).count() as f64;
        assert!(r.score < removals * tau + 1e-9, "tau {tau}: KL {}", r.score);
        sizes.push(circuit.len());
    }
    // A larger tolerance prunes at least as much; the largest removes something and keeps what
    // matters (the old rule, "KL above a % threshold", never removed anything).
    assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
    assert!(
        sizes[sizes.len() - 1] < all && sizes[sizes.len() - 1] > 0,
        "{sizes:?}"
    );
}

/// The score with `nodes` and the edges `ablated` ablated, alone in its pass.
fn restricted_score(
    ev: &Evaluator,
    nodes: &[Component],
    ablated: &[circuit_sweep_common::edge::Edge],
) -> f64 {
    ev.edge_scores(&[circuit_sweep_worker::eval::EdgeCandidate {
        nodes: nodes.to_vec(),
        edges: ablated.to_vec(),
        settled: vec![],
    }])
    .unwrap()[0]
}

/// Runs `p` to the end one candidate at a time, each scored alone by `score`.
fn one_at_a_time(
    p: &mut circuit_sweep_common::edge_prune::EdgePruner,
    score: &dyn Fn(&[circuit_sweep_common::edge::Edge]) -> f64,
) {
    while !p.is_done() {
        let prop = p.propose(1);
        if prop.is_empty() {
            break;
        }
        let s: Vec<f64> = prop.iter().map(|(_, a)| score(a)).collect();
        p.record(&prop, &s);
    }
}

/// Nodes ablated outright in the edge pruning tests: the graph is restricted to the others.
fn outside_nodes() -> Vec<Component> {
    vec![
        Component::Mlp { layer: 0 },
        Component::Head { layer: 2, head: 1 },
    ]
}

#[test]
fn edge_pruning_in_speculative_lockstep_equals_one_candidate_at_a_time() {
    // Edge pruning batches guesses (runs of removals, runs of keeps) and starts passes from
    // cached runs of each search's circuit so far; one candidate at a time, each scored from
    // the node base alone, must take the same decisions on the same scores, bit for bit. Eight
    // orders in lockstep also outnumber the cached runs.
    use circuit_sweep_common::edge::Edge;
    use circuit_sweep_common::edge_prune::{EdgePruner, random_edge_order};
    let m = load_fixture("gpt2").model;
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    let nodes = outside_nodes();
    let edges: Vec<Edge> = m
        .info()
        .graph_shape()
        .edges()
        .into_iter()
        .filter(|e| !nodes.iter().any(|n| e.to_string().contains(&n.to_string())))
        .collect();
    let score = |ablated: &[Edge]| restricted_score(&ev, &nodes, ablated);
    let start = score(&[]);
    // A threshold some way below the restricted graph's own score: runs of both decisions.
    let rule = Rule::Threshold(start - 8.0);
    let orders: Vec<Option<Vec<Edge>>> = std::iter::once(None)
        .chain((0..7).map(|i| Some(random_edge_order(&edges, 4, i))))
        .collect();
    let mut pruners: Vec<EdgePruner> = orders
        .iter()
        .map(|o| EdgePruner::new(edges.clone(), o.as_deref(), rule, start).unwrap())
        .collect();
    sweep::edge_prune_lockstep(&ev, &nodes, &mut pruners, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    for (o, p) in orders.iter().zip(&pruners) {
        let mut alone = EdgePruner::new(edges.clone(), o.as_deref(), rule, start).unwrap();
        one_at_a_time(&mut alone, &score);
        let (a, b) = (alone.result(), p.result());
        assert_eq!(a, b);
        let removed = a.decisions.iter().filter(|d| d.removed).count();
        assert!(
            removed > 3 && a.edges.len() > 3,
            "{removed} removed, {} kept",
            a.edges.len()
        );
    }
}

#[test]
fn guided_edge_pruning_equals_one_test_at_a_time_and_saves_evaluations() {
    // Attribute, then verify: edges in EAP-IG order, removed in blocks. In speculative lockstep
    // it must take the decisions of one test at a time; its circuit must satisfy the rule by
    // its own exact score; and it must need fewer evaluations than plain greedy.
    use circuit_sweep_common::edge::Edge;
    use circuit_sweep_common::edge_prune::EdgePruner;
    let m = load_fixture("gpt2").model;
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    let nodes = outside_nodes();
    let all = m.info().graph_shape().edges();
    let inside: Vec<usize> = (0..all.len())
        .filter(|&i| {
            !nodes
                .iter()
                .any(|n| all[i].to_string().contains(&n.to_string()))
        })
        .collect();
    let edges: Vec<Edge> = inside.iter().map(|&i| all[i]).collect();
    let score = |ablated: &[Edge]| restricted_score(&ev, &nodes, ablated);
    let start = score(&[]);
    let rule = Rule::Threshold(start - 8.0);
    let sums = sweep::attribution(&ev, 3, true, &nodes, 0..ev.prompts(), &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let changes: Vec<f64> = inside.iter().map(|&i| sums.edges[i]).collect();
    let cost = sweep::estimated_harm(&ev, rule, &changes);
    let mut guided = [EdgePruner::guided(edges.clone(), &cost, rule, start)];
    sweep::edge_prune_lockstep(&ev, &nodes, &mut guided, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let mut alone = EdgePruner::guided(edges.clone(), &cost, rule, start);
    one_at_a_time(&mut alone, &score);
    let (g, a) = (guided[0].result(), alone.result());
    assert_eq!(g, a);
    let kept: Vec<Edge> = g.edges.iter().map(|e| e.parse().unwrap()).collect();
    let removed: Vec<Edge> = edges
        .iter()
        .filter(|e| !kept.contains(e))
        .copied()
        .collect();
    assert!(!kept.is_empty() && !removed.is_empty());
    assert_eq!(
        score(&removed),
        g.score,
        "the recorded score is the circuit's own"
    );
    assert!(rule.removes(g.score, start), "{} at {rule:?}", g.score);
    let mut plain = [EdgePruner::new(edges.clone(), None, rule, start).unwrap()];
    sweep::edge_prune_lockstep(&ev, &nodes, &mut plain, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let p = plain[0].result();
    assert!(
        g.evaluations < edges.len() && g.evaluations < p.evaluations,
        "guided {} evaluations, plain {}, {} edges",
        g.evaluations,
        p.evaluations,
        edges.len()
    );
    assert!(guided[0].blocks() > 0);
}

#[test]
fn guided_node_pruning_keeps_a_circuit_above_the_threshold() {
    let m = load_fixture("gpt2").model;
    let ev = Evaluator::new(&m, &prompts(&m), AblationSpec::default(), 4096).unwrap();
    let (l, h) = (m.info().n_layers, m.info().n_heads);
    let sums = sweep::attribution(&ev, 3, false, &[], 0..ev.prompts(), &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    // Node sums come with the embedding first, then each layer's heads and MLP.
    let changes = sums.nodes[1..].to_vec();
    assert_eq!(changes.len(), l * (h + 1));
    let rule = Rule::Threshold(80.0);
    let cost = sweep::estimated_harm(&ev, rule, &changes);
    let run = |k: usize| {
        let mut p = Pruner::guided(l, h, &cost, rule, None, 100.0);
        while !p.is_done() {
            let prop = p.propose(k);
            if prop.is_empty() {
                break;
            }
            let c: Vec<Vec<Component>> = prop.iter().map(|(_, a)| a.clone()).collect();
            let s = ev.scores(&c).unwrap();
            p.record(&prop, &s);
        }
        p
    };
    let p = run(1);
    let r = p.result();
    assert_eq!(run(8).result(), r);
    assert!(r.score > 80.0);
    let circuit = p.circuit();
    assert!(!circuit.is_empty() && circuit.len() < l * (h + 1));
    let ablated: Vec<Component> = Component::all(l, h)
        .into_iter()
        .filter(|c| !circuit.contains(c))
        .collect();
    assert!((ev.scores(&[ablated]).unwrap()[0] - r.score).abs() < 1e-9);
    let mut replayed = prune::replay(l, h, None, &r.decisions).unwrap();
    replayed.sort();
    let mut want = circuit.clone();
    want.sort();
    assert_eq!(replayed, want);
}
