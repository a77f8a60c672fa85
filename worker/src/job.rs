//! A job on a worker: its spec resolved to a resident model, checked prompts and an evaluator,
//! kept while the job's shards arrive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use circuit_sweep_common::Component;
use circuit_sweep_common::dataset::{self, PromptPair};
use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::shard::JobMeta;
use circuit_sweep_common::spec::{Direction, KvEdges, Metric, Normalize, SweepSpec};
use circuit_sweep_common::{check, metric};
use sha2::{Digest, Sha256};

use crate::default_model;
use crate::downstream::{Downstream, DownstreamError};
use crate::eval::{EdgeCandidate, Evaluator, PromptSet};
use crate::load::{LoadError, LoadedModel};
use crate::model::ModelError;
use crate::model_access::ModelAccess;
use crate::resident::ModelCache;

/// Why a shard could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The spec, the data or the model cannot be used: retrying will not help.
    #[error("{0}")]
    BadInput(String),
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The lease was revoked (job cancelled or shard re-queued).
    #[error("cancelled")]
    Cancelled,
    /// A bug on this worker (a panic): another attempt may succeed, and the input is not
    /// to blame.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShardError {
    /// Whether another attempt (maybe on another worker) could succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ShardError::BadInput(_) | ShardError::Load(_) => false,
            // The same shard on the same model needs the same memory: not worth retrying.
            ShardError::Model(ModelError::OutOfMemory(_)) => false,
            ShardError::Model(_) | ShardError::Cancelled | ShardError::Internal(_) => true,
        }
    }
}

/// Parses a compute dtype name.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!(
            "unknown dtype `{other}` (expected f32, f16 or bf16)"
        )),
    }
}

/// The model a spec names, where `access` allows it (relative paths from the spec's folder,
/// or a confined worker's models folder), else the default model in `models_dir`.
pub fn model_path(
    spec: &SweepSpec,
    spec_dir: &Path,
    models_dir: &Path,
    access: &ModelAccess,
) -> Result<PathBuf, ShardError> {
    match &spec.model.path {
        Some(p) => access.resolve(p, spec_dir).map_err(ShardError::BadInput),
        None => {
            let p = default_model::path_in(models_dir);
            if !p.exists() {
                return Err(ShardError::BadInput(default_model::missing_message(
                    models_dir,
                )));
            }
            Ok(p)
        }
    }
}

/// A job ready for its shards.
pub struct PreparedJob {
    /// The spec.
    pub spec: SweepSpec,
    /// The resident model.
    pub loaded: Arc<LoadedModel>,
    /// The checked prompt pairs (none for downstream ablation).
    pub pairs: Vec<PromptPair>,
    /// Token ids (none for downstream ablation).
    pub prompts: Option<PromptSet>,
    /// The evaluator (clean and corrupt runs done, ablation values computed); none for
    /// downstream ablation.
    pub ev: Option<Evaluator>,
    /// Downstream ablation: the tokenized task prompts and replacement values.
    pub downstream: Option<Downstream>,
    /// The orders, node circuit, edge graph and head sets the spec names, resolved against
    /// the model.
    pub inputs: JobInputs,
    /// What the prepare shard reports.
    pub meta: JobMeta,
}

/// Loads (or reuses) the model, checks the data, and runs the clean and corrupt prompts.
/// Relative paths in the spec are relative to `spec_dir`.
pub fn prepare(
    spec: &SweepSpec,
    spec_dir: &Path,
    models_dir: &Path,
    access: &ModelAccess,
    cache: &ModelCache,
) -> Result<PreparedJob, ShardError> {
    if spec.model.device != "cpu" && !cfg!(feature = "cuda") {
        return Err(ShardError::BadInput(format!(
            "[model] device: `{}` needs a build with CUDA support (cargo build --features cuda); this build runs on cpu",
            spec.model.device
        )));
    }
    let dtype = parse_dtype(&spec.model.dtype)
        .map_err(|e| ShardError::BadInput(format!("[model] dtype: {e}")))?;
    let path = model_path(spec, spec_dir, models_dir, access)?;
    let loaded = cache.get(&path, dtype)?;
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| {
        ShardError::BadInput(format!("{} has no tokenizer", loaded.source.display()))
    })?;
    tracing::info!("{}", tok.bos_summary());
    let pairs = if spec.sweep.kind.uses_data() {
        spec.data
            .load(tok, spec_dir)
            .map_err(|e| ShardError::BadInput(e.to_string()))?
    } else {
        vec![]
    };
    // The orders, circuit and edge graph the spec names, checked against the model before
    // any forward pass.
    let info = loaded.model.info();
    let inputs = JobInputs::resolve(spec, info.graph_shape(), &mut |f| {
        let path = if f.is_absolute() {
            f.to_path_buf()
        } else {
            spec_dir.join(f)
        };
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .map_err(ShardError::BadInput)?;
    if !spec.sweep.kind.uses_data() {
        return prepare_downstream(spec, loaded, inputs);
    }
    let prompts = PromptSet::from_pairs(&pairs, tok).map_err(ShardError::BadInput)?;
    for (p, (c, k)) in pairs.iter().zip(prompts.clean.iter().zip(&prompts.corrupt)) {
        if let Some(why) = check::beyond_context(c.len(), k.len(), info.context_length) {
            return Err(ShardError::BadInput(format!("line {}: {why}", p.line)));
        }
    }
    if spec.ablation.direction == Direction::Denoising
        && let Some(i) = prompts.last_token_mismatch()
    {
        return Err(ShardError::BadInput(format!(
            "[ablation] direction = \"denoising\": line {} ends its clean and corrupt prompts with different tokens; denoising restores the heads' and MLPs' clean activations, not the embedding, and the last token's embedding reaches the logits directly, so even the whole circuit would not reproduce the clean run (use noising, or a corruption that keeps the last token)",
            pairs[i].line
        )));
    }
    let seq_len = prompts.clean.first().map_or(1, Vec::len);
    let batch_tokens = crate::gpu_memory::pass_tokens(
        loaded.model.device(),
        info,
        (seq_len, prompts.clean.len() * seq_len),
        spec.ablation.metric != Metric::LogitDiff,
        spec.run.batch_tokens,
        circuit_sweep_common::limits::MAX_BATCH_TOKENS,
    );
    let mut ev = Evaluator::new(&loaded.model, &prompts, spec.ablation, batch_tokens)?;
    ev.set_kv_per_query(spec.sweep.kv_edges == KvEdges::QueryHead);
    let positions = spec
        .edge_positions(prompts.clean[0].len())
        .map_err(ShardError::BadInput)?;
    ev.set_edge_positions(positions)?;
    if spec.ablation.normalize == Normalize::Empty {
        // The empty circuit through the same path as every candidate: every node ablated, or
        // every edge of the graph.
        let empty = if spec.sweep.scores_edges() {
            ev.edge_metrics(&[EdgeCandidate {
                nodes: inputs.outside.clone(),
                edges: inputs.edges.clone(),
                settled: vec![],
            }])?[0]
        } else {
            ev.metrics(&[Component::all(info.n_layers, info.n_heads)])?[0]
        };
        ev.set_empty(empty);
    }
    metric::check_baselines(
        spec.ablation.metric,
        spec.ablation.normalize,
        ev.full,
        ev.corrupt,
        ev.empty,
    )
    .map_err(ShardError::BadInput)?;
    let circuit_score = match &inputs.circuit {
        Some(_) => Some(ev.scores(std::slice::from_ref(&inputs.outside))?[0]),
        None => None,
    };
    tracing::info!(
        "{} prompts of {} tokens; full {:.4}, corrupt {:.4}",
        ev.prompts(),
        prompts.clean[0].len(),
        ev.full,
        ev.corrupt
    );
    let jsonl = dataset::to_jsonl(&pairs);
    let sha = sha256_hex(&jsonl);
    let meta = JobMeta {
        circuit_score,
        full: ev.full,
        corrupt: ev.corrupt,
        empty: ev.empty,
        ..base_meta(
            &loaded,
            jsonl,
            serde_json::json!({
                "sha256": sha,
                "prompts": pairs.len(),
                "tokens": prompts.clean[0].len(),
                "bos": tok.bos_summary(),
            }),
        )
    };
    Ok(PreparedJob {
        spec: spec.clone(),
        loaded,
        pairs,
        prompts: Some(prompts),
        ev: Some(ev),
        downstream: None,
        inputs,
        meta,
    })
}

/// The prepare step of downstream ablation: the task prompts, tokenized, and the replacement
/// values. `full` and `corrupt` of the meta are unused (0): the study's own first set is the
/// full model.
fn prepare_downstream(
    spec: &SweepSpec,
    loaded: Arc<LoadedModel>,
    inputs: JobInputs,
) -> Result<PreparedJob, ShardError> {
    let tok = loaded.tokenizer.as_ref().expect("checked by prepare");
    let d = &spec.downstream;
    let tasks: Vec<_> = d
        .tasks
        .iter()
        .map(|&t| (t, t.prompts(d.n, d.shots, d.seed)))
        .collect();
    let ds = Downstream::new(
        &loaded.model,
        tok,
        tasks,
        spec.ablation.kind,
        spec.ablation.fold_value_bias,
        // Generation keeps a KV cache and full-vocabulary logits per row, which the memory
        // estimate of a pass does not count: the CPU's default unless the spec sets a size.
        spec.run
            .batch_tokens
            .unwrap_or(circuit_sweep_common::spec::CPU_BATCH_TOKENS),
    )
    .map_err(|e| match e {
        DownstreamError::Model(m) => ShardError::Model(m),
        DownstreamError::Input(i) => ShardError::BadInput(i),
    })?;
    let jsonl: String = ds
        .tasks
        .iter()
        .flat_map(|(_, ps, _)| ps.iter())
        .map(|p| serde_json::to_string(p).expect("prompts serialize") + "\n")
        .collect();
    let sha = sha256_hex(&jsonl);
    let dataset = serde_json::json!({
        "sha256": sha,
        "prompts": ds.tasks.iter().map(|t| t.1.len()).sum::<usize>(),
        "tasks": d.tasks,
        "bos": tok.bos_summary(),
    });
    let meta = base_meta(&loaded, jsonl, dataset);
    Ok(PreparedJob {
        spec: spec.clone(),
        loaded,
        pairs: vec![],
        prompts: None,
        ev: None,
        downstream: Some(ds),
        inputs,
        meta,
    })
}

/// What the prepare shard reports about the model and the prompts; the metrics are 0 until the
/// caller sets them.
fn base_meta(loaded: &LoadedModel, prompts_jsonl: String, dataset: serde_json::Value) -> JobMeta {
    let info = loaded.model.info();
    JobMeta {
        model_path: loaded.source.display().to_string(),
        info: serde_json::to_value(info).expect("model info serializes"),
        n_layers: info.n_layers,
        n_heads: info.n_heads,
        n_kv_heads: info.n_kv_heads,
        parallel_residual: info.parallel_residual,
        circuit_score: None,
        dataset,
        prompts_jsonl,
        full: 0.0,
        corrupt: 0.0,
        empty: None,
    }
}

/// The hex sha256 of a text (the dataset hash in `result.json`).
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PreparedJob {
    /// The evaluator of a sweep over prompt pairs.
    pub fn ev(&self) -> Result<&Evaluator, ShardError> {
        self.ev.as_ref().ok_or_else(|| {
            ShardError::BadInput(format!(
                "a {:?} job has no prompt pairs to evaluate",
                self.spec.sweep.kind
            ))
        })
    }
}
