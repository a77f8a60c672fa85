//! The default real model (SmolLM2-135M-Instruct, Q4_1 GGUF) loaded straight from the GGUF
//! file, against `transformers` on the same dequantized weights in f32
//! (`tests/fixtures/smollm2`, made by `scripts/make_fixtures.py`).

mod common;

use candle_core::{Device, IndexOp};
use circuit_sweep_worker::{Architecture, LogitSelection, RunRequest, Start};
use common::*;

#[derive(serde::Deserialize)]
struct Reference {
    prompts: Vec<RefPrompt>,
}

#[derive(serde::Deserialize)]
struct RefPrompt {
    text: String,
    ids: Vec<u32>,
    top10: Vec<RefNext>,
}

#[derive(serde::Deserialize)]
struct RefNext {
    id: u32,
    token: String,
    prob: f64,
}

fn reference() -> Reference {
    let p = fixtures().join("smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn shape_and_facts_of_the_default_model() {
    let m = default_model();
    let i = m.model.info();
    assert_eq!(i.architecture, Architecture::Llama);
    assert_eq!(
        (i.n_layers, i.n_heads, i.n_kv_heads, i.d_model, i.d_head),
        (30, 9, 3, 576, 64)
    );
    assert_eq!(
        (i.d_mlp, i.vocab_size, i.context_length),
        (1536, 49152, 8192)
    );
    // rope_theta must come from the GGUF (100000), not a 10000 fallback.
    assert_eq!(i.rope_theta, Some(100000.0));
    assert!(i.tied_embeddings);
    let tok = m.tokenizer.as_ref().expect("GGUF carries its tokenizer");
    assert!(!tok.adds_bos());
    assert_eq!(tok.bos().map(|b| b.1), Some("<|im_start|>"));
}

#[test]
fn tokenizer_from_gguf_metadata_matches_transformers() {
    let m = default_model();
    let tok = m.tokenizer.as_ref().unwrap();
    for p in reference().prompts {
        assert_eq!(tok.encode(&p.text).unwrap(), p.ids, "ids of {:?}", p.text);
    }
    // Every digit is its own token and the space before a digit is a separate token.
    let ids = tok.encode("12 345").unwrap();
    let texts: Vec<String> = ids.iter().map(|&i| tok.token_text(i)).collect();
    assert_eq!(texts, ["1", "2", " ", "3", "4", "5"]);
    assert_eq!(tok.encode(" May").unwrap().len(), 1);
}

#[test]
fn logits_match_transformers_on_the_dequantized_weights() {
    let m = default_model();
    let refs = reference();
    let st = candle_core::safetensors::load(
        fixtures().join("smollm2/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    for (i, p) in refs.prompts.iter().enumerate() {
        let ids = m.model.tokens(std::slice::from_ref(&p.ids)).unwrap();
        let out = m
            .model
            .run(&RunRequest {
                logits: LogitSelection::Last,
                ..RunRequest::new(Start::Tokens(ids))
            })
            .unwrap();
        let got = out.logits.unwrap().i(0).unwrap();
        let want = &st[&format!("logits_last.{i}")];
        let err = max_abs_diff(&got, want);
        // Logits reach ~35 after 30 layers; f32 summation order alone moves them by ~1e-4.
        assert!(err < 5e-4, "{:?}: max abs logit error {err}", p.text);
        let probs = candle_nn::ops::softmax_last_dim(&got)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let top = p.top10[0].id as usize;
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            best, top,
            "{:?}: top-1 {best} vs transformers {top}",
            p.text
        );
        assert!(
            (probs[top] as f64 - p.top10[0].prob).abs() < 1e-3,
            "{:?}",
            p.text
        );
        assert_eq!(tok.token_text(top as u32), p.top10[0].token);
        eprintln!(
            "{:?}: top-1 {:?} p={:.4} (transformers {:.4}), max abs logit error {err:.2e}",
            p.text, p.top10[0].token, probs[top], p.top10[0].prob
        );
    }
}

#[test]
fn digits_prompt_predicts_five_and_without_space_predicts_space() {
    let m = default_model();
    let tok = m.tokenizer.as_ref().unwrap();
    let top1 = |text: &str| -> (String, f32) {
        let ids = m.model.tokens(&[tok.encode(text).unwrap()]).unwrap();
        let out = m
            .model
            .run(&RunRequest {
                logits: LogitSelection::Last,
                ..RunRequest::new(Start::Tokens(ids))
            })
            .unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&out.logits.unwrap().i(0).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (id, p) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        (tok.token_text(id as u32), *p)
    };
    let (t, p) = top1("1 2 3 4 ");
    assert_eq!(t, "5");
    assert!((p - 0.919).abs() < 0.01, "p(5) = {p}");
    assert_eq!(top1("1 2 3 4").0, " ", "the space-token pitfall");
}

/// Tolerances of the default model's half-precision node scores against f32, in percentage
/// points (the worst seen with margin; `scripts/bench-half-precision.sh` measures every
/// component: bf16 3.7 pp, f16 0.47 pp at most on 16 digits prompts).
const HALF_TOL: [(candle_core::DType, f64); 2] = [
    (candle_core::DType::BF16, 6.0),
    (candle_core::DType::F16, 1.0),
];

#[test]
fn half_precision_node_scores_agree_with_f32() {
    use circuit_sweep_common::spec::AblationSpec;
    use circuit_sweep_common::tasks::{self, GenSpec};
    use circuit_sweep_worker::{Evaluator, LoadOptions, PromptSet, load_model, sweep};
    let f32m = default_model();
    let tok = f32m.tokenizer.as_ref().unwrap();
    let pairs = tasks::generate(&GenSpec::new("digits".parse().unwrap(), 8, 0), tok).unwrap();
    let prompts = PromptSet::from_pairs(&pairs, tok).unwrap();
    let layers = [0, 7, 15, 22, 29];
    let scores = |m: &circuit_sweep_worker::HookedModel| {
        let ev = Evaluator::new(m, &prompts, AblationSpec::default(), 16384).unwrap();
        let i = m.info();
        let s = sweep::node_sweep_layers(&ev, &layers, i.n_layers, i.n_heads, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        s.heads
            .into_iter()
            .flatten()
            .chain(s.mlps)
            .collect::<Vec<f64>>()
    };
    let want = scores(&f32m.model);
    for (dtype, tol) in HALF_TOL {
        let m = load_model(
            &f32m.source,
            &LoadOptions {
                dtype,
                ..LoadOptions::default()
            },
        )
        .unwrap()
        .model;
        let got = scores(&m);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{dtype:?}: worst node score difference {worst:.3} pp over {} components",
            got.len()
        );
        assert!(worst <= tol, "{dtype:?}: {worst} pp > {tol}");
        // The component that matters most is the same.
        let argmin = |v: &[f64]| (0..v.len()).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmin(&got), argmin(&want), "{dtype:?}");
    }
}
