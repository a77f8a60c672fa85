//! `circuit-sweep bench attribution`: EAP and EAP-IG of every edge of the default model (and a
//! random GPT-2-small-shaped model) against exact single-edge patching of a sample of edges:
//! seconds for the whole graph, the exact sweep's extrapolated time, and the rank correlation
//! of each method with the exact scores on the sample.

use std::time::Instant;

use anyhow::Context;
use candle_core::DType;
use circuit_sweep_common::spec::EdgeMethod;
use circuit_sweep_worker::{HookedModel, LoadOptions, PromptSet, sweep};
use clap::Args;

use super::resolve::ModelPath;

/// Arguments of `bench attribution`.
#[derive(Debug, Args)]
pub struct AttributionArgs {
    /// Prompts of the default model's dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PROMPTS", default_value_t = 8)]
    prompts: usize,
    /// Task of the default model's dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_TASK", default_value = "digits")]
    task: String,
    /// Integration steps of EAP-IG.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_STEPS", default_value_t = 5)]
    steps: usize,
    /// Score every N-th edge exactly, for the correlation and the exact sweep's time (0: no
    /// exact scores, attribution alone).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_EVERY", default_value_t = 64)]
    every: usize,
    /// Also the random GPT-2-small-shaped model (prompts x tokens), `0` to skip it.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SHAPE", default_value = "2x8")]
    shape: String,
    /// Device to run on (`cpu`, `cuda:N` in CUDA builds).
    #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cpu")]
    device: String,
    /// Dtype of the weights and activations.
    #[arg(long, env = "CIRCUIT_SWEEP_DTYPE", default_value = "f32", value_parser = circuit_sweep_worker::job::parse_dtype)]
    dtype: DType,
    #[command(flatten)]
    model: ModelPath,
}

/// Ranks with ties averaged (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation.
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// The rows of one model: exact sample, then EAP and EAP-IG of every edge.
fn measure(
    name: &str,
    model: &HookedModel,
    prompts: &PromptSet,
    a: &AttributionArgs,
) -> anyhow::Result<()> {
    let ev = super::bench_edges::evaluator(model, prompts, None)?;
    let all = ev.graph_shape().edges();
    let every = a.every.max(1);
    let pxt = format!("{}x{}", prompts.clean.len(), prompts.clean[0].len());
    // Exact scores of every `every`-th edge, and the whole sweep's time extrapolated.
    let exact = if a.every == 0 {
        None
    } else {
        let sample: Vec<_> = all.iter().step_by(every).copied().collect();
        let t0 = Instant::now();
        let scores = sweep::edge_sweep(&ev, EdgeMethod::Direct, &sample, &[], 256, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        let full = t0.elapsed().as_secs_f64() * all.len() as f64 / sample.len() as f64;
        println!(
            "{name:>30}  {:>9}  {:>8}  {pxt:>6}  {:>10.1}  {:>9}  {:>8}",
            "exact",
            all.len(),
            full,
            "-",
            "1.000"
        );
        Some((scores, full))
    };
    for (method, steps) in [("EAP", 1), ("EAP-IG", a.steps)] {
        let t0 = Instant::now();
        let sums = ev.attribute(steps, true, &[], 0..ev.prompts())?;
        let secs = t0.elapsed().as_secs_f64();
        let (speedup, rho) = match &exact {
            Some((scores, full)) => {
                let est: Vec<f64> = sums
                    .edges
                    .iter()
                    .step_by(every)
                    .map(|d| ev.score_of(ev.full + d))
                    .collect();
                (
                    format!("{:.0}", full / secs),
                    format!("{:.3}", spearman(&est, scores)),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:>30}  {:>9}  {:>8}  {pxt:>6}  {:>10.1}  {speedup:>9}  {rho:>8}",
            if steps == 1 {
                method.to_string()
            } else {
                format!("{method}({steps})")
            },
            all.len(),
            secs,
        );
    }
    Ok(())
}

/// Runs the benchmark.
pub fn attribution(a: AttributionArgs, models_dir: &std::path::Path) -> anyhow::Result<()> {
    let exact = match a.every {
        0 => "no exact scores".to_string(),
        n => format!("exact: every {n}-th edge patched, extrapolated"),
    };
    println!(
        "attribution of every edge (mean ablation, logit difference) on {} in {}, {} CPU threads; {exact}",
        a.device,
        a.dtype.as_str(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!(
        "{:>30}  {:>9}  {:>8}  {:>6}  {:>10}  {:>9}  {:>8}",
        "model", "method", "edges", "PxT", "seconds", "speedup", "spearman"
    );
    if a.shape != "0" {
        let (p, t) = a
            .shape
            .split_once('x')
            .and_then(|(p, t)| Some((p.parse::<usize>().ok()?, t.parse::<usize>().ok()?)))
            .filter(|(p, t)| *p > 0 && *t > 0)
            .with_context(|| format!("--shape `{}` is not PROMPTSxTOKENS or 0", a.shape))?;
        let opts = LoadOptions {
            dtype: a.dtype,
            device: circuit_sweep_worker::device::open(&a.device)?,
        };
        let dir = tempfile::tempdir()?;
        let gpt2 = super::bench_edges::random_gpt2(dir.path(), 12, 12, opts)?;
        let prompts = super::bench_edges::random_prompts(gpt2.info().vocab_size, p, t);
        measure("random GPT-2 12x12 heads", &gpt2, &prompts, &a)?;
    }
    let (loaded, prompts) = super::bench::dataset(
        a.model.model.as_deref(),
        models_dir,
        (&a.device, a.dtype),
        &a.task,
        a.prompts,
    )?;
    let name = format!(
        "{} ({})",
        loaded
            .source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        a.task
    );
    measure(&name, &loaded.model, &prompts, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_by_hand() {
        assert_eq!(ranks(&[3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5]);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // d = (0, 1, -1): 1 - 6 * 2 / (3 * 8) = 0.5
        assert!((spearman(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-12);
    }
}
