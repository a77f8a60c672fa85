//! The tokenizer of a model made on the spot: GPT-2's byte-level BPE (it ships in the
//! repository), cut to the model's vocabulary when that is smaller. GPT-2's merges are in rank
//! order and merge `i` makes token `256 + i`, so keeping the first merges keeps a consistent
//! tokenizer whose ids all fit the embedding; `<|endoftext|>` takes the last id.

use serde_json::Value;

const GPT2_TOKENIZER: &str = include_str!("../../../tests/fixtures/gpt2-tokenizer/tokenizer.json");

/// Ids of the full GPT-2 vocabulary (256 bytes, 50,000 merges, `<|endoftext|>`).
pub const GPT2_VOCAB: usize = 50257;

/// Why the tokenizer could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the GPT-2 tokenizer in the binary: {0}")]
pub struct TokenizerError(String);

fn vocab_map_insert(model: &mut Value, eot: usize) -> Result<(), TokenizerError> {
    model
        .get_mut("vocab")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| TokenizerError("no vocab".into()))?
        .insert("<|endoftext|>".into(), eot.into());
    Ok(())
}

/// `tokenizer.json` and `tokenizer_config.json` for a vocabulary of `vocab` ids (at least 257),
/// and the id of `<|endoftext|>`.
pub fn for_vocab(vocab: usize) -> Result<(String, String, usize), TokenizerError> {
    let err = |s: &str| TokenizerError(s.into());
    let mut t: Value = serde_json::from_str(GPT2_TOKENIZER).map_err(|e| err(&e.to_string()))?;
    let eot = vocab.min(GPT2_VOCAB) - 1;
    if eot < 256 {
        return Err(err("a vocabulary needs at least 257 ids"));
    }
    if eot < GPT2_VOCAB - 1 {
        let model = t.get_mut("model").ok_or_else(|| err("no model"))?;
        let kept_merges = eot - 256;
        let vocab_map = model
            .get_mut("vocab")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| err("no vocab"))?;
        vocab_map.retain(|_, id| id.as_u64().is_some_and(|i| (i as usize) < eot));
        let kept_ids = vocab_map.len();
        let kept: std::collections::HashSet<String> = vocab_map.keys().cloned().collect();
        let merges = model
            .get_mut("merges")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| err("no merges"))?;
        merges.truncate(kept_merges);
        for m in merges.iter() {
            let parts: Vec<&str> = m.as_str().unwrap_or_default().splitn(2, ' ').collect();
            if parts.len() != 2
                || !kept.contains(parts[0])
                || !kept.contains(parts[1])
                || !kept.contains(&parts.concat())
            {
                return Err(err(&format!(
                    "merge {m} does not stay within the first ids"
                )));
            }
        }
        vocab_map_insert(model, eot)?;
        if kept_ids != eot {
            return Err(err("the first ids are not all tokens"));
        }
        for a in t
            .get_mut("added_tokens")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| err("no added tokens"))?
        {
            a["id"] = eot.into();
        }
    }
    let config = serde_json::json!({
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "add_bos_token": false,
        "model_max_length": 1_000_000,
        "tokenizer_class": "GPT2Tokenizer",
    });
    Ok((
        t.to_string(),
        serde_json::to_string_pretty(&config).unwrap_or_default(),
        eot,
    ))
}
