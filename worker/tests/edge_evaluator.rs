//! The batched edge evaluator (many edges per pass, cached residual below the first receiver,
//! only the needed logits) against the reference path (each edge alone, its receiver's input
//! computed by hand, one full forward pass), on random-weight models and the default model; and
//! an edge without a path to the logits scoring exactly 100.

mod common;

use candle_core::Device;
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
fn an_edge_with_no_path_to_the_logits_scores_exactly_100() {
    // The llama fixture with head 1.2's slice of the output projection set to zero: nothing
    // that head reads can reach the logits.
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("models/llama");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut w =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.1.self_attn.o_proj.weight";
    let o = w[name].clone();
    let (d, hd) = o.dims2().unwrap();
    let dh = hd / 8;
    let mut cols = o.to_vec2::<f32>().unwrap();
    for row in cols.iter_mut() {
        row[2 * dh..3 * dh].fill(0.0);
    }
    let flat: Vec<f32> = cols.into_iter().flatten().collect();
    w.insert(
        name.into(),
        candle_core::Tensor::from_vec(flat, (d, hd), &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
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
