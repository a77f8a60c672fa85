//! Models made on the spot: a random-weight Hugging Face folder (`config.json`,
//! `model.safetensors`, a tokenizer) of a real architecture's shape, for benchmarks of a shape
//! without its weights, for machines that cannot download, and for tests.

mod shapes;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

pub use shapes::{Fill, Overrides, Shape, ShapeError, preset_names, published_parameters};
pub use tokenizer::GPT2_VOCAB;
pub use weights::WeightDtype;

/// Why a model could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists and is not empty: give an empty or new folder")]
    NotEmpty(PathBuf),
}

/// How to fill the weights.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    pub dtype: WeightDtype,
    pub seed: u64,
    /// Standard deviation of the weights (norm scales are 1, biases 0).
    pub std: f32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            dtype: WeightDtype::F32,
            seed: 0,
            std: 0.02,
        }
    }
}

/// Writes `shape` with random weights into `dir` (created; must be empty if it exists).
/// `progress` receives the elements written so far, tensor by tensor. Returns the parameters.
pub fn make(
    dir: &Path,
    shape: &Shape,
    opts: &InitOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, InitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(InitError::NotEmpty(dir.into()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (tok, tok_config, eot) = tokenizer::for_vocab(shape.vocab)?;
    let mut config = shape.config(opts.dtype.torch_name());
    config["bos_token_id"] = eot.into();
    config["eos_token_id"] = eot.into();
    config["circuit_sweep_init"] = serde_json::json!({
        "shape": shape.name, "seed": opts.seed, "std": opts.std,
    });
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(&p))
    };
    write(
        "config.json",
        &serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    write("tokenizer.json", &tok)?;
    write("tokenizer_config.json", &tok_config)?;
    let weights = dir.join("model.safetensors");
    let mut done = 0u64;
    weights::write(
        &weights,
        &shape.tensors(),
        opts.dtype,
        opts.seed,
        opts.std,
        &mut |n| {
            done += n;
            progress(done)
        },
    )
    .map_err(io(&weights))?;
    Ok(shape.parameters())
}
