//! `circuit-sweep analyze ...`: mechanism analyses on one resident model, each writing a folder
//! of JSON, CSV and SVG. Downstream ablation, the heavy one, is a sweep kind
//! (`kind = "downstream"`) run through `run` or a coordinator.

mod attention;
mod cross_task;
mod lens;
mod ov;

use std::path::{Path, PathBuf};

use anyhow::Context;
use circuit_sweep_common::PromptPair;
use circuit_sweep_common::data_spec::DataSpec;
use clap::{Args, Subcommand};

use super::resolve::ModelArgs;

/// The analyses.
#[derive(Debug, Subcommand)]
pub enum AnalyzeCommand {
    /// Score each task's circuit on every task's data: the cross-task matrix, the shared
    /// sub-circuit, task-only components, and an UpSet figure.
    CrossTask(cross_task::CrossTaskArgs),
    /// Successor and copy scores of every head's OV circuit on token sets, as heatmaps.
    Ov(ov::OvArgs),
    /// Attention patterns of chosen heads on prompts, and where the last position attends.
    Attention(attention::AttentionArgs),
    /// The logit lens: the top token after each layer, and where the answer becomes top-1.
    LogitLens(lens::LensArgs),
}

/// Where prompts come from: a JSONL file or a generated task.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// A JSONL dataset of prompt pairs.
    #[arg(long, env = "CIRCUIT_SWEEP_DATA", conflicts_with = "task")]
    data: Option<PathBuf>,
    /// A generated task (`months`, `numerals`, `digits`, ...).
    #[arg(long, env = "CIRCUIT_SWEEP_TASK")]
    task: Option<String>,
    /// Prompts to generate.
    #[arg(long, env = "CIRCUIT_SWEEP_N", default_value_t = 32)]
    n: usize,
    /// Seed of the generated prompts.
    #[arg(long, env = "CIRCUIT_SWEEP_SEED", default_value_t = 0)]
    seed: u64,
}

impl DataArgs {
    /// The checked prompt pairs.
    fn load(
        &self,
        tok: &dyn circuit_sweep_common::tasks::Tokenize,
    ) -> anyhow::Result<Vec<PromptPair>> {
        let spec = match (&self.data, &self.task) {
            (Some(f), _) => DataSpec {
                file: Some(f.clone()),
                ..Default::default()
            },
            (None, Some(t)) => DataSpec {
                task: Some(t.clone()),
                n: Some(self.n),
                seed: Some(self.seed),
                ..Default::default()
            },
            (None, None) => anyhow::bail!("give --data FILE.jsonl or --task NAME"),
        };
        spec.load(tok, Path::new("."))
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Runs an analysis.
pub fn run(cmd: AnalyzeCommand, models_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        AnalyzeCommand::CrossTask(a) => cross_task::run(a, models_dir),
        AnalyzeCommand::Ov(a) => ov::run(a, models_dir),
        AnalyzeCommand::Attention(a) => attention::run(a, models_dir),
        AnalyzeCommand::LogitLens(a) => lens::run(a, models_dir),
    }
}

/// Creates the output folder and writes `name` into it.
fn write(out: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    circuit_sweep_common::results::write_file(out, name, text)?;
    Ok(())
}

/// The loaded model and its tokenizer.
fn load(m: &ModelArgs, models_dir: &Path) -> anyhow::Result<circuit_sweep_worker::LoadedModel> {
    let loaded = m.load(models_dir)?;
    if loaded.tokenizer.is_none() {
        anyhow::bail!("{} has no tokenizer", loaded.source.display());
    }
    Ok(loaded)
}

/// The file name of a model path, for titles.
fn model_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
