//! The model flags every model-loading command shares (`--model`, `--dtype`, `--device`), and
//! turning them into a loaded model.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::DType;
use circuit_sweep_worker::job::parse_dtype;
use circuit_sweep_worker::{LoadOptions, LoadedModel, default_model, load_model};
use clap::Args;

/// `--model`: which model; commands that read only its tokenizer take this alone.
#[derive(Debug, Args)]
pub struct ModelPath {
    /// A Hugging Face folder (or one with only a tokenizer, where a command needs no weights) or
    /// a .gguf file (default: the default model).
    #[arg(long, env = "CIRCUIT_SWEEP_MODEL")]
    pub model: Option<PathBuf>,
}

impl ModelPath {
    /// The path given, else the default model in `models_dir` (which must exist).
    pub fn resolve(&self, models_dir: &Path) -> anyhow::Result<PathBuf> {
        model_path(self.model.as_deref(), models_dir)
    }
}

/// `--model`, `--dtype`, `--device`: the model a command loads and computes with.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub path: ModelPath,
    /// Dtype to load the weights in.
    #[arg(long, env = "CIRCUIT_SWEEP_DTYPE", default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Device to run on (`cpu`, `cuda:N` in CUDA builds).
    #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// Loads the model, saying which and how long it took.
    pub fn load(&self, models_dir: &Path) -> anyhow::Result<LoadedModel> {
        load(
            self.path.model.as_deref(),
            models_dir,
            self.dtype,
            &self.device,
        )
    }
}

/// The model path: the one given, else the default model in `models_dir` (which must exist).
pub fn model_path(given: Option<&Path>, models_dir: &Path) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            let p = default_model::path_in(models_dir);
            if !p.exists() {
                bail!(default_model::missing_message(models_dir));
            }
            Ok(p)
        }
    }
}

/// Loads a model on the device named `device` (`cpu`, `cuda:N`), saying which and how long it
/// took.
pub fn load(
    given: Option<&Path>,
    models_dir: &Path,
    dtype: DType,
    device: &str,
) -> anyhow::Result<LoadedModel> {
    let device =
        circuit_sweep_worker::device::open(device).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let path = model_path(given, models_dir)?;
    let t0 = std::time::Instant::now();
    let opts = LoadOptions { dtype, device };
    let loaded =
        load_model(&path, &opts).with_context(|| format!("loading model {}", path.display()))?;
    tracing::info!(
        "loaded {} ({}, {} layers, {}) in {:.1} s",
        path.display(),
        loaded.model.info().architecture,
        loaded.model.info().n_layers,
        dtype.as_str(),
        t0.elapsed().as_secs_f64()
    );
    Ok(loaded)
}
