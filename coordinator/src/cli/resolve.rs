//! Turning `--model` and `--dtype` flags into a loaded model.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::DType;
use circuit_sweep_worker::{LoadOptions, LoadedModel, default_model, load_model};

/// Parses a compute dtype name.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    circuit_sweep_worker::job::parse_dtype(s)
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

/// Loads a model on the CPU, saying which and how long it took.
pub fn load(given: Option<&Path>, models_dir: &Path, dtype: DType) -> anyhow::Result<LoadedModel> {
    load_on(given, models_dir, dtype, "cpu")
}

/// Loads a model on the device named `device` (`cpu`, `cuda:N`).
pub fn load_on(
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
