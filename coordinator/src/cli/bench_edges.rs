//! `circuit-sweep bench edges`: edge-sweep throughput on a random-weight GPT-2-small-shaped
//! model (every edge, or every N-th) and on the default model (a sample of its edges), with the
//! time a full sweep of each would take on this machine.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::DType;
use circuit_sweep_common::spec::{AblationSpec, EdgeMethod};
use circuit_sweep_worker::{Evaluator, PromptSet};
use circuit_sweep_worker::{HookedModel, LoadOptions, load_model, sweep};
use clap::Args;

use super::resolve::ModelPath;

/// Arguments of `bench edges`.
#[derive(Debug, Args)]
pub struct EdgesArgs {
    /// Layers of the random GPT-2-shaped model.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_LAYERS", default_value_t = 12)]
    layers: usize,
    /// Heads per layer of the random model (d_model = 64 per head).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_HEADS", default_value_t = 12)]
    heads: usize,
    /// Prompts x tokens of the random model's dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SHAPE", default_value = "2x8")]
    shape: String,
    /// Score every N-th edge of the random model's graph (1: all of them).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_EVERY", default_value_t = 1)]
    every: usize,
    /// Prompts of the default model's digits dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PROMPTS", default_value_t = 16)]
    prompts: usize,
    /// Score every N-th edge of the default model's graph (0: skip the default model).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_DEFAULT_EVERY", default_value_t = 128)]
    default_every: usize,
    /// Device to run on (`cpu`, `cuda:N` in CUDA builds).
    #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cpu")]
    device: String,
    /// Dtype of the weights and activations.
    #[arg(long, env = "CIRCUIT_SWEEP_DTYPE", default_value = "f32", value_parser = circuit_sweep_worker::job::parse_dtype)]
    dtype: DType,
    /// The peak (GFLOP/s) MFU is held to: by default this CPU's f32 matmul rate, measured.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PEAK")]
    peak: Option<f64>,
    /// Token budget of one batched forward pass (default: 16384 on a CPU, what free memory
    /// holds on a GPU).
    #[arg(long, env = "CIRCUIT_SWEEP_BATCH_TOKENS")]
    batch_tokens: Option<usize>,
    #[command(flatten)]
    model: ModelPath,
}

/// A GPT-2-small-shaped model with `layers` blocks of `heads` heads (d_model = 64 per head),
/// random weights (`model init`), written to `dir` and loaded.
pub(super) fn random_gpt2(
    dir: &Path,
    layers: usize,
    heads: usize,
    opts: LoadOptions,
) -> anyhow::Result<HookedModel> {
    use circuit_sweep_worker::random_model::{self as rm, InitOptions, Overrides, Shape};
    let over = Overrides {
        layers: Some(layers),
        heads: Some(heads),
        d_model: Some(64 * heads),
        ..Overrides::default()
    };
    let shape = Shape::preset("gpt2-small", &over)?;
    rm::make(dir, &shape, &InitOptions::default(), &mut |_| {})?;
    Ok(load_model(dir, &opts)?.model)
}

/// Random prompt pairs (fixed LCG) for a model without a task.
pub(super) fn random_prompts(vocab: usize, p: usize, t: usize) -> PromptSet {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % vocab as u64) as u32
    };
    let mut rows =
        |n: usize| -> Vec<Vec<u32>> { (0..n).map(|_| (0..t).map(|_| next()).collect()).collect() };
    let clean = rows(p);
    let corrupt = rows(p);
    let ids = rows(2);
    PromptSet {
        clean,
        corrupt,
        answer: vec![ids[0][0]; p],
        wrong: vec![ids[1][0]; p],
    }
}

/// The evaluator of a benchmark (mean ablation, logit difference), its passes sized as a
/// sweep's (what `batch_tokens` allows, else the CPU default or the GPU's free memory).
pub(super) fn evaluator(
    model: &HookedModel,
    prompts: &PromptSet,
    batch_tokens: Option<usize>,
) -> anyhow::Result<Evaluator> {
    let (p, t) = (prompts.clean.len(), prompts.clean[0].len());
    let batch = circuit_sweep_worker::gpu_memory::pass_tokens(
        model.device(),
        model.info(),
        (t, p * t),
        false,
        batch_tokens,
        circuit_sweep_common::limits::MAX_BATCH_TOKENS,
    );
    Ok(Evaluator::new(
        model,
        prompts,
        AblationSpec::default(),
        batch,
    )?)
}

/// One row of the table: scores every `every`-th edge and extrapolates to the whole graph.
fn measure(
    name: &str,
    model: &HookedModel,
    prompts: &PromptSet,
    every: usize,
    (peak, batch_tokens): (Option<f64>, Option<usize>),
) -> anyhow::Result<()> {
    let ev = evaluator(model, prompts, batch_tokens)?;
    let all = model.info().graph_shape().edges();
    let edges: Vec<_> = all.iter().step_by(every.max(1)).copied().collect();
    let before = ev.forward_passes();
    let t0 = Instant::now();
    let scores = sweep::edge_sweep(&ev, EdgeMethod::Direct, &edges, &[], 256, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    // Useful work: each edge's variant runs the blocks from its receiver's layer up, the final
    // block at the last position only (as the node sweep counts it).
    let i = model.info();
    let (p, t) = (prompts.clean.len() as f64, prompts.clean[0].len() as f64);
    let work: f64 = edges
        .iter()
        .map(|e| {
            let from = e.receiver.layer(i.n_layers).min(i.n_layers - 1);
            super::bench::block_flops(i, p * t, (i.n_layers - 1 - from) as f64)
                + super::bench::block_flops(i, p, 1.0)
        })
        .sum();
    let peak = match peak {
        Some(p) => p,
        None => super::bench::matmul_rate(1024, i.d_model, i.d_mlp, 2.0)?,
    };
    let mfu = 100.0 * work / secs / 1e9 / peak;
    let rate = edges.len() as f64 / secs;
    let full = all.len() as f64 / rate;
    let moved = scores.iter().filter(|s| (*s - 100.0).abs() > 1e-6).count();
    println!(
        "{name:>34}  {:>7}  {:>8}  {:>7}  {:>8.1}  {:>8.1}  {:>7.1}  {:>4.0}  {:>7}  {:>12}",
        all.len(),
        edges.len(),
        format!("{}x{}", prompts.clean.len(), prompts.clean[0].len()),
        secs,
        rate,
        work / secs / 1e9,
        mfu,
        ev.forward_passes() - before,
        if every <= 1 {
            format!("{:.0} s", secs)
        } else {
            format!("~{:.0} min", full / 60.0)
        }
    );
    tracing::info!("{name}: {moved} of {} edges change the metric", edges.len());
    Ok(())
}

/// Runs the benchmark.
pub fn edges(a: EdgesArgs, models_dir: &Path) -> anyhow::Result<()> {
    let (p, t) = a
        .shape
        .split_once('x')
        .and_then(|(p, t)| Some((p.parse::<usize>().ok()?, t.parse::<usize>().ok()?)))
        .filter(|(p, t)| *p > 0 && *t > 0)
        .with_context(|| format!("--shape `{}` is not PROMPTSxTOKENS", a.shape))?;
    if a.peak.is_none() && (a.device != "cpu" || a.dtype != DType::F32) {
        anyhow::bail!(
            "on {} in {} give --peak (what `bench matmul --device {} --dtype {}` measures)",
            a.device,
            a.dtype.as_str(),
            a.device,
            a.dtype.as_str()
        );
    }
    let opts = LoadOptions {
        dtype: a.dtype,
        device: circuit_sweep_worker::device::open(&a.device)?,
    };
    println!(
        "edge sweeps (mean ablation, logit difference) on {} in {}, {} CPU threads",
        a.device,
        a.dtype.as_str(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>34}  {:>7}  {:>8}  {:>7}  {:>8}  {:>8}  {:>7}  {:>4}  {:>7}  {:>12}",
        "model",
        "edges",
        "scored",
        "PxT",
        "seconds",
        "edges/s",
        "GFLOP/s",
        "MFU%",
        "passes",
        "full sweep"
    );
    let dir = tempfile::tempdir()?;
    let gpt2 = random_gpt2(dir.path(), a.layers, a.heads, opts)?;
    let name = format!("random GPT-2 {}x{} heads", a.layers, a.heads);
    measure(
        &name,
        &gpt2,
        &random_prompts(gpt2.info().vocab_size, p, t),
        a.every,
        (a.peak, a.batch_tokens),
    )?;
    if a.default_every > 0 {
        let (loaded, prompts) = super::bench::dataset(
            a.model.model.as_deref(),
            models_dir,
            (&a.device, a.dtype),
            "digits",
            a.prompts,
        )?;
        let name = format!(
            "{} (digits)",
            loaded
                .source
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        measure(
            &name,
            &loaded.model,
            &prompts,
            a.default_every,
            (a.peak, a.batch_tokens),
        )?;
    }
    Ok(())
}
