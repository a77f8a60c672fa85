//! The tokenizer of a model, with BOS handling read from its own configuration (never guessed)
//! and reported, since a silently added or missing BOS shifts every position index.

use std::path::{Path, PathBuf};

use crate::json_file::read_json;
use crate::load_error::LoadError;

/// A tokenizer failed on a prompt.
#[derive(Debug, thiserror::Error)]
#[error("tokenizing {text:?}: {reason}")]
pub struct TokenizeError {
    /// The text.
    pub text: String,
    /// What the tokenizer said.
    pub reason: String,
}

/// A model's tokenizer: `tokenizer.json` from a folder, or one built from GGUF metadata.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(u32, String)>,
    adds_bos: bool,
    source: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("source", &self.source)
            .field("bos", &self.bos)
            .field("adds_bos", &self.adds_bos)
            .finish()
    }
}

impl PromptTokenizer {
    /// Reads `tokenizer.json` of a Hugging Face folder. Whether a BOS is added follows the
    /// tokenizer's post-processor, as `transformers`' fast tokenizers do.
    pub fn from_folder(dir: &Path) -> Result<Self, LoadError> {
        let file = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| LoadError::Tokenizer {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let bos_text = bos_from_config(&dir.join("tokenizer_config.json"))?;
        let bos = bos_text.and_then(|t| inner.token_to_id(&t).map(|id| (id, t)));
        Self::new(inner, bos, file)
    }

    /// Builds from a tokenizer JSON document (as produced from GGUF metadata).
    pub(crate) fn from_json(
        json: &str,
        bos_id: Option<u32>,
        source: &Path,
    ) -> Result<Self, LoadError> {
        let inner: tokenizers::Tokenizer =
            json.parse()
                .map_err(|e: tokenizers::Error| LoadError::Tokenizer {
                    file: source.to_path_buf(),
                    reason: e.to_string(),
                })?;
        let bos = bos_id.and_then(|id| inner.id_to_token(id).map(|t| (id, t)));
        Self::new(inner, bos, source.to_path_buf())
    }

    fn new(
        inner: tokenizers::Tokenizer,
        bos: Option<(u32, String)>,
        source: PathBuf,
    ) -> Result<Self, LoadError> {
        let err = |e: tokenizers::Error| LoadError::Tokenizer {
            file: source.clone(),
            reason: e.to_string(),
        };
        // Whether the post-processor prepends BOS, found by encoding with and without it.
        let with = inner.encode("a", true).map_err(err)?;
        let without = inner.encode("a", false).map_err(err)?;
        let adds_bos = match &bos {
            Some((id, _)) => {
                with.get_ids().len() > without.get_ids().len() && with.get_ids().first() == Some(id)
            }
            None => false,
        };
        Ok(PromptTokenizer {
            inner,
            bos,
            adds_bos,
            source,
        })
    }

    /// Token ids of `text` as the model sees it (BOS added where the tokenizer adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizeError {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }

    /// Token ids of `text` with no special tokens (for an answer encoded in context).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizeError {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }

    /// The text of one token, as it reads (`" "`, `"5"`, `" May"`).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_else(|_| {
            self.inner
                .id_to_token(id)
                .unwrap_or_else(|| format!("<{id}>"))
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether a BOS token is prepended to every prompt.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// The BOS token and its id, if the tokenizer has one.
    pub fn bos(&self) -> Option<(u32, &str)> {
        self.bos.as_ref().map(|(id, t)| (*id, t.as_str()))
    }

    /// One line saying what happens with BOS, for printing before any run.
    pub fn bos_summary(&self) -> String {
        match (&self.bos, self.adds_bos) {
            (Some((id, t)), true) => format!("BOS {t:?} (id {id}) is prepended to every prompt"),
            (Some((id, t)), false) => format!(
                "no BOS is prepended (the tokenizer has {t:?}, id {id}, but does not add it)"
            ),
            (None, _) => "no BOS is prepended (the tokenizer has none)".to_string(),
        }
    }

    /// Where the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// `bos_token` of `tokenizer_config.json` (a string or `{"content": ...}`), if any.
fn bos_from_config(file: &Path) -> Result<Option<String>, LoadError> {
    if !file.exists() {
        return Ok(None);
    }
    let v: serde_json::Value = read_json(file)?;
    Ok(match v.get("bos_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    })
}

impl circuit_sweep_common::tasks::Tokenize for PromptTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        PromptTokenizer::encode(self, text).map_err(|e| e.to_string())
    }

    fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
        PromptTokenizer::encode_plain(self, text).map_err(|e| e.to_string())
    }

    fn token_text(&self, id: u32) -> String {
        PromptTokenizer::token_text(self, id)
    }
}
