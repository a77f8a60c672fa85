//! A second, independent implementation check: the hooked models' last-position logits equal
//! those of `candle-transformers`' own models on the random-weight fixtures. `hf_fixtures.rs`
//! compares against Hugging Face `transformers` (PyTorch); this compares against code written
//! separately in Rust, with the fixture weights fed to both.
//!
//! candle-transformers 0.11.1 has no GPT-2 and no GPT-NeoX, so each fixture goes to the module
//! that computes the same function, with the weights renamed and re-laid out for it:
//!
//! - Llama → `models::llama` (RMSNorm, rotate-half RoPE with `llama3` scaling, GQA, SiLU-gated
//!   MLP, tied or separate head). It reads `rope_theta`/`rope_scaling` at the top of the config
//!   (not the newer `rope_parameters` the fixtures use, which it would silently ignore), so they
//!   are moved there. It takes `head_dim = hidden_size / num_attention_heads`; `llama3_sharded`
//!   has `head_dim` 16 with 4 heads of a 48-wide residual, so it is checked as a variant whose
//!   heads keep their first 12 features (llama3 scaling and separate head unchanged).
//! - GPT-2 → `models::bigcode` (GPT-BigCode: learned positions, LayerNorm, tanh GELU, head tied
//!   to `wte`; `nn.Linear` weights stored `[out, in]` where GPT-2's Conv1D stores `[in, out]`).
//!   Its multi-head path (`multi_query: false`) cannot run in 0.11.1 (it reshapes the fused
//!   projection to `[.., embed_dim, 3 * head_dim]`, not `[.., num_heads, 3 * head_dim]`), so it
//!   runs with `multi_query: true` on a GPT-2 variant whose heads all share head 0's keys and
//!   values: that GPT-2 is exactly a multi-query model.
//! - GPT-NeoX with parallel residual → `models::phi` (attention and MLP in parallel on one
//!   LayerNorm, partial rotate-half RoPE, exact-erf GELU for `"gelu"`). NeoX normalises the MLP
//!   input with its own `post_attention_layernorm`, so the check runs on a `neox` variant whose
//!   `post_attention_layernorm` equals its `input_layernorm`; the head gets a zero bias.
//! - GPT-NeoX with sequential residual (`neox_sequential`) has no counterpart in
//!   candle-transformers and is not checked here (only against `transformers`).
//!
//! Variants are written to a temporary folder and loaded with the project's own loader.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bigcode, llama, phi};
use circuit_sweep_worker::{
    HookedModel, LoadOptions, LogitSelection, RunRequest, Start, load_model,
};
use common::*;
use serde_json::{Value, json};

const TOL: f32 = 1e-4;

type Weights = HashMap<String, Tensor>;

/// The prompts of a fixture's `expected.safetensors`, as rows and as a `u32` tensor.
fn prompts(name: &str) -> (Vec<Vec<u32>>, Tensor) {
    let rows = id_rows(&expected(name)["input_ids"]);
    let t = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
    (rows, t)
}

/// Every weight of a fixture folder (all its safetensors shards but `expected`).
fn fixture_weights(name: &str) -> Weights {
    let dir = fixtures().join("models").join(name);
    let mut w = Weights::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let file = p.file_name().unwrap().to_string_lossy();
        if file.ends_with(".safetensors") && file != "expected.safetensors" {
            w.extend(candle_core::safetensors::load(&p, &Device::Cpu).unwrap());
        }
    }
    assert!(!w.is_empty(), "{name}: no weights");
    w
}

fn fixture_config(name: &str) -> Value {
    let p = fixtures().join("models").join(name).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Writes a model folder and loads it with the project's loader.
fn load_variant(dir: &Path, config: &Value, w: &Weights) -> HookedModel {
    candle_core::safetensors::save(w, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    load_model(dir, &LoadOptions::default()).unwrap().model
}

/// Our last-position logits `[batch, vocab]`.
fn ours(model: &HookedModel, rows: &[Vec<u32>]) -> Tensor {
    let out = model
        .run(&RunRequest {
            logits: LogitSelection::Last,
            ..RunRequest::new(Start::Tokens(model.tokens(rows).unwrap()))
        })
        .unwrap();
    out.logits.unwrap()
}

fn check(what: &str, ours: &Tensor, theirs: &Tensor) {
    let d = max_abs_diff(ours, theirs);
    eprintln!("{what}: max abs logit difference from candle-transformers {d:e}");
    assert!(d <= TOL, "{what}: {d} > {TOL}");
}

fn vb(w: Weights) -> VarBuilder<'static> {
    VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)
}

/// Moves `rope_parameters` (newer `transformers` spelling) to where candle's `LlamaConfig` reads
/// it: `rope_theta`, and `rope_scaling` when the type is not `default`.
fn candle_llama_config(mut c: Value) -> llama::Config {
    let rope = c["rope_parameters"].clone();
    c["rope_theta"] = rope["rope_theta"].clone();
    if rope["rope_type"] != "default" {
        c["rope_scaling"] = rope;
    }
    let cfg: llama::LlamaConfig = serde_json::from_value(c).unwrap();
    cfg.into_config(false)
}

fn run_candle_llama(config: Value, w: Weights, ids: &Tensor) -> Tensor {
    let cfg = candle_llama_config(config);
    let model = llama::Llama::load(vb(w), &cfg).unwrap();
    let mut cache = llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
    model.forward(ids, 0, &mut cache).unwrap()
}

#[test]
fn llama_gqa_tied_matches_candle_llama() {
    let (rows, ids) = prompts("llama");
    let config = fixture_config("llama");
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["tie_word_embeddings"], true);
    let theirs = run_candle_llama(config, fixture_weights("llama"), &ids);
    check("llama", &ours(&load_fixture("llama").model, &rows), &theirs);
}

#[test]
fn llama3_scaled_rope_untied_matches_candle_llama() {
    const KEEP: usize = 12; // hidden_size 48 / 4 heads
    let (rows, ids) = prompts("llama3_sharded");
    let mut config = fixture_config("llama3_sharded");
    assert_eq!(config["rope_parameters"]["rope_type"], "llama3");
    assert_eq!(config["tie_word_embeddings"], false);
    let dh = config["head_dim"].as_u64().unwrap() as usize;
    config["head_dim"] = json!(KEEP);
    // Keep each head's first KEEP features: rows of q/k/v, columns of o.
    let mut w = fixture_weights("llama3_sharded");
    for (name, t) in w.iter_mut() {
        if ["q_proj", "k_proj", "v_proj"]
            .iter()
            .any(|p| name.contains(p))
        {
            let (a, b) = t.dims2().unwrap();
            *t = t.reshape((a / dh, dh, b)).unwrap();
            *t = t
                .narrow(1, 0, KEEP)
                .unwrap()
                .reshape((a / dh * KEEP, b))
                .unwrap();
        } else if name.contains("o_proj") {
            let (a, b) = t.dims2().unwrap();
            *t = t.reshape((a, b / dh, dh)).unwrap();
            *t = t
                .narrow(2, 0, KEEP)
                .unwrap()
                .reshape((a, b / dh * KEEP))
                .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let model = load_variant(dir.path(), &config, &w);
    assert_eq!(model.info().d_head, KEEP);
    let theirs = run_candle_llama(config, w, &ids);
    check(
        "llama3_sharded (head_dim 12)",
        &ours(&model, &rows),
        &theirs,
    );
}

#[test]
fn gpt2_with_shared_kv_heads_matches_candle_bigcode() {
    let (rows, ids) = prompts("gpt2");
    let config = fixture_config("gpt2");
    let n = |k: &str| config[k].as_u64().unwrap() as usize;
    let (d, h, layers) = (n("n_embd"), n("n_head"), n("n_layer"));
    let dh = d / h;
    let mut w = fixture_weights("gpt2");
    // Our variant: every head's key and value columns of c_attn (Conv1D, [in, 3d] as q|k|v)
    // are head 0's.
    let mut big = Weights::new();
    for l in 0..layers {
        let p = format!("transformer.h.{l}.attn.c_attn");
        let (wt, bias) = (&w[&format!("{p}.weight")], &w[&format!("{p}.bias")]);
        let q = wt.narrow(1, 0, d).unwrap();
        let k0 = wt.narrow(1, d, dh).unwrap();
        let v0 = wt.narrow(1, 2 * d, dh).unwrap();
        let (qb, kb0, vb0) = (
            bias.narrow(0, 0, d).unwrap(),
            bias.narrow(0, d, dh).unwrap(),
            bias.narrow(0, 2 * d, dh).unwrap(),
        );
        let rep = |t: &Tensor, dim| Tensor::cat(&vec![t; h], dim).unwrap();
        let shared = Tensor::cat(&[&q, &rep(&k0, 1), &rep(&v0, 1)], 1).unwrap();
        let shared_b = Tensor::cat(&[&qb, &rep(&kb0, 0), &rep(&vb0, 0)], 0).unwrap();
        // BigCode multi-query: one fused nn.Linear [d + 2 dh, d] as q | k | v.
        let mq = Tensor::cat(&[&q, &k0, &v0], 1).unwrap().t().unwrap();
        big.insert(format!("{p}.weight"), mq.contiguous().unwrap());
        big.insert(
            format!("{p}.bias"),
            Tensor::cat(&[&qb, &kb0, &vb0], 0).unwrap(),
        );
        w.insert(format!("{p}.weight"), shared);
        w.insert(format!("{p}.bias"), shared_b);
    }
    for (name, t) in &w {
        if big.contains_key(name) {
            continue;
        }
        // Conv1D [in, out] → nn.Linear [out, in]; embeddings and norms as they are.
        let conv = name.ends_with(".weight") && (name.contains(".attn.") || name.contains(".mlp."));
        let t = if conv {
            t.t().unwrap().contiguous().unwrap()
        } else {
            t.clone()
        };
        big.insert(name.clone(), t);
    }
    let dir = tempfile::tempdir().unwrap();
    let model = load_variant(dir.path(), &config, &w);

    assert!(config["n_inner"].is_null() && config["activation_function"] == "gelu_new");
    let cfg = bigcode::Config {
        vocab_size: n("vocab_size"),
        max_position_embeddings: n("n_positions"),
        num_hidden_layers: layers,
        hidden_size: d,
        layer_norm_epsilon: config["layer_norm_epsilon"].as_f64().unwrap(),
        n_inner: None,
        num_attention_heads: h,
        multi_query: true,
        use_cache: false,
    };
    let mut reference = bigcode::GPTBigCode::load(vb(big), cfg).unwrap();
    let theirs = reference.forward(&ids, 0).unwrap();
    check("gpt2 (shared k/v heads)", &ours(&model, &rows), &theirs);
}

#[test]
fn neox_parallel_with_shared_norm_matches_candle_phi() {
    let (rows, ids) = prompts("neox");
    let config = fixture_config("neox");
    assert_eq!(config["use_parallel_residual"], true);
    let n = |k: &str| config[k].as_u64().unwrap() as usize;
    let (d, h, layers) = (
        n("hidden_size"),
        n("num_attention_heads"),
        n("num_hidden_layers"),
    );
    let dh = d / h;
    let mut w = fixture_weights("neox");
    let mut p = Weights::new();
    let mut put = |name: String, t: Tensor| {
        p.insert(name, t.contiguous().unwrap());
    };
    for l in 0..layers {
        let (src, dst) = (format!("gpt_neox.layers.{l}"), format!("model.layers.{l}"));
        for s in ["weight", "bias"] {
            let ln = w[&format!("{src}.input_layernorm.{s}")].clone();
            w.insert(format!("{src}.post_attention_layernorm.{s}"), ln.clone());
            put(format!("{dst}.input_layernorm.{s}"), ln);
            for (from, to) in [
                ("attention.dense", "self_attn.dense"),
                ("mlp.dense_h_to_4h", "mlp.fc1"),
                ("mlp.dense_4h_to_h", "mlp.fc2"),
            ] {
                put(
                    format!("{dst}.{to}.{s}"),
                    w[&format!("{src}.{from}.{s}")].clone(),
                );
            }
        }
        // query_key_value is per head: rows [h0 q, h0 k, h0 v, h1 q, ...], dh each.
        let qkv = &w[&format!("{src}.attention.query_key_value.weight")];
        let qkv = qkv.reshape((h, 3, dh, d)).unwrap();
        let qkv_b = &w[&format!("{src}.attention.query_key_value.bias")];
        let qkv_b = qkv_b.reshape((h, 3, dh)).unwrap();
        for (i, x) in ["q", "k", "v"].into_iter().enumerate() {
            let wt = qkv.narrow(1, i, 1).unwrap().reshape((d, d)).unwrap();
            let b = qkv_b.narrow(1, i, 1).unwrap().reshape(d).unwrap();
            put(format!("{dst}.self_attn.{x}_proj.weight"), wt);
            put(format!("{dst}.self_attn.{x}_proj.bias"), b);
        }
    }
    put(
        "model.embed_tokens.weight".into(),
        w["gpt_neox.embed_in.weight"].clone(),
    );
    for s in ["weight", "bias"] {
        put(
            format!("model.final_layernorm.{s}"),
            w[&format!("gpt_neox.final_layer_norm.{s}")].clone(),
        );
    }
    let head = w["embed_out.weight"].clone();
    put(
        "lm_head.bias".into(),
        Tensor::zeros(head.dim(0).unwrap(), DType::F32, &Device::Cpu).unwrap(),
    );
    put("lm_head.weight".into(), head);
    let dir = tempfile::tempdir().unwrap();
    let model = load_variant(dir.path(), &config, &w);

    let rope = &config["rope_parameters"];
    assert_eq!(rope["rope_type"], "default");
    let cfg: phi::Config = serde_json::from_value(json!({
        "vocab_size": config["vocab_size"],
        "hidden_size": d,
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": layers,
        "num_attention_heads": h,
        "num_key_value_heads": null,
        // "gelu" is candle_nn::Activation::Gelu, the exact (erf) GELU, as NeoX's "gelu".
        "hidden_act": config["hidden_act"],
        "max_position_embeddings": config["max_position_embeddings"],
        "layer_norm_eps": config["layer_norm_eps"],
        "tie_word_embeddings": false,
        "rope_theta": rope["rope_theta"],
        "partial_rotary_factor": rope["partial_rotary_factor"],
        "qk_layernorm": false,
    }))
    .unwrap();
    let mut reference = phi::Model::new(&cfg, vb(p)).unwrap();
    let theirs = reference.forward(&ids).unwrap();
    check("neox (shared norm)", &ours(&model, &rows), &theirs);
}
