//! `circuit-sweep bench edges`: edge-sweep throughput on a random-weight GPT-2-small-shaped
//! model (every edge, or every N-th) and on the default model (a sample of its edges), with the
//! time a full sweep of each would take on this machine.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
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
    #[command(flatten)]
    model: ModelPath,
}

/// A GPT-2 model with weights drawn from N(0, 0.02) (norms 1, biases 0) in `dir`.
fn random_gpt2(dir: &Path, layers: usize, heads: usize) -> anyhow::Result<HookedModel> {
    let (d, v, ctx) = (64 * heads, 50257usize, 1024usize);
    let dev = Device::Cpu;
    let mut w: Vec<(String, Tensor)> = vec![
        (
            "wte.weight".into(),
            Tensor::randn(0f32, 0.02, (v, d), &dev)?,
        ),
        (
            "wpe.weight".into(),
            Tensor::randn(0f32, 0.02, (ctx, d), &dev)?,
        ),
        ("ln_f.weight".into(), Tensor::ones(d, DType::F32, &dev)?),
        ("ln_f.bias".into(), Tensor::zeros(d, DType::F32, &dev)?),
    ];
    for l in 0..layers {
        let p = format!("h.{l}");
        for (name, shape) in [
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("mlp.c_fc", (d, 4 * d)),
            ("mlp.c_proj", (4 * d, d)),
        ] {
            w.push((
                format!("{p}.{name}.weight"),
                Tensor::randn(0f32, 0.02, shape, &dev)?,
            ));
            w.push((
                format!("{p}.{name}.bias"),
                Tensor::zeros(shape.1, DType::F32, &dev)?,
            ));
        }
        for ln in ["ln_1", "ln_2"] {
            w.push((
                format!("{p}.{ln}.weight"),
                Tensor::ones(d, DType::F32, &dev)?,
            ));
            w.push((
                format!("{p}.{ln}.bias"),
                Tensor::zeros(d, DType::F32, &dev)?,
            ));
        }
    }
    candle_core::safetensors::save(
        &w.into_iter().collect::<std::collections::HashMap<_, _>>(),
        dir.join("model.safetensors"),
    )?;
    let config = serde_json::json!({
        "model_type": "gpt2", "n_layer": layers, "n_head": heads, "n_embd": d,
        "vocab_size": v, "n_positions": ctx, "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new"
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    Ok(load_model(dir, &LoadOptions::default())?.model)
}

/// Random prompt pairs (fixed LCG) for a model without a task.
fn random_prompts(vocab: usize, p: usize, t: usize) -> PromptSet {
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

/// One row of the table: scores every `every`-th edge and extrapolates to the whole graph.
fn measure(
    name: &str,
    model: &HookedModel,
    prompts: &PromptSet,
    every: usize,
) -> anyhow::Result<()> {
    let ev = Evaluator::new(model, prompts, AblationSpec::default(), 16384)?;
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
    let peak = super::bench::matmul_rate(1024, i.d_model, i.d_mlp, 2.0)?;
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
    println!(
        "edge sweeps (mean ablation, logit difference), {} CPU threads",
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
    let gpt2 = random_gpt2(dir.path(), a.layers, a.heads)?;
    let name = format!("random GPT-2 {}x{} heads", a.layers, a.heads);
    measure(
        &name,
        &gpt2,
        &random_prompts(gpt2.info().vocab_size, p, t),
        a.every,
    )?;
    if a.default_every > 0 {
        let (loaded, prompts) =
            super::bench::digits(a.model.model.as_deref(), models_dir, a.prompts)?;
        let name = format!(
            "{} (digits)",
            loaded
                .source
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        measure(&name, &loaded.model, &prompts, a.default_every)?;
    }
    Ok(())
}
