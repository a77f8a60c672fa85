//! `ModelInfo` of every fixture model matches its `config.json`, and counts exactly the
//! parameters in its safetensors files.

mod common;

use std::fs;

use candle_core::{DType, Device};
use circuit_sweep_worker::Architecture;
use serde_json::Value as Json;

/// A `config.json` value as usize.
fn cfg_usize(c: &Json, key: &str) -> usize {
    c[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config has no integer `{key}`")) as usize
}

#[test]
fn model_info_of_each_fixture_matches_its_config() {
    for name in ["gpt2", "llama", "llama3_sharded", "neox", "neox_sequential"] {
        let dir = common::fixtures().join("models").join(name);
        let c: Json =
            serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let loaded = common::load_fixture(name);
        let i = loaded.model.info();
        assert_eq!(loaded.source, dir);
        let (arch, layers, heads, kv, d, mlp, ctx, theta, tied) =
            match c["model_type"].as_str().unwrap() {
                "gpt2" => (
                    Architecture::Gpt2,
                    cfg_usize(&c, "n_layer"),
                    cfg_usize(&c, "n_head"),
                    cfg_usize(&c, "n_head"),
                    cfg_usize(&c, "n_embd"),
                    c["n_inner"]
                        .as_u64()
                        .map_or(4 * cfg_usize(&c, "n_embd"), |n| n as usize),
                    cfg_usize(&c, "n_positions"),
                    None,
                    true,
                ),
                "llama" => (
                    Architecture::Llama,
                    cfg_usize(&c, "num_hidden_layers"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "num_key_value_heads"),
                    cfg_usize(&c, "hidden_size"),
                    cfg_usize(&c, "intermediate_size"),
                    cfg_usize(&c, "max_position_embeddings"),
                    c["rope_parameters"]["rope_theta"].as_f64(),
                    c["tie_word_embeddings"].as_bool().unwrap(),
                ),
                "gpt_neox" => (
                    Architecture::GptNeox,
                    cfg_usize(&c, "num_hidden_layers"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "hidden_size"),
                    cfg_usize(&c, "intermediate_size"),
                    cfg_usize(&c, "max_position_embeddings"),
                    c["rope_parameters"]["rope_theta"].as_f64(),
                    c["tie_word_embeddings"].as_bool().unwrap(),
                ),
                other => panic!("{name}: unexpected model_type {other}"),
            };
        assert_eq!(i.architecture, arch, "{name}");
        assert_eq!(i.n_layers, layers, "{name}");
        assert_eq!(i.n_layers, 3, "{name}: the fixtures have 3 layers");
        assert_eq!(i.n_heads, heads, "{name}");
        assert_eq!(i.n_kv_heads, kv, "{name}");
        assert_eq!(i.d_model, d, "{name}");
        let d_head = c["head_dim"].as_u64().map_or(d / heads, |n| n as usize);
        assert_eq!(i.d_head, d_head, "{name}");
        assert_eq!(i.d_mlp, mlp, "{name}");
        assert_eq!(i.vocab_size, cfg_usize(&c, "vocab_size"), "{name}");
        assert_eq!(i.context_length, ctx, "{name}");
        assert_eq!(i.rope_theta, theta, "{name}");
        assert_eq!(i.tied_embeddings, tied, "{name}");
        assert_eq!(i.dtype, DType::F32, "{name}");
        // Every tensor in the fixture's files is a parameter the model uses.
        let mut params = 0u64;
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let file = p.file_name().unwrap().to_str().unwrap();
            if file.starts_with("model") && file.ends_with(".safetensors") {
                let t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
                params += t.values().map(|t| t.elem_count() as u64).sum::<u64>();
            }
        }
        assert_eq!(i.parameters, params, "{name}");
    }
}
