//! `circuit-sweep bench generate`: greedy generation with the KV cache against rerunning the
//! whole sequence each step, on downstream prompts of the default model, with ablation
//! variants batched as a downstream study runs them.

use std::path::Path;
use std::time::Instant;

use candle_core::DType;
use circuit_sweep_common::downstream::random_head_sets;
use circuit_sweep_common::tasks::downstream::DownTask;
use circuit_sweep_worker::Activations;
use circuit_sweep_worker::analysis::generate::{generate, generate_uncached};
use clap::Args;

use super::resolve::{self, ModelPath};

/// Arguments of `bench generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelPath,
    /// 1-digit addition prompts (3 solved examples each).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PROMPTS", default_value_t = 8)]
    prompts: usize,
    /// Ablation variants (random sets of 10 heads) per batch.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_VARIANTS", default_value_t = 4)]
    variants: usize,
    /// Tokens to generate.
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_BENCH_NEW",
        default_value = "3,16",
        value_delimiter = ','
    )]
    new: Vec<usize>,
}

/// Runs `bench generate`.
pub fn generate_bench(a: GenerateArgs, models_dir: &Path) -> anyhow::Result<()> {
    let loaded = resolve::load(a.model.model.as_deref(), models_dir, DType::F32, "cpu")?;
    let model = &loaded.model;
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} has no tokenizer", loaded.source.display()))?;
    let info = model.info();
    let prompts: Vec<Vec<u32>> = DownTask::Add1
        .prompts(a.prompts, 3, 0)
        .iter()
        .map(|p| tok.encode(&p.text))
        .collect::<Result<_, _>>()?;
    // Equal lengths, as a batch needs: 1-digit additions are all the same length here.
    let len = prompts[0].len();
    let prompts: Vec<Vec<u32>> = prompts.into_iter().filter(|p| p.len() == len).collect();
    let values = Activations::zeros(info, 1, info.dtype, model.device())?;
    let variants = random_head_sets(info.n_layers, info.n_heads, 10, 0, 0..a.variants);
    println!(
        "{} prompts of {len} tokens x {} variants (rows {}), {}",
        prompts.len(),
        variants.len(),
        prompts.len() * variants.len(),
        loaded.source.display()
    );
    let peak = super::bench::matmul_rate(1024, info.d_model, info.d_mlp, 2.0)?;
    println!(
        "matmul peak of this machine (1024x{}x{}): {peak:.1} GFLOP/s",
        info.d_model, info.d_mlp
    );
    println!("| new tokens | KV cache | MFU | rerun each step | MFU | speed-up | same tokens |");
    println!("|---|---|---|---|---|---|---|");
    let rows = prompts.len() * variants.len();
    let mfu = |flops: f64, secs: f64| 100.0 * flops / secs / 1e9 / peak;
    for &n in &a.new {
        let t0 = Instant::now();
        let cached = generate(model, &prompts, &values, &variants, n)?;
        let tc = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let plain = generate_uncached(model, &prompts, &values, &variants, n)?;
        let tu = t0.elapsed().as_secs_f64();
        println!(
            "| {n} | {tc:.2} s | {:.0} % | {tu:.2} s | {:.0} % | {:.2}x | {} |",
            mfu(generation_flops(info, rows, len, n, true), tc),
            mfu(generation_flops(info, rows, len, n, false), tu),
            tu / tc,
            if cached == plain { "yes" } else { "NO" }
        );
    }
    Ok(())
}

/// Matmul FLOPs of generating `new` tokens for `rows` sequences of `len` tokens: with the KV
/// cache, the prompt once and then one position per step; without, every position every step.
/// Each step reads the logits of the whole vocabulary at the last position.
fn generation_flops(
    info: &circuit_sweep_worker::ModelInfo,
    rows: usize,
    len: usize,
    new: usize,
    cached: bool,
) -> f64 {
    let layers = info.n_layers as f64;
    let unembed = 2.0 * (rows * info.d_model * info.vocab_size) as f64;
    (0..new)
        .map(|step| {
            let positions = match (cached, step) {
                (true, 0) => len,
                (true, _) => 1,
                (false, _) => len + step,
            };
            super::bench::block_flops(info, (rows * positions) as f64, layers) + unembed
        })
        .sum()
}
