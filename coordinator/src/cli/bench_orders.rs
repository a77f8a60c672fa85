//! `circuit-sweep bench orders`: order-study throughput on the default model: K seeded orders
//! pruned in lockstep batches, against K = 1, with and without staggered passes.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use circuit_sweep_common::greedy::Rule;
use circuit_sweep_common::orders::random_orders;
use circuit_sweep_common::prune::{PassOrder, PruneResult, Pruner};
use circuit_sweep_common::spec::AblationSpec;
use circuit_sweep_worker::Evaluator;
use clap::Args;

use super::resolve::ModelArgs;

/// Arguments of `bench orders`.
#[derive(Debug, Args)]
pub struct OrdersArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task of the dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_TASK", default_value = "digits")]
    task: String,
    /// Prompts in the dataset.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_PROMPTS", default_value_t = 4)]
    prompts: usize,
    /// Pruning threshold (% of the full model).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_THRESHOLD", default_value_t = 80.0)]
    threshold: f64,
    /// Numbers of orders to time, comma-separated (the first is the ratios' reference).
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_BENCH_ORDERS",
        default_value = "1,16",
        value_delimiter = ','
    )]
    orders: Vec<usize>,
    /// Orders run in lockstep at once (default: all of a row).
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_LOCKSTEP")]
    lockstep: Option<usize>,
    /// Seed of the orders.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_SEED", default_value_t = 0)]
    seed: u64,
    /// Also time each row without staggered passes (every candidate from the lowest layer it
    /// ablates, as before them), and check that both take the same decisions.
    #[arg(long, env = "CIRCUIT_SWEEP_BENCH_COMPARE")]
    compare: bool,
}

/// One timed row.
struct Row {
    seconds: f64,
    passes: usize,
    /// Candidates scored (speculative ones past a wrong guess included) and blocks run.
    scored: usize,
    blocks: usize,
    results: Vec<PruneResult>,
}

fn time_orders(
    ev: &Evaluator,
    i: &circuit_sweep_worker::ModelInfo,
    a: &OrdersArgs,
    k: usize,
    lockstep: usize,
) -> anyhow::Result<Row> {
    let orders = random_orders(i.n_layers, i.n_heads, k, a.seed);
    let full = ev.scores(&[vec![]])?[0];
    let passes = ev.forward_passes();
    let work = ev.node_work();
    let t0 = Instant::now();
    let mut results = vec![];
    for group in orders.chunks(lockstep.max(1)) {
        let mut pruners: Vec<Pruner> = group
            .iter()
            .map(|o| {
                Pruner::new(
                    i.n_layers,
                    i.n_heads,
                    PassOrder::Fixed(o.clone()),
                    Rule::Threshold(a.threshold),
                    None,
                    full,
                )
            })
            .collect();
        circuit_sweep_worker::sweep::prune_lockstep(ev, &mut pruners, &mut |_, _| {
            std::ops::ControlFlow::Continue(())
        })?;
        results.extend(pruners.iter().map(Pruner::result));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (scored, blocks) = ev.node_work();
    Ok(Row {
        seconds,
        passes: ev.forward_passes() - passes,
        scored: scored - work.0,
        blocks: blocks - work.1,
        results,
    })
}

/// Runs the benchmark and prints its table.
pub fn orders(a: OrdersArgs, models_dir: &Path) -> anyhow::Result<()> {
    if a.orders.is_empty() || a.orders.contains(&0) {
        bail!("--orders: give one or more numbers of orders, each at least 1");
    }
    let (loaded, prompts) = super::bench::dataset(
        a.model.path.model.as_deref(),
        models_dir,
        (&a.model.device, a.model.dtype),
        &a.task,
        a.prompts,
    )?;
    let m = &loaded.model;
    let t = prompts.clean[0].len();
    let mut ev = Evaluator::new(
        m,
        &prompts,
        AblationSpec::default(),
        circuit_sweep_common::spec::CPU_BATCH_TOKENS,
    )?;
    let i = m.info().clone();
    println!(
        "order study of {} components at threshold {}, {} {} prompts x {t} tokens, {} ({} layers, {}) on {}, {} CPU threads",
        i.n_layers * (i.n_heads + 1),
        a.threshold,
        a.prompts,
        a.task,
        loaded.source.display(),
        i.n_layers,
        a.model.dtype.as_str(),
        a.model.device,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| passes | orders | lockstep | seconds | orders/min | time / time({}) | forward passes | evaluations | scored | blocks per scored |",
        a.orders[0]
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let modes: &[bool] = if a.compare { &[false, true] } else { &[true] };
    let mut unstaggered: Vec<Vec<PruneResult>> = vec![];
    for &staggered in modes {
        ev.set_node_staggering(staggered);
        let mut reference = None;
        for (n, &k) in a.orders.iter().enumerate() {
            let lockstep = a.lockstep.unwrap_or(k);
            let row = time_orders(&ev, &i, &a, k, lockstep)?;
            let reference = *reference.get_or_insert(row.seconds);
            let evaluations: usize = row.results.iter().map(|r| r.evaluations).sum();
            println!(
                "| {} | {k} | {} | {:.1} | {:.2} | {:.2} | {} | {evaluations} | {} | {:.1} |",
                if staggered {
                    "staggered"
                } else {
                    "from lowest layer"
                },
                lockstep.min(k),
                row.seconds,
                k as f64 * 60.0 / row.seconds,
                row.seconds / reference,
                row.passes,
                row.scored,
                row.blocks as f64 / row.scored.max(1) as f64,
            );
            if !staggered {
                unstaggered.push(row.results);
            } else if a.compare && unstaggered[n] != row.results {
                bail!("staggered passes took other decisions than passes from the lowest layer");
            }
        }
    }
    if a.compare {
        println!("staggered and unstaggered passes took the same decisions on the same scores");
    }
    Ok(())
}
