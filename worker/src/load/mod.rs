//! Loading models: Hugging Face folders (`config.json` + safetensors, sharded too) and GGUF
//! files, with typed errors that name the file and the tensor or field.

mod gguf;
mod gguf_tokenizer;
mod hf;
mod safetensors_source;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use crate::load_error::LoadError;
use crate::model::HookedModel;
use crate::tokenizer::PromptTokenizer;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Dtype the weights are held and computed in.
    pub dtype: DType,
    /// Device the weights live on.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A model with its tokenizer (when the source has one).
#[derive(Debug)]
pub struct LoadedModel {
    /// The hooked model.
    pub model: HookedModel,
    /// The tokenizer: from `tokenizer.json` in a folder, or built from GGUF metadata.
    pub tokenizer: Option<PromptTokenizer>,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// Loads a Hugging Face folder or a `.gguf` file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    match opts.dtype {
        // f64 on the CPU too: exact checks (finite differences) run in it.
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {}
        other => {
            return Err(LoadError::Config {
                file: path.to_path_buf(),
                field: "dtype".into(),
                reason: format!(
                    "{} is not a compute dtype (use f32, f16, bf16 or f64)",
                    other.as_str()
                ),
            });
        }
    }
    let (model, tokenizer) = if path.is_dir() {
        hf::load_folder(path, opts)?
    } else {
        gguf::load_file(path, opts)?
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// Loads only the tokenizer of a model: `tokenizer.json` of a folder (which needs no weights),
/// or the tokenizer in a GGUF file's metadata.
pub fn load_tokenizer(path: &Path) -> Result<PromptTokenizer, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        if !path.join("tokenizer.json").exists() {
            return Err(LoadError::MissingFile {
                dir: path.to_path_buf(),
                file: "tokenizer.json".into(),
                why: "the tokenizer".into(),
            });
        }
        PromptTokenizer::from_folder(path)
    } else {
        gguf_tokenizer::build(&gguf::GgufFile::open(path)?)
    }
}
