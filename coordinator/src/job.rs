//! One sweep job run in this process: spec to model, prompts and evaluator, the sweep, and the
//! results folder. The distributed engine will cut the same work into shards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use circuit_sweep_common::Component;
use circuit_sweep_common::data_spec::DataSpec;
use circuit_sweep_common::dataset::{self, PromptPair};
use circuit_sweep_common::results::{self, NodeScores};
use circuit_sweep_common::spec::{SweepKind, SweepSpec};
use circuit_sweep_worker::{Evaluator, LoadedModel, PromptSet, PromptTokenizer};
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
    let pairs = load_data(&spec.data, tok, &ctx.spec_dir)?;
    let prompts = PromptSet::from_pairs(&pairs, tok).map_err(anyhow::Error::msg)?;
    Ok(Prepared {
        loaded,
        pairs,
        prompts,
    })
}

fn load_data(
    data: &DataSpec,
    tok: &PromptTokenizer,
    spec_dir: &Path,
) -> anyhow::Result<Vec<PromptPair>> {
    Ok(data.load(tok, spec_dir)?)
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

/// The node sweep: every head and every MLP ablated alone, batched layer by layer.
pub fn node_sweep(
    ev: &Evaluator<'_>,
    n_layers: usize,
    n_heads: usize,
    progress: bool,
) -> anyhow::Result<NodeScores> {
    let pb = bar(n_layers as u64, "node sweep", progress);
    let mut heads = Vec::with_capacity(n_layers);
    let mut mlps = Vec::with_capacity(n_layers);
    // One call per layer: its heads and MLP share a start layer, so they batch together.
    for layer in 0..n_layers {
        let comps: Vec<Vec<Component>> = Component::all(n_layers, n_heads)
            .into_iter()
            .filter(|c| c.layer() == layer)
            .map(|c| vec![c])
            .collect();
        let s = ev.scores(&comps)?;
        heads.push(s[..n_heads].to_vec());
        mlps.push(s[n_heads]);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(NodeScores { heads, mlps })
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
    match spec.sweep.kind {
        SweepKind::Nodes => {
            let scores = node_sweep(&ev, info.n_layers, info.n_heads, ctx.progress)?;
            let title = format!(
                "{} — node sweep ({:?} ablation, {} prompts)",
                prep.loaded
                    .source
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy(),
                spec.ablation.kind,
                prep.pairs.len()
            );
            results::write_node_scores(out, &scores, &title)?;
            doc["nodes"] = json!(scores);
        }
        SweepKind::Prune | SweepKind::Orders => bail!(
            "[sweep] kind: `{:?}` is not available yet in this build (node sweeps are); pruning and the order study \
             land next",
            spec.sweep.kind
        ),
    }
    doc["timing"] = json!({
        "seconds": t0.elapsed().as_secs_f64(),
        "forward_passes": ev.forward_passes(),
    });
    results::write_result_json(out, &doc)?;
    Ok(doc)
}
