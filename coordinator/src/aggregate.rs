//! Aggregation: the shards' results of a finished job become the results folder (spec section
//! 6): `result.json`, the prompts, score tables and plots.

use std::path::Path;

use circuit_sweep_common::Component;
use circuit_sweep_common::orders;
use circuit_sweep_common::prune::PruneResult;
use circuit_sweep_common::results::{self, NodeScores, WriteError};
use circuit_sweep_common::shard::{JobMeta, NodeShard};
use circuit_sweep_common::spec::{SweepKind, SweepSpec};
use serde_json::json;

/// Everything the shards returned, in plan order.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// From the prepare shard.
    pub meta: Option<JobMeta>,
    /// Node shards.
    pub nodes: Vec<NodeShard>,
    /// The pruning runs (one per threshold).
    pub prune: Vec<PruneResult>,
    /// The order study's orders and runs.
    pub orders: Vec<(Vec<Component>, PruneResult)>,
}

/// Why a results folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The shards do not add up (a planner bug, never a worker's input).
    #[error("incomplete results: {0}")]
    Incomplete(String),
}

fn model_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Writes `NAME.svg` and `NAME.dot` of a node circuit.
fn write_circuit(
    out: &Path,
    name: &str,
    circuit: &[Component],
    meta: &JobMeta,
    title: &str,
    sub: &str,
) -> Result<(), WriteError> {
    let kept = |c: &Component| if circuit.contains(c) { 1.0 } else { 0.0 };
    results::write_file(
        out,
        &format!("{name}.svg"),
        &results::circuit_svg(meta.n_layers, meta.n_heads, &kept, title, sub),
    )?;
    results::write_file(
        out,
        &format!("{name}.dot"),
        &results::circuit_dot(circuit, title),
    )
}

fn circuit_of(r: &PruneResult) -> Vec<Component> {
    r.heads
        .iter()
        .chain(&r.mlps)
        .map(|c| c.parse().expect("names a worker wrote and we checked"))
        .collect()
}

/// Writes the results folder of a job into `out` and returns `result.json` (whose `timing`
/// is `timing`, the only field that differs between two runs of the same spec).
pub fn write(
    spec: &SweepSpec,
    c: &Collected,
    timing: serde_json::Value,
    out: &Path,
) -> Result<serde_json::Value, AggregateError> {
    let meta = c
        .meta
        .as_ref()
        .ok_or_else(|| AggregateError::Incomplete("no prepare result".into()))?;
    let name = model_name(&meta.model_path);
    let mut doc = json!({
        "schema": results::SCHEMA,
        "spec": spec,
        "model": {"path": meta.model_path, "info": meta.info},
        "dataset": meta.dataset,
        "full": meta.full,
        "corrupt": meta.corrupt,
    });
    std::fs::create_dir_all(out).map_err(|e| WriteError {
        path: out.to_path_buf(),
        source: e,
    })?;
    results::write_file(out, "prompts.jsonl", &meta.prompts_jsonl)?;
    if matches!(spec.sweep.kind, SweepKind::Nodes | SweepKind::Prune) {
        let mut scores = NodeScores {
            heads: vec![vec![]; meta.n_layers],
            mlps: vec![f64::NAN; meta.n_layers],
        };
        for s in &c.nodes {
            for (i, &l) in s.layers.iter().enumerate() {
                scores.heads[l] = s.heads[i].clone();
                scores.mlps[l] = s.mlps[i];
            }
        }
        if let Some(l) = (0..meta.n_layers).find(|&l| scores.heads[l].len() != meta.n_heads) {
            return Err(AggregateError::Incomplete(format!(
                "no node scores for layer {l}"
            )));
        }
        let title = format!(
            "{name} — node sweep ({:?} ablation, {} prompts)",
            spec.ablation.kind, meta.dataset["prompts"]
        );
        results::write_node_scores(out, &scores, &title)?;
        doc["nodes"] = json!(scores);
    }
    match spec.sweep.kind {
        SweepKind::Nodes => {}
        SweepKind::Prune => {
            if c.prune.is_empty() {
                return Err(AggregateError::Incomplete("no pruning result".into()));
            }
            for r in &c.prune {
                let t = r.threshold;
                let circuit = circuit_of(r);
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
                write_circuit(out, &format!("circuit-{t}"), &circuit, meta, &title, &sub)?;
                write_circuit(out, "circuit", &circuit, meta, &title, &sub)?;
            }
            doc["prune"] = if c.prune.len() == 1 {
                json!(c.prune[0])
            } else {
                json!(c.prune)
            };
        }
        SweepKind::Orders => {
            let t = spec.threshold();
            let (ords, runs): (Vec<_>, Vec<_>) = c.orders.iter().cloned().unzip();
            let study = orders::summarize(&ords, &runs);
            tracing::info!(
                "{} orders: circuit sizes {}..{}, mean Jaccard {:.3}, core {} components, union {}",
                ords.len(),
                study.sizes.iter().min().unwrap_or(&0),
                study.sizes.iter().max().unwrap_or(&0),
                study.jaccard_mean,
                study.core.len(),
                study.union.len()
            );
            let title = format!("{name}: order study, {} orders at {t}%", ords.len());
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
                &results::circuit_svg(meta.n_layers, meta.n_heads, &shade, &title, &sub),
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
    doc["timing"] = timing;
    results::write_result_json(out, &doc)?;
    Ok(doc)
}
