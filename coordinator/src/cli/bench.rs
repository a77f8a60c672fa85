//! `circuit-sweep bench`: benchmarks that print a table (never timed assertions in tests).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::DType;
use circuit_sweep_worker::{HookedModel, LogitSelection, RunRequest, Start};
use clap::{Args, Subcommand};

use super::resolve::{self, ModelArgs};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward-pass throughput (tokens/s) for batches of random tokens.
    Forward(ForwardArgs),
    /// Node sweep of the default model on a digits dataset: the batched evaluator against the
    /// naive path (one full, unbatched forward per component), with achieved GFLOP/s.
    Sweep(SweepArgs),
    /// Edge-sweep throughput (edges/s) on a random-weight GPT-2-small-shaped model and on the
    /// default model, with the time a full sweep of each takes on this machine.
    Edges(super::bench_edges::EdgesArgs),
    /// EAP and EAP-IG of every edge against exact patching of a sample: seconds, the exact
    /// sweep's time, rank correlation.
    Attribution(super::bench_attribution::AttributionArgs),
    /// Order-study throughput: K seeded orders pruned in lockstep against one, orders per
    /// minute, with and without staggered passes.
    Orders(super::bench_orders::OrdersArgs),
    /// Greedy generation with the KV cache against rerunning the sequence at every step.
    Generate(super::bench_generate::GenerateArgs),
    /// The coordinator's overhead per shard: lease, result stream, database commit and
    /// aggregation, for shards that compute nothing (a stand-in worker answers at once).
    Shards {
        /// Jobs to run (each a prepare shard and 16 node shards).
        #[arg(long, env = "CIRCUIT_SWEEP_BENCH_JOBS", default_value_t = 20)]
        jobs: usize,
    },
    /// NCCL (builds with `--features nccl`): a one-rank communicator on a GPU and all-reduces
    /// of a score tensor, timed and checked (one rank's sum is its own input).
    Nccl {
        /// The GPU.
        #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cuda:0")]
        device: String,
        /// f32 scores per all-reduce.
        #[arg(long, env = "CIRCUIT_SWEEP_BENCH_ELEMENTS", default_value_t = 1 << 24)]
        elements: usize,
        /// Timed all-reduces.
        #[arg(long, env = "CIRCUIT_SWEEP_BENCH_RUNS", default_value_t = 20)]
        runs: usize,
    },
    /// This machine's matrix-multiply rate (GFLOP/s), the peak the forward pass is held to:
    /// f32 on the CPU by default, any device and dtype with `--device` and `--dtype`.
    Matmul {
        /// Device to multiply on (`cpu`, `cuda:N` in CUDA builds).
        #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cpu")]
        device: String,
        /// Dtype of both operands.
        #[arg(long, env = "CIRCUIT_SWEEP_DTYPE", default_value = "f32", value_parser = circuit_sweep_worker::job::parse_dtype)]
        dtype: DType,
        /// Sizes as MxKxN, comma-separated.
        #[arg(
            long,
            env = "CIRCUIT_SWEEP_BENCH_MATMUL",
            default_value = "1024x576x1536,4096x1024x4096",
            value_delimiter = ','
        )]
        sizes: Vec<String>,
        /// Minimum seconds to time each size.
        #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SECONDS", default_value_t = 3.0)]
        seconds: f64,
    },
}

/// Arguments of `bench forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch shapes as PROMPTSxTOKENS, comma-separated.
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_BENCH_SHAPES",
        default_value = "1x16,64x16",
        value_delimiter = ','
    )]
    shapes: Vec<String>,
    /// Minimum seconds to time each shape (after one warm-up pass).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SECONDS", default_value_t = 3.0)]
    seconds: f64,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCommand, models_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Forward(a) => forward(a, models_dir),
        BenchCommand::Matmul {
            device,
            dtype,
            sizes,
            seconds,
        } => matmul(&sizes, seconds, &device, dtype),
        BenchCommand::Sweep(a) => sweep(a, models_dir),
        BenchCommand::Nccl {
            device,
            elements,
            runs,
        } => {
            let r = circuit_sweep_worker::nccl::one_rank_all_reduce(&device, elements, runs)?;
            println!(
                "NCCL one-rank all-reduce on {device}: {} f32 in {:.3} ms ({:.1} GB/s), result {}",
                r.elements,
                r.seconds * 1e3,
                (r.elements * 4) as f64 / r.seconds / 1e9,
                if r.exact { "exact" } else { "WRONG" }
            );
            if !r.exact {
                bail!("the all-reduce of one rank changed its input");
            }
            Ok(())
        }
        BenchCommand::Shards { jobs } => shards(jobs),
        BenchCommand::Edges(a) => super::bench_edges::edges(a, models_dir),
        BenchCommand::Orders(a) => super::bench_orders::orders(a, models_dir),
        BenchCommand::Attribution(a) => super::bench_attribution::attribution(a, models_dir),
        BenchCommand::Generate(a) => super::bench_generate::generate_bench(a, models_dir),
    }
}

/// Times matmuls and prints GFLOP/s: `x w` with both contiguous, and `x wᵀ` with `w` stored
/// `[N, K]`, the layout of a linear layer's weight.
fn matmul(sizes: &[String], seconds: f64, device: &str, dtype: DType) -> anyhow::Result<()> {
    let dev = circuit_sweep_worker::device::open(device)?;
    println!(
        "matmul on {device}, {}: {} (numeric profile {})",
        dtype.as_str(),
        if dev.is_cpu() { kernels() } else { "cuBLAS" },
        circuit_sweep_worker::profile::numeric_profile(device)
    );
    println!(
        "{:>18}  {:>7}  {:>10}  {:>9}  {:>12}",
        "MxKxN", "runs", "ms/run", "GFLOP/s", "x wT GFLOP/s"
    );
    for s in sizes {
        let dims: Vec<usize> = s.split('x').filter_map(|d| d.trim().parse().ok()).collect();
        let [m, k, n] = dims[..] else {
            bail!("--sizes: `{s}` is not MxKxN");
        };
        let (runs, per) = time_matmul(m, k, n, false, seconds, &dev, dtype)?;
        let gflops = 2.0 * (m * k * n) as f64 / per / 1e9;
        let (_, per_t) = time_matmul(m, k, n, true, seconds, &dev, dtype)?;
        let gflops_t = 2.0 * (m * k * n) as f64 / per_t / 1e9;
        println!(
            "{s:>18}  {runs:>7}  {:>10.2}  {gflops:>9.1}  {gflops_t:>12.1}",
            per * 1e3
        );
    }
    Ok(())
}

/// The vector width of the matmul kernels this build runs here.
fn kernels() -> &'static str {
    match circuit_sweep_worker::profile::numeric_profile("cpu").as_str() {
        "cpu-x86-64-v4" => "AVX-512",
        "cpu-x86-64-v3" => "AVX2 + FMA",
        "cpu-aarch64" => "NEON",
        _ => "scalar",
    }
}

/// Runs and seconds per run of an `m x k` by `k x n` matmul on `dev` in `dtype` (the right side
/// stored transposed, `[n, k]`, when `transposed`), timed for `seconds`. A GPU is synchronised
/// before the clock starts and after the last run.
fn time_matmul(
    m: usize,
    k: usize,
    n: usize,
    transposed: bool,
    seconds: f64,
    dev: &candle_core::Device,
    dtype: DType,
) -> anyhow::Result<(usize, f64)> {
    use candle_core::Tensor;
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?.to_dtype(dtype)?;
    let b = if transposed {
        Tensor::randn(0f32, 1.0, (n, k), dev)?
            .to_dtype(dtype)?
            .t()?
    } else {
        Tensor::randn(0f32, 1.0, (k, n), dev)?.to_dtype(dtype)?
    };
    a.matmul(&b)?; // warm-up
    dev.synchronize()?;
    let t0 = Instant::now();
    let mut runs = 0usize;
    while runs < 2 || t0.elapsed().as_secs_f64() < seconds {
        // Queued work is timed in batches, so the GPU never waits on the host.
        for _ in 0..if dev.is_cpu() { 1 } else { 20 } {
            a.matmul(&b)?;
            runs += 1;
        }
        dev.synchronize()?;
    }
    Ok((runs, t0.elapsed().as_secs_f64() / runs as f64))
}

/// GFLOP/s of an `m x k` by `k x n` f32 matmul on this CPU.
pub(super) fn matmul_rate(m: usize, k: usize, n: usize, seconds: f64) -> anyhow::Result<f64> {
    let (_, per) = time_matmul(
        m,
        k,
        n,
        false,
        seconds,
        &candle_core::Device::Cpu,
        DType::F32,
    )?;
    Ok(2.0 * (m * k * n) as f64 / per / 1e9)
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = s
        .split_once('x')
        .and_then(|(b, t)| Some((b.trim().parse().ok()?, t.trim().parse().ok()?)));
    match parsed {
        Some((b, t)) if b > 0 && t > 0 => Ok((b, t)),
        _ => bail!("--shapes: `{s}` is not PROMPTSxTOKENS (e.g. 64x16)"),
    }
}

/// Deterministic pseudo-random token ids (a fixed LCG: the benchmark needs no seed flag).
fn tokens(model: &HookedModel, b: usize, t: usize) -> anyhow::Result<candle_core::Tensor> {
    let vocab = model.info().vocab_size as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab) as u32
                })
                .collect()
        })
        .collect();
    Ok(model.tokens(&rows)?)
}

fn forward(a: ForwardArgs, models_dir: &Path) -> anyhow::Result<()> {
    let shapes = a
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let loaded = a.model.load(models_dir)?;
    let model = &loaded.model;
    let i = model.info();
    println!(
        "model {} ({}, {} layers, d_model {}, {}), {} CPU threads",
        loaded.source.display(),
        i.architecture,
        i.n_layers,
        i.d_model,
        a.model.dtype.as_str(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // The peak is this CPU's f32 matmul rate: MFU means nothing against it elsewhere.
    let peak = if a.model.device == "cpu" && a.model.dtype == DType::F32 {
        let p = matmul_rate(1024, i.d_model, i.d_mlp, 2.0)?;
        println!(
            "matmul peak of this machine (1024x{}x{}): {p:.1} GFLOP/s",
            i.d_model, i.d_mlp
        );
        Some(p)
    } else {
        None
    };
    println!(
        "{:>8}  {:>7}  {:>10}  {:>10}  {:>9}  {:>5}  {:>12}",
        "batch", "passes", "ms/pass", "tokens/s", "GFLOP/s", "MFU%", "logits"
    );
    for (b, t) in shapes {
        let ids = tokens(model, b, t)?;
        for (sel, name) in [(LogitSelection::Last, "last")] {
            let req = RunRequest {
                logits: sel,
                ..RunRequest::new(Start::Tokens(ids.clone()))
            };
            model.run(&req)?; // warm-up
            let t0 = Instant::now();
            let mut passes = 0usize;
            while passes < 2 || t0.elapsed().as_secs_f64() < a.seconds {
                model.run(&req)?;
                passes += 1;
            }
            let secs = t0.elapsed().as_secs_f64();
            let per = secs / passes as f64;
            // The blocks at every position but the final one's at the last position only (that
            // is all last-position logits need), and the unembedding there.
            let work = block_flops(i, (b * t) as f64, (i.n_layers - 1) as f64)
                + block_flops(i, b as f64, 1.0)
                + 2.0 * (i.d_model * i.vocab_size * b) as f64;
            let gflops = work / per / 1e9;
            println!(
                "{:>8}  {:>7}  {:>10.2}  {:>10.0}  {:>9.1}  {:>5}  {:>12}",
                format!("{b}x{t}"),
                passes,
                per * 1e3,
                (b * t) as f64 / per,
                gflops,
                peak.map_or("-".into(), |p| format!("{:.0}", 100.0 * gflops / p)),
                name
            );
        }
    }
    Ok(())
}

/// Arguments of `bench sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task of the dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_TASK", default_value = "digits")]
    task: String,
    /// Prompts in the dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PROMPTS", default_value_t = 16)]
    prompts: usize,
    /// The peak (GFLOP/s) MFU is held to: by default this CPU's f32 matmul rate, measured
    /// (on a GPU give the rate `bench matmul --device` measured in the model's dtype).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PEAK")]
    peak: Option<f64>,
    /// Token budget of one batched forward pass (default: 16384 on a CPU, what free memory
    /// holds on a GPU).
    #[arg(long, env = "CIRCUIT_SWEEP_BATCH_TOKENS")]
    batch_tokens: Option<usize>,
    /// Take --batch-tokens as it is, not bounded by the GPU's free memory: with
    /// --gpu-memory-mb, passes run out of memory and are split (the retries under test).
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_BENCH_FIXED_BATCH",
        requires = "batch_tokens"
    )]
    fixed_batch: bool,
    /// Write the batched sweep's scores (percent of the full model, one per component, heads
    /// then MLPs) to this JSON file.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SCORES")]
    scores: Option<std::path::PathBuf>,
    /// Skip the naive baseline (it takes several minutes).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_NO_NAIVE")]
    no_naive: bool,
    /// Logits of the naive baseline: `all` positions, as a plain `model(ids)` call returns
    /// them, or only the `last` position (full vocabulary).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_NAIVE_LOGITS", default_value = "all", value_parser = ["all", "last"])]
    naive_logits: String,
}

/// FLOPs of the blocks' weight matmuls for `tokens` tokens run through `layers` blocks (the
/// attention's own products, a few percent at these lengths, are left out).
pub(super) fn block_flops(i: &circuit_sweep_worker::ModelInfo, tokens: f64, layers: f64) -> f64 {
    use circuit_sweep_worker::Architecture;
    let d = i.d_model as f64;
    let attn = d * (i.n_heads * i.d_head) as f64 * 2.0 + d * (2 * i.n_kv_heads * i.d_head) as f64;
    // Llama's MLP is gated (gate, up, down); GPT-2's and NeoX's have two matrices.
    let matrices = match i.architecture {
        Architecture::Llama => 3.0,
        Architecture::Gpt2 | Architecture::GptNeox => 2.0,
    };
    let mlp = matrices * d * i.d_mlp as f64;
    2.0 * (attn + mlp) * tokens * layers
}

/// A model (the default one unless given) on `device` in `dtype`, and `n` prompts of `task`
/// made for its tokenizer.
pub(super) fn dataset(
    model: Option<&Path>,
    models_dir: &Path,
    (device, dtype): (&str, DType),
    task: &str,
    n: usize,
) -> anyhow::Result<(
    circuit_sweep_worker::LoadedModel,
    circuit_sweep_worker::PromptSet,
)> {
    use circuit_sweep_common::tasks::{self, GenSpec};
    let loaded = resolve::load(model, models_dir, dtype, device)?;
    let tok = loaded
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer")?;
    let pairs = tasks::generate(&GenSpec::new(task.parse()?, n, 0), tok)?;
    let prompts =
        circuit_sweep_worker::PromptSet::from_pairs(&pairs, tok).map_err(anyhow::Error::msg)?;
    Ok((loaded, prompts))
}

fn sweep(a: SweepArgs, models_dir: &Path) -> anyhow::Result<()> {
    use circuit_sweep_common::Component;
    use circuit_sweep_common::spec::AblationSpec;
    use circuit_sweep_worker::Evaluator;

    let (loaded, prompts) = dataset(
        a.model.path.model.as_deref(),
        models_dir,
        (&a.model.device, a.model.dtype),
        &a.task,
        a.prompts,
    )?;
    let m = &loaded.model;
    let i = m.info().clone();
    let t = prompts.clean[0].len() as f64;
    let p = a.prompts as f64;
    let batch = match a.batch_tokens {
        Some(b) if a.fixed_batch => b,
        requested => circuit_sweep_worker::gpu_memory::pass_tokens(
            m.device(),
            &i,
            (t as usize, (p * t) as usize),
            false,
            requested,
            circuit_sweep_common::limits::MAX_BATCH_TOKENS,
        ),
    };
    let ev = Evaluator::new(m, &prompts, AblationSpec::default(), batch)?;
    let comps: Vec<Vec<Component>> = Component::all(i.n_layers, i.n_heads)
        .into_iter()
        .map(|c| vec![c])
        .collect();
    println!(
        "node sweep of {} components, {} prompts x {} tokens of {}, {} ({} layers, {}) on {}, {} CPU threads",
        comps.len(),
        a.prompts,
        t,
        a.task,
        loaded.source.display(),
        i.n_layers,
        a.model.dtype.as_str(),
        a.model.device,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let peak = match a.peak {
        Some(p) => {
            println!("peak given: {p:.1} GFLOP/s");
            p
        }
        None if a.model.device == "cpu" && a.model.dtype == DType::F32 => {
            let p = matmul_rate(1024, i.d_model, i.d_mlp, 2.0)?;
            println!(
                "matmul peak of this machine (1024x{}x{}): {p:.1} GFLOP/s",
                i.d_model, i.d_mlp
            );
            p
        }
        None => bail!(
            "on {} in {} give --peak (what `bench matmul --device {} --dtype {}` measures)",
            a.model.device,
            a.model.dtype.as_str(),
            a.model.device,
            a.model.dtype.as_str()
        ),
    };
    println!(
        "{:>10}  {:>8}  {:>10}  {:>12}  {:>9}  {:>7}  {:>8}",
        "path", "passes", "seconds", "passes/s", "GFLOP/s", "% peak", "speed-up"
    );
    let before = ev.forward_passes();
    let t0 = Instant::now();
    let fast = ev.metrics(&comps)?;
    let fast_s = t0.elapsed().as_secs_f64();
    let fast_passes = ev.forward_passes() - before;
    // Work of the batched sweep: each component's variant runs from its own layer up, the
    // final block at the last position only.
    let fast_work: f64 = comps
        .iter()
        .map(|c| {
            block_flops(&i, p * t, (i.n_layers - 1 - c[0].layer()) as f64) + block_flops(&i, p, 1.0)
        })
        .sum();
    let all_logits = a.naive_logits == "all";
    let logit_flops =
        2.0 * (i.d_model * i.vocab_size) as f64 * p * if all_logits { t } else { 1.0 };
    let naive_work = (block_flops(&i, p * t, i.n_layers as f64) + logit_flops) * comps.len() as f64;
    let row = |name: &str, passes: usize, secs: f64, work: f64, speedup: String| {
        println!(
            "{name:>10}  {passes:>8}  {secs:>10.2}  {:>12.2}  {:>9.1}  {:>7.0}  {speedup:>8}",
            passes as f64 / secs,
            work / secs / 1e9,
            100.0 * work / secs / 1e9 / peak
        );
    };
    if let Some(path) = &a.scores {
        let scores: Vec<f64> = fast.iter().map(|&x| ev.score_of(x)).collect();
        std::fs::write(path, serde_json::to_string(&scores)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let budget = ev.pass_budget();
    println!(
        "passes of up to {} tokens ({} variants) after {} split on running out of memory",
        budget.tokens(),
        budget.variants((p * t) as usize),
        budget.splits()
    );
    if a.no_naive {
        row("batched", fast_passes, fast_s, fast_work, "-".into());
        return Ok(());
    }
    let before = ev.forward_passes();
    let t0 = Instant::now();
    let slow = ev.metrics_naive(&comps, all_logits)?;
    let slow_s = t0.elapsed().as_secs_f64();
    let slow_passes = ev.forward_passes() - before;
    let name = if all_logits { "naive" } else { "naive-last" };
    row(name, slow_passes, slow_s, naive_work, "1.00x".into());
    row(
        "batched",
        fast_passes,
        fast_s,
        fast_work,
        format!("{:.2}x", slow_s / fast_s),
    );
    let worst = fast
        .iter()
        .zip(&slow)
        .map(|(x, y)| (ev.score_of(*x) - ev.score_of(*y)).abs())
        .fold(0.0, f64::max);
    println!("largest score difference between the two paths: {worst:.2e} percentage points");
    Ok(())
}

/// Empty-shard round trips through a real coordinator on loopback (with its database).
fn shards(jobs: usize) -> anyhow::Result<()> {
    use circuit_sweep_common::shard::{JobMeta, NodeShard, ShardTask};
    use circuit_sweep_coordinator::server::{ServerConfig, Service};
    use circuit_sweep_proto::PROTOCOL_VERSION;
    use circuit_sweep_proto::shard_output::ShardOutput;
    use circuit_sweep_proto::tensor::result_messages;
    use circuit_sweep_proto::v1::{LeaseRequest, StatusRequest, SubmitRequest, WorkerInfo};

    let (n_layers, n_heads) = (32usize, 8usize);
    let meta = JobMeta::synthetic("none", n_layers, n_heads);
    let state = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let service = Service::open(ServerConfig::new(state.path()))?;
        let listener = circuit_sweep_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        let mut c = circuit_sweep_proto::auth::connect(&url, None).await?;
        let w = c
            .register(WorkerInfo {
                protocol_version: PROTOCOL_VERSION,
                name: "bench".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .worker_id;
        let t0 = Instant::now();
        let mut shards = 0usize;
        for _ in 0..jobs {
            c.submit(SubmitRequest {
                protocol_version: PROTOCOL_VERSION,
                name: "bench".into(),
                spec_toml: "[sweep]\nkind = \"nodes\"\n".into(),
                attachments: vec![],
            })
            .await?;
            while let Some(l) = c
                .lease(LeaseRequest {
                    worker_id: w.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .lease
            {
                let output = match serde_json::from_str::<ShardTask>(&l.task_json)? {
                    ShardTask::Nodes { layers } => ShardOutput::Nodes(NodeShard {
                        heads: vec![vec![100.0; n_heads]; layers.len()],
                        mlps: vec![100.0; layers.len()],
                        layers,
                    }),
                    _ => ShardOutput::Prepared(Box::new(meta.clone())),
                };
                let tensors = output.encode();
                let chunks: Vec<_> = tensors.iter().flat_map(|t| t.chunks(1 << 20)).collect();
                let msgs = result_messages(&w, &l.lease_id, chunks);
                c.put_result(tokio_stream::iter(msgs)).await?;
                shards += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let st = c.status(StatusRequest { job_id: 0 }).await?.into_inner();
        let done = st.jobs.iter().filter(|j| j.state == "done").count();
        println!(
            "{jobs} jobs ({done} done, results folders written), {shards} shards in {secs:.2} s: \
             {:.2} ms per shard round trip (lease, result stream, database commit; aggregation \
             included)",
            secs * 1e3 / shards as f64
        );
        let _ = stop.send(());
        server.await??;
        anyhow::Ok(())
    })
}
