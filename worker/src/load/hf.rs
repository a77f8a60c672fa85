//! Hugging Face folders: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped; `tokenizer.json` when present.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::safetensors_source::SafetensorsSource;
use super::{LoadError, LoadOptions};
use crate::json_file::read_json;
use crate::model::{Gpt2, Gpt2Config, HookedModel, Llama, LlamaConfig, Neox, NeoxConfig};
use crate::tokenizer::PromptTokenizer;
use crate::weights::WeightSource;

/// Architectures a folder's `model_type` may name.
const SUPPORTED: &str = "gpt2, llama, gpt_neox";

/// Loads a model folder.
pub(crate) fn load_folder(
    dir: &Path,
    opts: &LoadOptions,
) -> Result<(HookedModel, Option<PromptTokenizer>), LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(LoadError::MissingFile {
            dir: dir.to_path_buf(),
            file: "config.json".into(),
            why: "the model configuration".into(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Head {
        model_type: Option<String>,
    }
    let head: Head = read_json(&config_path)?;
    let model_type = head.model_type.ok_or_else(|| LoadError::Config {
        file: config_path.clone(),
        field: "model_type".into(),
        reason: "missing: cannot tell the architecture".into(),
    })?;
    // Refuse an unsupported architecture before looking for weights, so that a folder with
    // only `pytorch_model.bin` (say, a BERT) is reported as what it is.
    if !SUPPORTED.split(", ").any(|s| s == model_type) {
        return Err(LoadError::UnsupportedArchitecture {
            file: config_path,
            field: "model_type".into(),
            name: model_type,
            supported: SUPPORTED.into(),
        });
    }
    let files = weight_files(dir)?;
    let index = dir.join("model.safetensors.index.json");
    let catalogue = if files.len() == 1 && !index.exists() {
        &files[0]
    } else {
        &index
    };
    let source = SafetensorsSource::open(&files, catalogue, opts.dtype, &opts.device)?;
    let (dtype, device) = (opts.dtype, &opts.device);
    let model = match model_type.as_str() {
        "gpt2" => {
            let cfg: Gpt2Config = read_json(&config_path)?;
            cfg.validate(&config_path)?;
            let (m, info) = Gpt2::load(&source, &cfg, dtype, device)?;
            HookedModel::new(info, Box::new(m), device.clone())
        }
        "llama" => {
            let cfg: LlamaConfig = read_json(&config_path)?;
            cfg.validate(&config_path)?;
            let rotary = cfg.rotary(dtype, device, None);
            let (m, info) = Llama::load(&source, &cfg, rotary, dtype, device)?;
            HookedModel::new(info, Box::new(m), device.clone())
        }
        "gpt_neox" => {
            let cfg: NeoxConfig = read_json(&config_path)?;
            cfg.validate(&config_path)?;
            let (m, info) = Neox::load(&source, &cfg, dtype, device)?;
            HookedModel::new(info, Box::new(m), device.clone())
        }
        other => {
            return Err(LoadError::UnsupportedArchitecture {
                file: config_path,
                field: "model_type".into(),
                name: other.into(),
                supported: SUPPORTED.into(),
            });
        }
    };
    tracing::debug!(
        params = source.loaded_elements(),
        tensors = source.names().len(),
        "loaded {}",
        dir.display()
    );
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(PromptTokenizer::from_folder(dir)?)
    } else {
        None
    };
    Ok((model, tokenizer))
}

/// The safetensors files of a folder: the single file, or every shard the index names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let idx: Index = read_json(&index)?;
        let shards: BTreeSet<&String> = idx.weight_map.values().collect();
        if shards.is_empty() {
            return Err(LoadError::Config {
                file: index,
                field: "weight_map".into(),
                reason: "names no shard".into(),
            });
        }
        let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(LoadError::MissingFile {
                dir: dir.to_path_buf(),
                file: missing
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                why: format!("a shard named in {}", index.display()),
            });
        }
        Ok(files)
    } else if single.exists() {
        Ok(vec![single])
    } else {
        Err(LoadError::MissingFile {
            dir: dir.to_path_buf(),
            file: "model.safetensors".into(),
            why: "the weights, or model.safetensors.index.json for sharded weights; \
                  pytorch_model.bin is not supported"
                .into(),
        })
    }
}
