//! The batched edge evaluator (many edges per pass, cached residual below the first receiver,
//! only the needed logits) against the reference path (each edge alone, its receiver's input
//! computed by hand, one full forward pass), on random-weight models and the default model; and
//! an edge without a path to the logits scoring exactly 100.

mod common;

use circuit_sweep_common::Component;
use circuit_sweep_common::edge::Edge;
use circuit_sweep_common::spec::AblationSpec;
use circuit_sweep_common::tasks::{self, GenSpec};
use circuit_sweep_worker::eval::EdgeCandidate;
use circuit_sweep_worker::{Evaluator, LoadOptions, PromptSet, load_model};
use common::*;

fn singles(edges: &[Edge]) -> Vec<EdgeCandidate> {
    edges
        .iter()
        .map(|e| EdgeCandidate {
            nodes: vec![],
            edges: vec![*e],
            settled: vec![],
        })
        .collect()
}

/// Largest difference in percentage points between the batched and the reference scores.
fn worst_against_reference(ev: &Evaluator, edges: &[Edge]) -> f64 {
    let fast = ev.edge_scores(&singles(edges)).unwrap();
    edges
        .iter()
        .zip(&fast)
        .map(|(e, f)| {
            let slow = ev.score_of(ev.edge_metric_reference(*e).unwrap());
            (f - slow).abs()
        })
        .fold(0.0, f64::max)
}

#[test]
fn batched_edges_equal_the_reference_on_random_models() {
    for name in ["gpt2", "llama", "neox", "neox_sequential"] {
        let m = load_fixture(name).model;
        let prompts = fixture_prompts(name);
        // A small token budget forces several passes per start layer.
        let ev = Evaluator::new(&m, &prompts, AblationSpec::default(), 40).unwrap();
        let edges = m.info().graph_shape().edges();
        let worst = worst_against_reference(&ev, &edges);
        assert!(worst <= 1e-3, "{name}: {worst} over {} edges", edges.len());
        let scores = ev.edge_scores(&singles(&edges)).unwrap();
        assert!(
            scores.iter().any(|s| (s - 100.0).abs() > 0.1),
            "{name}: no edge matters, the comparison is empty"
        );
    }
}

#[test]
fn a_score_is_the_same_alone_and_in_any_batch() {
    // Shards and speculative pruning put an edge in passes of any size; its score must not
    // change, bit for bit (a head's slice of a projection has few columns, where the CPU
    // matmul would sum otherwise on few rows).
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name).model;
        let ev = Evaluator::new(&m, &fixture_prompts(name), AblationSpec::default(), 4096).unwrap();
        let edges: Vec<Edge> = m
            .info()
            .graph_shape()
            .edges()
            .into_iter()
            .step_by(5)
            .collect();
        let batch = ev.edge_scores(&singles(&edges)).unwrap();
        for (e, b) in edges.iter().zip(&batch) {
            let alone = ev.edge_scores(&singles(std::slice::from_ref(e))).unwrap()[0];
            assert_eq!(alone, *b, "{name}: {e}");
        }
        same_alone_and_batched(&ev, 1, m.info().n_heads, name);
    }
    let loaded = default_model();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let pairs = tasks::generate(&GenSpec::new("digits".parse().unwrap(), 4, 0), tok).unwrap();
    let ev = Evaluator::new(
        &loaded.model,
        &PromptSet::from_pairs(&pairs, tok).unwrap(),
        AblationSpec::default(),
        16384,
    )
    .unwrap();
    let edges: Vec<Edge> = [
        "h20.6->h25.0.q",
        "m14->h25.2.k",
        "h3.1->h25.4.q",
        "h28.1->h29.1.q",
        "m28->h29.1.v",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let batch = ev.edge_scores(&singles(&edges)).unwrap();
    for (e, b) in edges.iter().zip(&batch) {
        let alone = ev.edge_scores(&singles(std::slice::from_ref(e))).unwrap()[0];
        assert_eq!(alone, *b, "default model: {e}");
    }
    // Node variants too: their logits are a product with two columns and a long inner sum.
    same_alone_and_batched(&ev, 20, 9, "default model");
}

/// Node candidates of `layer` score the same alone and together: single heads, and every head
/// with the MLP (a block that computes no attention and no MLP when it is alone).
fn same_alone_and_batched(ev: &Evaluator, layer: usize, heads: usize, name: &str) {
    let mut nodes: Vec<Vec<Component>> = (0..heads.min(4))
        .map(|head| vec![Component::Head { layer, head }])
        .collect();
    let mut all: Vec<Component> = (0..heads)
        .map(|head| Component::Head { layer, head })
        .collect();
    all.push(Component::Mlp { layer });
    nodes.push(all);
    let batch = ev.scores(&nodes).unwrap();
    for (n, b) in nodes.iter().zip(&batch) {
        let alone = ev.scores(std::slice::from_ref(n)).unwrap()[0];
        assert_eq!(alone, *b, "{name}: {n:?}");
    }
}

#[test]
fn candidates_score_the_same_from_a_run_with_their_settled_edges() {
    // Pruning scores its circuit so far plus one edge: passes that start from a cached run with
    // the circuit so far ablated (and from one built on it after a removal) must give the
    // numbers of passes from the node base, bit for bit. An ablated MLP is in every variant
    // (not computed) and an ablated head too.
    let nodes = vec![
        Component::Mlp { layer: 0 },
        Component::Head { layer: 1, head: 0 },
    ];
    for name in ["gpt2", "llama", "neox", "neox_sequential"] {
        let m = load_fixture(name).model;
        let prompts = fixture_prompts(name);
        let ev = Evaluator::new(&m, &prompts, AblationSpec::default(), 200).unwrap();
        let n = m.info().n_layers;
        let edges = m.info().graph_shape().edges();
        let mut settled: Vec<Edge> = edges
            .iter()
            .filter(|e| e.receiver.layer(n) >= 1)
            .step_by(3)
            .copied()
            .collect();
        let late: Vec<Edge> = edges
            .iter()
            .filter(|e| e.receiver.layer(n) >= 2 && !settled.contains(e))
            .step_by(2)
            .take(13)
            .copied()
            .collect();
        for step in 0..2 {
            let cands = |with: bool| -> Vec<EdgeCandidate> {
                late.iter()
                    .filter(|e| !settled.contains(e))
                    .map(|e| EdgeCandidate {
                        nodes: nodes.clone(),
                        edges: settled.iter().chain([e]).copied().collect(),
                        settled: if with { settled.clone() } else { vec![] },
                    })
                    .collect()
            };
            let plain = ev.edge_scores(&cands(false)).unwrap();
            let from_base = ev.edge_scores(&cands(true)).unwrap();
            assert_eq!(from_base, plain, "{name}, step {step}");
            assert!(
                plain.iter().any(|s| (s - plain[0]).abs() > 1e-6),
                "{name}: all equal"
            );
            // A removal: the next base is computed from this one.
            settled.push(late[step]);
        }
        let bad = EdgeCandidate {
            nodes: vec![],
            edges: vec![edges[0]],
            settled: vec![edges[1]],
        };
        let e = ev.edge_scores(&[bad]).unwrap_err().to_string();
        assert!(e.contains("does not ablate"), "{e}");
    }
}

#[test]
fn an_edge_with_no_path_to_the_logits_scores_exactly_100() {
    let dir = tempfile::tempdir().unwrap();
    llama_with_head_1_2_cut(dir.path());
    let m = load_model(dir.path(), &LoadOptions::default())
        .unwrap()
        .model;
    let ev = Evaluator::new(
        &m,
        &fixture_prompts("llama"),
        AblationSpec::default(),
        1 << 14,
    )
    .unwrap();
    let dead: Vec<Edge> = ["embed->h1.2.q", "h0.5->h1.2.q", "m0->h1.2.q"]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
    let live: Edge = "h0.5->h1.3.q".parse().unwrap();
    let mut cands = singles(&dead);
    cands.extend(singles(&[live]));
    let s = ev.edge_scores(&cands).unwrap();
    for (e, v) in dead.iter().zip(&s) {
        assert_eq!(*v, 100.0, "{e}");
    }
    assert_ne!(s[3], 100.0, "{live} reaches the logits");
}

#[test]
fn default_model_batched_edges_equal_the_reference() {
    let loaded = default_model();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let pairs = tasks::generate(&GenSpec::new("digits".parse().unwrap(), 8, 0), tok).unwrap();
    let prompts = PromptSet::from_pairs(&pairs, tok).unwrap();
    let m = &loaded.model;
    let ev = Evaluator::new(m, &prompts, AblationSpec::default(), 16384).unwrap();
    // A spread of edges: every kind of sender and receiver, early, middle and late.
    let edges: Vec<Edge> = [
        "embed->h0.0.q",
        "embed->h0.2.k",
        "embed->m0",
        "h0.3->m0",
        "h3.1->h9.4.q",
        "m2->h9.1.v",
        "h8.8->m8",
        "m14->h20.2.k",
        "h20.6->h25.0.q",
        "embed->m29",
        "h29.3->m29",
        "m28->logits",
        "h29.8->logits",
        "embed->logits",
        "h15.0->h29.1.q",
    ]
    .iter()
    .map(|e| e.parse().unwrap())
    .collect();
    let worst = worst_against_reference(&ev, &edges);
    eprintln!(
        "worst difference {worst:.2e} percentage points over {} edges",
        edges.len()
    );
    assert!(worst <= 1e-3, "{worst}");
}
