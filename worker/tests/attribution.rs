//! Attribution (EAP, EAP-IG) against exact patching on random-weight models of every
//! architecture, in f64 (attention scores and logits in f32) so that finite differences are
//! accurate: each edge's EAP
//! score is the derivative of the metric with respect to that edge's ablation coefficient at 0;
//! a node's score is the sum of its edges'; integrated gradients over many steps add up to the
//! metric change when everything is ablated; an edge with no path to the logits gets exactly 0.

mod common;

use candle_core::{DType, Device};
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, GraphShape, Receiver, Sender};
use circuit_sweep_common::spec::{AblationKind, AblationSpec, Metric};
use circuit_sweep_worker::eval::EdgeCandidate;
use circuit_sweep_worker::{Evaluator, HookedModel, LoadOptions, load_model};
use common::*;

const MODELS: [&str; 4] = ["gpt2", "llama", "neox", "neox_sequential"];

fn load_f64(dir: &std::path::Path) -> HookedModel {
    let opts = LoadOptions {
        dtype: DType::F64,
        device: Device::Cpu,
    };
    load_model(dir, &opts).unwrap().model
}

fn evaluator(m: &HookedModel, name: &str, metric: Metric) -> Evaluator {
    let ablation = AblationSpec {
        metric,
        ..AblationSpec::default()
    };
    Evaluator::new(m, &fixture_prompts(name), ablation, 1 << 14).unwrap()
}

/// The metric's derivative in the edge's ablation coefficient at 0: central differences at three
/// steps, extrapolated twice (Richardson) so that the error is of sixth order in the step. The
/// steps are not tiny because the evaluator reads logits in f32, which also sets the absolute
/// floor of the comparison.
fn derivative(ev: &Evaluator, e: Edge) -> f64 {
    let central = |h: f64| {
        (ev.edge_metric_partial(e, h).unwrap() - ev.edge_metric_partial(e, -h).unwrap()) / (2.0 * h)
    };
    let (d1, d2, d3) = (central(0.1), central(0.05), central(0.025));
    let (e1, e2) = ((4.0 * d2 - d1) / 3.0, (4.0 * d3 - d2) / 3.0);
    (16.0 * e2 - e1) / 15.0
}

/// Checks every edge's EAP score against the finite difference; returns how many mattered.
fn eap_against_derivatives(ev: &Evaluator, what: &str) -> usize {
    let edges = ev.graph_shape().edges();
    let eap = ev.attribute(1, true, &[], 0..ev.prompts()).unwrap();
    assert_eq!(eap.edges.len(), edges.len(), "{what}");
    let mut nonzero = 0;
    for (e, a) in edges.iter().zip(&eap.edges) {
        let fd = derivative(ev, *e);
        assert!(
            (a - fd).abs() <= 1e-3 * fd.abs() + 1e-5,
            "{what}: {e}: EAP {a} but the derivative is {fd}"
        );
        nonzero += usize::from(fd.abs() > 1e-6);
    }
    nonzero
}

#[test]
fn eap_is_the_derivative_of_the_metric_in_each_edge_ablation() {
    for name in MODELS {
        let m = load_f64(&fixtures().join("models").join(name));
        let mut ev = evaluator(&m, name, Metric::LogitDiff);
        let n = eap_against_derivatives(&ev, name);
        assert!(
            n > 10,
            "{name}: only {n} edges matter, the comparison is empty"
        );
        // Edges ablated at the last position only.
        let t = fixture_prompts(name).clean[0].len();
        ev.set_edge_positions(Some(vec![t - 1])).unwrap();
        eap_against_derivatives(&ev, &format!("{name}, last position"));
    }
    // Grouped-query attention with key/value receivers per key/value head.
    let m = load_f64(&fixtures().join("models/llama"));
    let mut ev = evaluator(&m, "llama", Metric::LogitDiff);
    ev.set_kv_per_query(false);
    eap_against_derivatives(&ev, "llama, kv_edges = kv_head");
}

#[test]
fn a_node_scores_the_sum_of_the_edges_out_of_it() {
    for name in MODELS {
        let m = load_f64(&fixtures().join("models").join(name));
        let ev = evaluator(&m, name, Metric::LogitDiff);
        let graph = ev.graph_shape();
        for steps in [1, 3] {
            let a = ev.attribute(steps, true, &[], 0..ev.prompts()).unwrap();
            let senders = graph.senders();
            assert_eq!(a.nodes.len(), senders.len());
            for (s, node) in senders.iter().zip(&a.nodes) {
                let sum: f64 = graph
                    .edges()
                    .iter()
                    .zip(&a.edges)
                    .filter(|(e, _)| e.sender == *s)
                    .map(|(_, v)| v)
                    .sum();
                assert!(
                    (sum - node).abs() <= 1e-9 * node.abs().max(1e-6),
                    "{name}, {steps} steps: {s}: edges add up to {sum}, the node scores {node}"
                );
            }
            // Nodes alone (no receiver inputs) give the same node scores.
            let alone = ev.attribute(steps, false, &[], 0..ev.prompts()).unwrap();
            assert!(alone.edges.is_empty());
            for (x, y) in alone.nodes.iter().zip(&a.nodes) {
                assert!(
                    (x - y).abs() <= 1e-9 * y.abs().max(1e-6),
                    "{name}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn shards_of_prompts_add_up_to_the_whole() {
    let m = load_f64(&fixtures().join("models/gpt2"));
    let ev = evaluator(&m, "gpt2", Metric::LogitDiff);
    let n = ev.prompts();
    assert!(n >= 2);
    let whole = ev.attribute(2, true, &[], 0..n).unwrap();
    let a = ev.attribute(2, true, &[], 0..1).unwrap();
    let b = ev.attribute(2, true, &[], 1..n).unwrap();
    assert!(!whole.edges.is_empty());
    assert_eq!(
        (a.edges.len(), b.edges.len()),
        (whole.edges.len(), whole.edges.len())
    );
    for ((w, x), y) in whole.edges.iter().zip(&a.edges).zip(&b.edges) {
        assert!(
            (w - (x + y)).abs() <= 1e-9 * w.abs().max(1e-6),
            "{w} vs {x} + {y}"
        );
    }
}

#[test]
fn integrated_gradients_add_up_to_ablating_everything() {
    for (name, metric) in [
        ("gpt2", Metric::LogitDiff),
        ("llama", Metric::Kl),
        ("neox", Metric::LogitDiff),
    ] {
        let m = load_f64(&fixtures().join("models").join(name));
        let ev = evaluator(&m, name, metric);
        let all = ev.graph_shape().edges();
        let everything = ev
            .edge_metrics(&[EdgeCandidate {
                nodes: vec![],
                edges: all,
                settled: vec![],
            }])
            .unwrap()[0];
        let change = everything - ev.full;
        let error = |steps: usize| {
            let a = ev.attribute(steps, true, &[], 0..ev.prompts()).unwrap();
            (a.edges.iter().sum::<f64>() - change).abs() / change.abs()
        };
        // The rule (left Riemann sums, so that one step is EAP) converges at first order: four
        // times the steps, about a quarter of the error.
        let (coarse, fine) = (error(16), error(64));
        assert!(
            fine < 0.2 && fine <= coarse / 3.0,
            "{name} ({metric:?}): integrated gradients miss the change {change} by {fine} \
             (64 steps), {coarse} (16 steps)"
        );
    }
}

#[test]
fn eap_of_kl_is_zero_at_the_full_model() {
    // KL from the full model is smallest there: its gradient vanishes, the reason EAP-IG exists.
    let m = load_f64(&fixtures().join("models/neox"));
    let ev = evaluator(&m, "neox", Metric::Kl);
    let a = ev.attribute(1, true, &[], 0..ev.prompts()).unwrap();
    let largest = |v: &[f64]| v.iter().fold(0f64, |w, x| w.max(x.abs()));
    let ig = ev.attribute(5, true, &[], 0..ev.prompts()).unwrap();
    // Not exactly 0: the full model's distribution is kept from f32 logits.
    assert!(
        largest(&a.edges) < 1e-4 * largest(&ig.edges),
        "EAP {} against EAP-IG {}",
        largest(&a.edges),
        largest(&ig.edges)
    );
}

#[test]
fn an_edge_with_no_path_to_the_logits_gets_exactly_zero() {
    let dir = tempfile::tempdir().unwrap();
    llama_with_head_1_2_cut(dir.path());
    let m = load_f64(dir.path());
    let ev = evaluator(&m, "llama", Metric::LogitDiff);
    let graph = ev.graph_shape();
    let a = ev.attribute(3, true, &[], 0..ev.prompts()).unwrap();
    let mut into = 0;
    for (e, v) in graph.edges().iter().zip(&a.edges) {
        if matches!(
            e.receiver,
            Receiver::Attn {
                layer: 1,
                index: 2,
                ..
            }
        ) {
            assert_eq!(*v, 0.0, "{e}");
            into += 1;
        }
    }
    assert!(into > 0);
    let head = graph
        .senders()
        .iter()
        .position(|s| *s == Sender::Node("h1.2".parse().unwrap()))
        .unwrap();
    assert_eq!(a.nodes[head], 0.0);
    assert!(a.edges.iter().any(|v| v.abs() > 1e-6));
}

#[test]
fn nodes_ablated_outright_score_as_a_model_without_them() {
    // Zero-ablating head h1.2 outright must give the attribution of the same model with that
    // head's output projection cut, in every step of the integration.
    let zero = |m: &HookedModel| {
        let ablation = AblationSpec {
            kind: AblationKind::Zero,
            ..AblationSpec::default()
        };
        Evaluator::new(m, &fixture_prompts("llama"), ablation, 1 << 14).unwrap()
    };
    let m = load_f64(&fixtures().join("models/llama"));
    let dir = tempfile::tempdir().unwrap();
    llama_with_head_1_2_cut(dir.path());
    let cut = load_f64(dir.path());
    let (ev, ev_cut) = (zero(&m), zero(&cut));
    let head: Component = "h1.2".parse().unwrap();
    for steps in [1, 3] {
        let a = ev.attribute(steps, true, &[head], 0..ev.prompts()).unwrap();
        let b = ev_cut.attribute(steps, true, &[], 0..ev.prompts()).unwrap();
        let graph = ev.graph_shape();
        for ((e, x), y) in graph.edges().iter().zip(&a.edges).zip(&b.edges) {
            assert!(
                (x - y).abs() <= 1e-9 * y.abs() + 1e-12,
                "{steps} steps, {e}: {x} outright, {y} cut"
            );
            if e.sender == Sender::Node(head) {
                assert_eq!(*x, 0.0, "{e}");
            }
        }
        assert!(a.edges.iter().any(|v| v.abs() > 1e-6));
        // A head ablated outright has no effect left to estimate.
        let row = GraphShape {
            embed: true,
            ..graph
        }
        .senders()
        .iter()
        .position(|s| *s == Sender::Node(head))
        .unwrap();
        assert_eq!(a.nodes[row], 0.0);
        // Without it, the head's own edges have estimates.
        let whole = ev.attribute(steps, true, &[], 0..ev.prompts()).unwrap();
        assert!(whole.nodes[row].abs() > 1e-9);
    }
}
