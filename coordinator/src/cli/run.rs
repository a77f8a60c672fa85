//! `circuit-sweep run SPEC.toml`: a sweep on an in-process cluster (the same coordinator and
//! workers as a real cluster, on loopback), results in a folder.

use std::path::{Path, PathBuf};

use clap::Args;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sweep spec (TOML; see the README for every field).
    spec: PathBuf,
    /// Results folder (default: `results/<spec name>`).
    #[arg(long, env = "CIRCUIT_SWEEP_OUT")]
    out: Option<PathBuf>,
    /// In-process workers (they share one copy of the model).
    #[arg(long, env = "CIRCUIT_SWEEP_WORKERS", default_value_t = 1)]
    workers: usize,
    /// No progress bars.
    #[arg(long, env = "CIRCUIT_SWEEP_QUIET")]
    quiet: bool,
}

/// Runs `run`.
pub fn run(args: RunArgs, models_dir: &Path) -> anyhow::Result<()> {
    let out = args.out.unwrap_or_else(|| {
        let stem = args
            .spec
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        PathBuf::from("results").join(stem)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let doc = rt.block_on(circuit_sweep_coordinator::local::run(
        &args.spec,
        &out,
        args.workers,
        models_dir,
        !args.quiet,
    ))?;
    let metrics = match (doc["full"].as_f64(), doc["corrupt"].as_f64()) {
        (Some(f), Some(c)) => format!("full {f:.4}, corrupt {c:.4}, "),
        _ => String::new(),
    };
    println!(
        "wrote {} ({metrics}{} shards in {:.1} s)",
        out.display(),
        doc["timing"]["shards"],
        doc["timing"]["seconds"].as_f64().unwrap_or(0.0)
    );
    let heatmap = out.join("heads.svg");
    if heatmap.is_file() {
        println!("heatmap: {}", heatmap.display());
    }
    Ok(())
}
