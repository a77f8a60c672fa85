//! `circuit-sweep run SPEC.toml`: a sweep in this process, results in a folder.

use std::path::{Path, PathBuf};

use circuit_sweep_common::spec::SweepSpec;
use clap::Args;

use crate::job::{self, JobContext};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sweep spec (TOML; see the README for every field).
    spec: PathBuf,
    /// Results folder (default: `results/<spec name>`).
    #[arg(long, env = "CIRCUIT_SWEEP_OUT")]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, env = "CIRCUIT_SWEEP_QUIET")]
    quiet: bool,
}

/// Runs `run`.
pub fn run(args: RunArgs, models_dir: &Path) -> anyhow::Result<()> {
    let spec = SweepSpec::read(&args.spec)?;
    let out = args.out.unwrap_or_else(|| {
        let stem = args
            .spec
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        PathBuf::from("results").join(stem)
    });
    let ctx = JobContext {
        spec_dir: args
            .spec
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        models_dir: models_dir.to_path_buf(),
        progress: !args.quiet,
    };
    let doc = job::run(&spec, &ctx, &out)?;
    println!(
        "wrote {} (full {:.4}, corrupt {:.4}, {} forward passes in {:.1} s)",
        out.display(),
        doc["full"].as_f64().unwrap_or(f64::NAN),
        doc["corrupt"].as_f64().unwrap_or(f64::NAN),
        doc["timing"]["forward_passes"],
        doc["timing"]["seconds"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}
