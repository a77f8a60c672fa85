//! One sweep job run in this process: spec to model, prompts and evaluator, the sweep, and the
//! results folder. The distributed engine will cut the same work into shards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use circuit_sweep_common::Component;
use circuit_sweep_common::dataset::{self, PromptPair};
use circuit_sweep_common::orders;
use circuit_sweep_common::prune::{PassOrder, PruneResult, Pruner};
use circuit_sweep_common::results;
use circuit_sweep_common::spec::{SweepKind, SweepSpec};
use circuit_sweep_worker::{Evaluator, LoadedModel, PromptSet, sweep};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::resolve;

/// Where a job's inputs are resolved from.
pub struct JobContext {
    /// Folder of the spec file (relative paths in the spec are relative to it).
    pub spec_dir: PathBuf,
    /// The models folder (for the default model).
    pub models_dir: PathBuf,
    /// Show progress bars.
    pub progress: bool,
}

/// A loaded job: model, prompts and evaluator inputs.
pub struct Prepared {
    /// The model.
    pub loaded: LoadedModel,
    /// The prompt pairs, checked.
    pub pairs: Vec<PromptPair>,
    /// Token ids and answer ids.
    pub prompts: PromptSet,
}

/// Loads the model and the data of a spec, running the prompt checker before anything else.
pub fn prepare(spec: &SweepSpec, ctx: &JobContext) -> anyhow::Result<Prepared> {
    if spec.model.device != "cpu" {
        bail!(
            "[model] device: `{}` needs a build with CUDA support (cargo build --features cuda); this build runs on cpu",
            spec.model.device
        );
    }
    let given = spec.model.path.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            ctx.spec_dir.join(p)
        }
    });
    let dtype = resolve::parse_dtype(&spec.model.dtype).map_err(anyhow::Error::msg)?;
    let loaded = resolve::load(given.as_deref(), &ctx.models_dir, dtype)?;
    let tok = loaded
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer", loaded.source.display()))?;
    tracing::info!("{}", tok.bos_summary());
    let pairs = spec.data.load(tok, &ctx.spec_dir)?;
    let prompts = PromptSet::from_pairs(&pairs, tok).map_err(anyhow::Error::msg)?;
    Ok(Prepared {
        loaded,
        pairs,
        prompts,
    })
}

fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The node sweep, with its tables and heatmap written into `out`.
fn write_node_sweep(
    ev: &Evaluator<'_>,
    info: &circuit_sweep_worker::ModelInfo,
    prep: &Prepared,
    spec: &SweepSpec,
    out: &Path,
    progress: bool,
) -> anyhow::Result<results::NodeScores> {
    let pb = bar(info.n_layers as u64, "node sweep", progress);
    let scores = sweep::node_sweep(ev, info.n_layers, info.n_heads, &mut |_| pb.inc(1))?;
    pb.finish_and_clear();
    let title = format!(
        "{} — node sweep ({:?} ablation, {} prompts)",
        model_name(&prep.loaded.source),
        spec.ablation.kind,
        prep.pairs.len()
    );
    results::write_node_scores(out, &scores, &title)?;
    Ok(scores)
}

fn model_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Writes `NAME.svg` and `NAME.dot` of a node circuit.
fn write_circuit(
    out: &Path,
    name: &str,
    circuit: &[Component],
    info: &circuit_sweep_worker::ModelInfo,
    title: &str,
    sub: &str,
) -> anyhow::Result<()> {
    let kept = |c: &Component| if circuit.contains(c) { 1.0 } else { 0.0 };
    results::write_file(
        out,
        &format!("{name}.svg"),
        &results::circuit_svg(info.n_layers, info.n_heads, &kept, title, sub),
    )?;
    results::write_file(
        out,
        &format!("{name}.dot"),
        &results::circuit_dot(circuit, title),
    )?;
    Ok(())
}

/// Pruning runs in lockstep with a progress bar (runs finished) or spinner (decisions).
fn prune_lockstep(
    ev: &Evaluator<'_>,
    pruners: &mut [Pruner],
    progress: bool,
    what: &str,
) -> anyhow::Result<()> {
    let many = pruners.len() > 1;
    let pb = if many {
        bar(pruners.len() as u64, what, progress)
    } else {
        spinner(what, progress)
    };
    sweep::prune_lockstep(ev, pruners, &mut |ps, decisions| {
        pb.set_position(if many {
            ps.iter().filter(|p| p.is_done()).count() as u64
        } else {
            decisions
        });
    })?;
    pb.finish_and_clear();
    Ok(())
}

fn spinner(what: &str, show: bool) -> ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} evaluations, {per_sec}, {elapsed}")
            .expect("a valid template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Runs a spec and writes its results folder.
pub fn run(spec: &SweepSpec, ctx: &JobContext, out: &Path) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    let prep = prepare(spec, ctx)?;
    let model = &prep.loaded.model;
    let info = model.info().clone();
    let ev = Evaluator::new(model, &prep.prompts, spec.ablation, spec.run.batch_tokens)?;
    tracing::info!(
        "{} prompts of {} tokens; full {:.4}, corrupt {:.4}",
        ev.prompts(),
        prep.prompts.clean[0].len(),
        ev.full,
        ev.corrupt
    );
    let jsonl = dataset::to_jsonl(&prep.pairs);
    let sha = Sha256::digest(jsonl.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let tok = prep
        .loaded
        .tokenizer
        .as_ref()
        .expect("prepare checked the tokenizer");
    let mut doc = json!({
        "schema": results::SCHEMA,
        "spec": spec,
        "model": {
            "path": prep.loaded.source.display().to_string(),
            "info": info,
        },
        "dataset": {
            "sha256": sha,
            "prompts": prep.pairs.len(),
            "tokens": prep.prompts.clean[0].len(),
            "bos": tok.bos_summary(),
        },
        "full": ev.full,
        "corrupt": ev.corrupt,
    });
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    dataset::write_jsonl(&out.join("prompts.jsonl"), &prep.pairs)?;
    // Pruning writes the single-ablation heatmap too: one pass per layer, little next to it.
    if matches!(spec.sweep.kind, SweepKind::Nodes | SweepKind::Prune) {
        doc["nodes"] = json!(write_node_sweep(
            &ev,
            &info,
            &prep,
            spec,
            out,
            ctx.progress
        )?);
    }
    match spec.sweep.kind {
        SweepKind::Nodes => {}
        SweepKind::Prune => {
            let name = model_name(&prep.loaded.source);
            let thresholds = spec
                .sweep
                .thresholds
                .clone()
                .unwrap_or_else(|| vec![spec.threshold()]);
            let mut runs: Vec<PruneResult> = vec![];
            let mut start: Option<Vec<Component>> = None;
            let mut start_score = ev.scores(&[vec![]])?[0];
            for &t in &thresholds {
                let mut pruner = Pruner::new(
                    info.n_layers,
                    info.n_heads,
                    PassOrder::Schedule(spec.sweep.schedule),
                    t,
                    start.as_deref(),
                    start_score,
                );
                prune_lockstep(
                    &ev,
                    std::slice::from_mut(&mut pruner),
                    ctx.progress,
                    &format!("prune {t}"),
                )?;
                let r = pruner.result();
                tracing::info!(
                    "threshold {t}: {} heads, {} MLPs, score {:.2} after {} evaluations in {} passes",
                    r.heads.len(),
                    r.mlps.len(),
                    r.score,
                    r.evaluations,
                    r.passes
                );
                let circuit = pruner.circuit();
                let title = format!(
                    "{name}: circuit at {t}% ({} heads, {} MLPs, score {:.1}%)",
                    r.heads.len(),
                    r.mlps.len(),
                    r.score
                );
                let sub = format!(
                    "{:?} schedule, {} evaluations, {} passes",
                    spec.sweep.schedule, r.evaluations, r.passes
                );
                write_circuit(out, &format!("circuit-{t}"), &circuit, &info, &title, &sub)?;
                write_circuit(out, "circuit", &circuit, &info, &title, &sub)?;
                start_score = r.score;
                start = Some(circuit);
                runs.push(r);
            }
            doc["prune"] = if runs.len() == 1 {
                json!(runs[0])
            } else {
                json!(runs)
            };
        }
        SweepKind::Orders => {
            let name = model_name(&prep.loaded.source);
            let orders = match &spec.sweep.orders_file {
                Some(f) => {
                    let path = if f.is_absolute() {
                        f.clone()
                    } else {
                        ctx.spec_dir.join(f)
                    };
                    orders::read_orders(&path, info.n_layers, info.n_heads)
                        .map_err(anyhow::Error::msg)?
                }
                None => orders::random_orders(
                    info.n_layers,
                    info.n_heads,
                    spec.sweep.orders.unwrap_or(100),
                    spec.sweep.seed,
                ),
            };
            let full_score = ev.scores(&[vec![]])?[0];
            let t = spec.threshold();
            let mut pruners: Vec<Pruner> = orders
                .iter()
                .map(|o| {
                    Pruner::new(
                        info.n_layers,
                        info.n_heads,
                        PassOrder::Fixed(o.clone()),
                        t,
                        None,
                        full_score,
                    )
                })
                .collect();
            prune_lockstep(
                &ev,
                &mut pruners,
                ctx.progress,
                &format!("{} orders", orders.len()),
            )?;
            let results: Vec<PruneResult> = pruners.iter().map(Pruner::result).collect();
            let study = orders::summarize(&orders, &results);
            tracing::info!(
                "{} orders: circuit sizes {}..{}, mean Jaccard {:.3}, core {} components, union {}",
                orders.len(),
                study.sizes.iter().min().unwrap_or(&0),
                study.sizes.iter().max().unwrap_or(&0),
                study.jaccard_mean,
                study.core.len(),
                study.union.len()
            );
            let title = format!("{name}: order study, {} orders at {t}%", orders.len());
            results::write_file(
                out,
                "frequency.svg",
                &results::frequency_svg(&study.frequency, &title),
            )?;
            let freq = study.frequency.clone();
            let shade = move |c: &Component| freq.get(&c.to_string()).copied().unwrap_or(0.0);
            let sub = format!(
                "shade: share of orders keeping the component; mean Jaccard {:.3}",
                study.jaccard_mean
            );
            results::write_file(
                out,
                "frequency-grid.svg",
                &results::circuit_svg(info.n_layers, info.n_heads, &shade, &title, &sub),
            )?;
            let core: Vec<Component> = study
                .core
                .iter()
                .map(|c| c.parse().expect("names we wrote"))
                .collect();
            results::write_file(
                out,
                "core.dot",
                &results::circuit_dot(&core, &format!("{title}: core")),
            )?;
            doc["orders"] = json!(study);
        }
    }
    doc["timing"] = json!({
        "seconds": t0.elapsed().as_secs_f64(),
        "forward_passes": ev.forward_passes(),
    });
    results::write_result_json(out, &doc)?;
    Ok(doc)
}
