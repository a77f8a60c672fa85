//! The command line: every flag is also readable from an environment variable.

mod analyze;
mod bench;
mod bench_attribution;
mod bench_edges;
mod bench_generate;
mod bench_orders;
mod compare;
mod mib;
mod model;
mod predict;
mod prompts;
mod remote;
pub(crate) mod resolve;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Find circuits inside transformer language models by ablation.
#[derive(Debug, Parser)]
#[command(name = "circuit-sweep", version, about)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax: `info`, `debug`, `circuit_sweep_worker=trace`).
    #[arg(long, global = true, env = "CIRCUIT_SWEEP_LOG", default_value = "info")]
    pub log: String,
    /// Folder holding downloaded models (the default model is fetched here).
    #[arg(
        long,
        global = true,
        env = "CIRCUIT_SWEEP_MODELS",
        default_value = "models"
    )]
    pub models_dir: PathBuf,
    /// Keep at most this many MiB of each GPU usable (the rest is held from the start): a
    /// smaller card's batch sizes and out-of-memory retries on a big one.
    #[arg(long, global = true, env = "CIRCUIT_SWEEP_GPU_MEMORY_MB")]
    pub gpu_memory_mb: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect or fetch models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Run a sweep spec on an in-process cluster and write its results folder.
    Run(run::RunArgs),
    /// Serve as the coordinator: accept jobs, lease shards to workers, aggregate results.
    Coordinator(remote::CoordinatorArgs),
    /// Serve as a worker: hold models resident, compute shards for a coordinator.
    Worker(remote::WorkerArgs),
    /// Submit a sweep spec to a coordinator.
    Submit(remote::SubmitArgs),
    /// Show jobs (progress, shards, ETA) and workers.
    Status(remote::StatusArgs),
    /// Cancel a job.
    Cancel(remote::JobArgs),
    /// Delete a finished job: its record, stored results and results folder on the coordinator.
    Delete(remote::JobArgs),
    /// Check that a coordinator is up (its health RPC; with a token, its scheduler too):
    /// exit 0 or say why not. For readiness and liveness probes.
    Health(remote::HealthArgs),
    /// Download a finished job's results folder.
    Results(remote::ResultsArgs),
    /// Print a prompt's tokens and the model's top next tokens.
    Predict(predict::PredictArgs),
    /// Generate and check datasets of prompt pairs.
    #[command(subcommand)]
    Prompts(prompts::PromptsCommand),
    /// Mechanism analyses: cross-task circuits, OV successor scores, attention, logit lens.
    #[command(subcommand)]
    Analyze(analyze::AnalyzeCommand),
    /// MIB's circuit files: select a circuit from edge scores by MIB's rule, import one as
    /// ours, export a run's edge scores.
    #[command(subcommand)]
    Mib(mib::MibCommand),
    /// Two pruning runs side by side: circuits, scores, evaluations, and how they differ.
    Compare(compare::CompareArgs),
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Command {
    /// Whether the command reads files and prints, with no socket (no server, no client).
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Model(_)
                | Command::Predict(_)
                | Command::Prompts(_)
                | Command::Analyze(_)
                | Command::Mib(_)
                | Command::Compare(_)
        )
    }
}

/// Logs go to stderr, so `--json` output on stdout stays clean.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(mb) = cli.gpu_memory_mb {
        circuit_sweep_worker::device::cap_gpu_memory(mb);
    }
    match cli.command {
        Command::Model(cmd) => model::run(cmd, &cli.models_dir),
        Command::Run(args) => run::run(args, &cli.models_dir),
        Command::Coordinator(args) => remote::coordinator(args),
        Command::Worker(args) => remote::worker(args, &cli.models_dir),
        Command::Submit(args) => remote::submit(args),
        Command::Status(args) => remote::status(args),
        Command::Cancel(args) => remote::cancel(args),
        Command::Delete(args) => remote::delete(args),
        Command::Health(args) => remote::health(args),
        Command::Results(args) => remote::results(args),
        Command::Predict(args) => predict::run(args, &cli.models_dir),
        Command::Prompts(cmd) => prompts::run(cmd, &cli.models_dir),
        Command::Analyze(cmd) => analyze::run(cmd, &cli.models_dir),
        Command::Mib(cmd) => mib::run(cmd),
        Command::Compare(args) => compare::run(args),
        Command::Bench(cmd) => bench::run(cmd, &cli.models_dir),
    }
}
