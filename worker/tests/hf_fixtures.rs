//! The Rust forward pass against Hugging Face `transformers` on small random-weight models
//! (fixtures made by `scripts/make_fixtures.py`): logits and every captured activation.

mod common;

use circuit_sweep_worker::{Architecture, Capture, LogitSelection, RunRequest, Start};
use common::*;

const TOL: f32 = 1e-4;

fn check_model(name: &str, arch: Architecture) {
    let loaded = load_fixture(name);
    let model = &loaded.model;
    assert_eq!(model.info().architecture, arch);
    let exp = expected(name);
    let ids = model.tokens(&id_rows(&exp["input_ids"])).unwrap();
    let out = model
        .run(&RunRequest {
            capture: Capture::all(),
            logits: LogitSelection::All,
            ..RunRequest::new(Start::Tokens(ids.clone()))
        })
        .unwrap();
    let mut worst = vec![];
    let mut check = |what: String, got: &candle_core::Tensor| {
        let want = &exp[&what];
        let d = max_abs_diff(got, want);
        worst.push((what.clone(), d));
        assert!(
            d <= TOL,
            "{name}: {what} differs from transformers by {d} (> {TOL})"
        );
    };
    check("logits_all".into(), out.logits.as_ref().unwrap());
    for l in 0..model.info().n_layers {
        check(
            format!("resid.{l}"),
            out.captured.resid[l].as_ref().unwrap(),
        );
        check(format!("z.{l}"), out.captured.z[l].as_ref().unwrap());
        check(format!("mlp.{l}"), out.captured.mlp[l].as_ref().unwrap());
    }
    // The last-position path computes only the last row; it must agree with the full one.
    let last = model
        .run(&RunRequest {
            logits: LogitSelection::Last,
            ..RunRequest::new(Start::Tokens(ids))
        })
        .unwrap();
    check("logits_last".into(), last.logits.as_ref().unwrap());
    eprintln!("{name}: max abs error per tensor {worst:?}");
}

#[test]
fn gpt2_matches_transformers() {
    check_model("gpt2", Architecture::Gpt2);
}

#[test]
fn llama_gqa_tied_matches_transformers() {
    let m = load_fixture("llama");
    assert_eq!((m.model.info().n_heads, m.model.info().n_kv_heads), (8, 2));
    assert!(m.model.info().tied_embeddings);
    check_model("llama", Architecture::Llama);
}

#[test]
fn llama3_scaled_rope_sharded_untied_matches_transformers() {
    let m = load_fixture("llama3_sharded");
    assert!(!m.model.info().tied_embeddings);
    assert_eq!((m.model.info().d_model, m.model.info().d_head), (48, 16));
    check_model("llama3_sharded", Architecture::Llama);
}

#[test]
fn neox_parallel_residual_matches_transformers() {
    check_model("neox", Architecture::GptNeox);
}

#[test]
fn neox_sequential_residual_matches_transformers() {
    check_model("neox_sequential", Architecture::GptNeox);
}

#[test]
fn parameter_counts_match_the_checkpoints() {
    // transformers' own count (tied matrices once), as written in the sharded index.
    let m = load_fixture("llama3_sharded");
    assert_eq!(m.model.info().parameters, 101_712);
    // GPT-2: wte, wpe, 3 blocks, ln_f.
    let g = load_fixture("gpt2");
    let (d, f, v, p) = (64u64, 256u64, 96u64, 32u64);
    let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
    assert_eq!(g.model.info().parameters, v * d + p * d + 3 * block + 2 * d);
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    use candle_core::DType;
    use circuit_sweep_worker::{LoadOptions, load_model};
    for name in ["gpt2", "llama", "neox"] {
        let exp = expected(name);
        for (dtype, tol) in [(DType::F16, 0.03f32), (DType::BF16, 0.2)] {
            let opts = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let m = load_model(&fixtures().join("models").join(name), &opts)
                .unwrap()
                .model;
            assert_eq!(m.info().dtype, dtype);
            let ids = m.tokens(&id_rows(&exp["input_ids"])).unwrap();
            let out = m
                .run(&RunRequest {
                    logits: LogitSelection::Last,
                    ..RunRequest::new(Start::Tokens(ids))
                })
                .unwrap();
            let logits = out.logits.unwrap();
            assert_eq!(logits.dtype(), DType::F32, "logits come back in f32");
            let d = max_abs_diff(&logits, &exp["logits_last"]);
            eprintln!("{name} {dtype:?}: max abs logit error {d}");
            assert!(d <= tol, "{name} in {dtype:?}: {d} > {tol}");
        }
    }
}
