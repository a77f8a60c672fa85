//! Helpers of the worker's integration tests: fixture models and their expected tensors, on top
//! of the workspace's shared test helpers.
#![allow(dead_code)]

#[path = "../../../tests/src/support.rs"]
mod shared;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use circuit_sweep_worker::{LoadOptions, LoadedModel, load_model};
pub use shared::*;

/// A fixture model folder, loaded in f32 on CPU.
pub fn load_fixture(name: &str) -> LoadedModel {
    load_model(
        &fixtures().join("models").join(name),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("loading fixture {name}: {e}"))
}

/// The `expected.safetensors` of a fixture model.
pub fn expected(name: &str) -> HashMap<String, Tensor> {
    let p = fixtures()
        .join("models")
        .join(name)
        .join("expected.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

/// Rows of token ids from an i64 tensor `[n, t]`.
pub fn id_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The default model (SmolLM2-135M GGUF), fetched if absent and loaded in f32.
pub fn default_model() -> LoadedModel {
    let path = default_model_path();
    load_model(&path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Prompt pairs for the random-weight fixtures: random ids, corrupt = clean shifted.
pub fn fixture_prompts(name: &str) -> circuit_sweep_worker::PromptSet {
    let clean = id_rows(&expected(name)["input_ids"]);
    let corrupt: Vec<Vec<u32>> = clean
        .iter()
        .map(|r| r.iter().map(|&t| (t * 5 + 11) % 96).collect())
        .collect();
    circuit_sweep_worker::PromptSet {
        answer: vec![3, 50, 77],
        wrong: vec![8, 9, 77 - 1],
        clean,
        corrupt,
    }
}

/// [`fixture_prompts`] with each corrupt prompt ending in its clean prompt's last token (what
/// denoising needs: the last token's embedding reaches the logits directly).
pub fn fixture_prompts_keep_last(name: &str) -> circuit_sweep_worker::PromptSet {
    let mut p = fixture_prompts(name);
    for (c, k) in p.clean.iter().zip(p.corrupt.iter_mut()) {
        *k.last_mut().unwrap() = *c.last().unwrap();
    }
    p
}

/// The llama fixture written to `dir` with head 1.2's slice of the output projection set to
/// zero: nothing that head reads can reach the logits.
pub fn llama_with_head_1_2_cut(dir: &std::path::Path) {
    let src = fixtures().join("models/llama");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut w =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.1.self_attn.o_proj.weight";
    let o = w[name].to_dtype(candle_core::DType::F32).unwrap();
    let (d, hd) = o.dims2().unwrap();
    let dh = hd / 8;
    let mut cols = o.to_vec2::<f32>().unwrap();
    for row in cols.iter_mut() {
        row[2 * dh..3 * dh].fill(0.0);
    }
    let flat: Vec<f32> = cols.into_iter().flatten().collect();
    w.insert(
        name.into(),
        Tensor::from_vec(flat, (d, hd), &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}
