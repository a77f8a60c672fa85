//! A Hugging Face tokenizer built from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE vocab
//! and merges, special tokens, BOS policy, and the pre-tokenizer llama.cpp names in
//! `tokenizer.ggml.pre`. No other file is needed.

use serde_json::{Value as Json, json};

use super::LoadError;
use super::gguf::GgufFile;
use crate::tokenizer::PromptTokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama-3's split pattern (also used by several later BPE models).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(f: &GgufFile, pre: &str) -> Result<Json, LoadError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM: every digit its own token, then GPT-2's byte-level split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]})
        }
        other => {
            return Err(LoadError::Tokenizer {
                file: f.path().to_path_buf(),
                reason: format!(
                    "tokenizer.ggml.pre `{other}` is not supported (supported: default, gpt2, smollm, llama3, llama-bpe)"
                ),
            });
        }
    })
}

/// Builds the tokenizer from a GGUF file's metadata.
pub(crate) fn build(f: &GgufFile) -> Result<PromptTokenizer, LoadError> {
    let bad = |reason: String| LoadError::Tokenizer {
        file: f.path().to_path_buf(),
        reason,
    };
    let model = f.string("tokenizer.ggml.model")?.unwrap_or("gpt2");
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer.ggml.model `{model}` is not supported yet (only byte-level BPE, `gpt2`): \
             load the Hugging Face folder with its tokenizer.json instead"
        )));
    }
    let tokens = f.strings("tokenizer.ggml.tokens")?;
    let merges = f.strings("tokenizer.ggml.merges")?;
    let types = f.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let pre = f.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let bos = f.uint("tokenizer.ggml.bos_token_id")?.map(|n| n as u32);
    let add_bos = match f.value("tokenizer.ggml.add_bos_token") {
        Some(candle_core::quantized::gguf_file::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(format!(
                "tokenizer.ggml.add_bos_token is not a bool: {other:?}"
            )));
        }
        // llama.cpp's default for byte-level BPE vocabularies is not to add one.
        None => false,
    };
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": *t == TOKEN_USER_DEFINED, "special": *t == TOKEN_CONTROL})
        })
        .collect();
    let post = match (add_bos, bos) {
        (true, Some(id)) => {
            let t = tokens
                .get(id as usize)
                .ok_or_else(|| bad(format!("bos_token_id {id} is outside the vocabulary")))?;
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {*t: {"id": t, "ids": [id], "tokens": [t]}}})
        }
        (true, None) => {
            return Err(bad(
                "add_bos_token is true but there is no bos_token_id".into()
            ));
        }
        (false, _) => byte_level(true),
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(f, pre)?,
        "post_processor": post,
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    PromptTokenizer::from_json(&doc.to_string(), bos, f.path())
}
