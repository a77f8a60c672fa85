//! Hooked transformer models: one forward pass that can capture head outputs `z[l,h]`, MLP
//! outputs `m[l]` and the residual stream, replace any of them per variant, start from a cached
//! residual stream, and compute only the logits a metric needs.

mod activations;
mod attribution;
mod driver;
mod edges;
mod gpt2;
mod hooks;
mod kv_cache;
mod layers;
mod llama;
mod neox;
mod readout;
mod seq_ctx;

use std::fmt;

use candle_core::{DType, Device, Tensor};

pub use activations::Activations;
pub use attribution::{AttributionPass, AttributionSums};
pub use gpt2::Gpt2Config;
pub use hooks::Interventions;
pub use kv_cache::KvCache;
pub use llama::{LlamaConfig, RopeScaling};
pub use neox::NeoxConfig;

pub(crate) use gpt2::Gpt2;
pub(crate) use llama::Llama;
pub(crate) use neox::Neox;

/// Errors of a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape, dtype or device problem inside candle).
    #[error("tensor operation failed: {0}")]
    Candle(candle_core::Error),
    /// The device ran out of memory.
    #[error("out of memory: {0}")]
    OutOfMemory(candle_core::Error),
    /// The request itself is inconsistent with the model (named field says what).
    #[error("invalid run request: {0}")]
    InvalidRequest(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        // candle reports a device allocation failure only as text (CUDA's
        // `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`, "out of memory"
        // from other backends): the one place that reads it, so that callers match a variant.
        let text = e.to_string().to_lowercase();
        if text.contains("out_of_memory")
            || text.contains("out of memory")
            || text.contains("alloc_failed")
        {
            ModelError::OutOfMemory(e)
        } else {
            ModelError::Candle(e)
        }
    }
}

/// The model families this engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// GPT-2: learned positions, LayerNorm, gelu_new, tied unembedding.
    Gpt2,
    /// Llama family (Llama-2, Llama-3, SmolLM2): RMSNorm, rotary, grouped-query attention.
    Llama,
    /// GPT-NeoX / Pythia: parallel residual, partial rotary, LayerNorm.
    GptNeox,
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Gpt2 => "gpt2",
            Architecture::Llama => "llama",
            Architecture::GptNeox => "gpt_neox",
        })
    }
}

/// Facts about a loaded model, as `model info` prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Model family.
    pub architecture: Architecture,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (fewer than `n_heads` with grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one head.
    pub d_head: usize,
    /// Hidden width of the MLP.
    pub d_mlp: usize,
    /// Vocabulary size (rows of the unembedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// Rotary base, where the model uses rotary embeddings.
    pub rope_theta: Option<f64>,
    /// Whether the unembedding is the token embedding.
    pub tied_embeddings: bool,
    /// Attention and MLP read the same residual stream (GPT-NeoX's parallel residual).
    pub parallel_residual: bool,
    /// Parameter count (tied matrices counted once).
    pub parameters: u64,
    /// Dtype the weights are held in.
    #[serde(serialize_with = "serialize_dtype")]
    pub dtype: DType,
}

impl ModelInfo {
    /// The shape of the model's edge graph (every query head with its own key and value
    /// receivers, `embed` a sender; [`SweepSpec::graph`] adapts it to a spec).
    ///
    /// [`SweepSpec::graph`]: circuit_sweep_common::spec::SweepSpec::graph
    pub fn graph_shape(&self) -> circuit_sweep_common::edge::GraphShape {
        circuit_sweep_common::edge::GraphShape {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            parallel: self.parallel_residual,
            kv_per_query: true,
            embed: true,
        }
    }
}

fn serialize_dtype<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

/// Where a forward pass starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// From token ids, `[prompts, positions]` u32.
    Tokens(Tensor),
    /// From the cached residual stream at the input of block `layer`, `[prompts, positions,
    /// d_model]`; blocks below `layer` are not recomputed.
    Resid {
        /// Block whose input `resid` is.
        layer: usize,
        /// The residual stream at that block's input.
        resid: Tensor,
    },
    /// Variants that join the pass at their own layers (node interventions only): variant `v`
    /// runs the blocks from `joins[v].layer` up, from the residual stream its join names.
    /// Joins are sorted by layer, so the variants running a block are always the first ones.
    Staggered(Stagger),
}

/// The joins of a staggered pass (see [`Start::Staggered`]).
#[derive(Debug, Clone)]
pub struct Stagger {
    /// One join per variant, by layer (nondecreasing).
    pub joins: Vec<Join>,
    /// Variants whose residual stream at each block's input, from their join layer up to (not
    /// including) the given layer, is returned in [`Captured::variant_resid`] (in this order).
    pub keep: Vec<(usize, usize)>,
}

/// Where a variant of a staggered pass joins.
#[derive(Debug, Clone)]
pub struct Join {
    /// First block the variant runs.
    pub layer: usize,
    /// Its residual stream at that block's input.
    pub from: JoinFrom,
}

/// The residual stream a variant joins with.
#[derive(Debug, Clone)]
pub enum JoinFrom {
    /// A cached one, `[prompts, positions, d_model]`.
    Resid(Tensor),
    /// That of an earlier variant of the same pass at the join layer (which must be running by
    /// then): the two agree below it.
    Variant(usize),
}

/// Which logits to compute.
#[derive(Debug, Clone, Default)]
pub enum LogitSelection {
    /// None (capture-only passes).
    #[default]
    None,
    /// The full vocabulary at the last position: `[rows, vocab]` (for KL and predictions).
    Last,
    /// Only these token ids at the last position: `[rows, ids.len()]` (for logit differences).
    LastIds(Vec<u32>),
    /// The full vocabulary at every position: `[rows, positions, vocab]` (tests, generation).
    All,
}

/// What to capture during a forward pass (every layer from the start layer up).
#[derive(Debug, Clone, Copy, Default)]
pub struct Capture {
    /// The residual stream at each block's input, `[rows, pos, d_model]`.
    pub resid: bool,
    /// Head outputs, `[rows, pos, n_heads, d_head]` per layer.
    pub z: bool,
    /// MLP outputs, `[rows, pos, d_model]` per layer.
    pub mlp: bool,
    /// The residual stream each MLP reads (`mlp_in`) and the final block's output
    /// (`final_resid_post`).
    pub mlp_in: bool,
    /// Attention patterns `[rows, n_heads, query positions, positions]` (f32) per layer.
    pub pattern: bool,
}

impl Capture {
    /// Capture every activation (not the attention patterns).
    pub fn all() -> Self {
        Capture {
            resid: true,
            z: true,
            mlp: true,
            mlp_in: true,
            pattern: false,
        }
    }
}

/// Captured activations, indexed by layer; `None` for layers not captured (below the start).
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Residual stream at each block's input.
    pub resid: Vec<Option<Tensor>>,
    /// Head outputs `z`, after any intervention.
    pub z: Vec<Option<Tensor>>,
    /// MLP outputs, after any intervention.
    pub mlp: Vec<Option<Tensor>>,
    /// The residual stream each MLP reads, before edge interventions (TransformerLens'
    /// `hook_mlp_in`): after the layer's attention, or the block input with a parallel residual.
    pub mlp_in: Vec<Option<Tensor>>,
    /// The final block's output, what the final norm reads (the last layer's `hook_resid_post`).
    pub final_resid_post: Option<Tensor>,
    /// Attention patterns per layer.
    pub pattern: Vec<Option<Tensor>>,
    /// Of a staggered pass: each kept variant's residual stream at the blocks' inputs it was
    /// kept for (`[prompts, positions, d_model]`, the first at its join layer).
    pub variant_resid: Vec<Vec<Tensor>>,
}

/// One forward pass: where it starts, what it replaces, what it returns. Built with its start
/// ([`RunRequest::new`]), the rest by struct update.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    /// Tokens or a cached residual stream.
    pub start: Start,
    /// Variants of replaced components; rows of the output are variant-major
    /// (`row = variant * prompts + prompt`). Without interventions there is one variant.
    pub interventions: Option<Interventions<'a>>,
    /// Activations to capture.
    pub capture: Capture,
    /// Logits to compute.
    pub logits: LogitSelection,
    /// A KV cache to extend (generation): the pass runs only the new tokens, attending to the
    /// cached positions. Once the cache holds positions, the token rows are the cache's rows
    /// (variant-major), not prompts to repeat per variant.
    pub cache: Option<&'a KvCache>,
}

impl RunRequest<'_> {
    /// A pass from `start` that replaces nothing, captures nothing and computes every logit.
    pub fn new(start: Start) -> Self {
        RunRequest {
            start,
            interventions: None,
            capture: Capture::default(),
            logits: LogitSelection::default(),
            cache: None,
        }
    }
}

/// Output of a forward pass.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Logits as selected, in f32, or `None` when none were asked for.
    pub logits: Option<Tensor>,
    /// Captured activations.
    pub captured: Captured,
}

/// The per-architecture part of a model: embedding, blocks with hook points, final norm,
/// unembedding. The shared driver (`driver.rs`) runs it.
pub(crate) trait Blocks: Send + Sync {
    /// Token ids `[B, T]` at positions `pos0..pos0 + T` to the residual stream at block 0's
    /// input.
    fn embed(&self, ids: &Tensor, pos0: usize) -> candle_core::Result<Tensor>;
    /// Per-sequence-length state (causal mask, rotary tables); the driver keeps it per length.
    fn seq_ctx(&self, seq_len: usize) -> candle_core::Result<seq_ctx::SeqCtx>;
    /// Block `layer` on the residual stream `x`, calling the hooks at `z` and the MLP output.
    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &seq_ctx::SeqCtx,
        hooks: &mut dyn hooks::LayerHooks,
    ) -> Result<Tensor, ModelError>;
    /// The head outputs `z` (`[B, T_q, n_heads, d_head]`) of block `layer` for its input `x`,
    /// before any hook.
    fn attn_z(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &seq_ctx::SeqCtx,
        hooks: &mut dyn hooks::LayerHooks,
    ) -> Result<Tensor, ModelError>;
    /// Query heads per layer and their width.
    fn heads(&self) -> (usize, usize);
    /// The head outputs of block `layer` as a block continues with them (through the hooks).
    /// Not computed where every variant replaces every head: zeros, which the replacement
    /// turns into its value bit for bit.
    fn hooked_z(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &seq_ctx::SeqCtx,
        hooks: &mut dyn hooks::LayerHooks,
    ) -> Result<Tensor, ModelError> {
        let z = if hooks.heads_replaced(layer) {
            let (h, dh) = self.heads();
            Tensor::zeros((x.dim(0)?, ctx.queries, h, dh), x.dtype(), x.device())?
        } else {
            self.attn_z(layer, x, ctx, hooks)?
        };
        hooks.z(layer, z)
    }
    /// The MLP of `layer` (its norm included) on the residual stream `x` it reads,
    /// `[rows, T, d_model]`: what the block adds to the stream before any hook.
    fn mlp_out(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor>;
    /// The MLP of `layer` as a block runs it: its input through the hooks, its output through
    /// the hooks. Not computed where every variant replaces its output (node-ablated MLPs of
    /// a pruned circuit): that replacement gives the same value bit for bit.
    fn hooked_mlp(
        &self,
        layer: usize,
        x: &Tensor,
        hooks: &mut dyn hooks::LayerHooks,
    ) -> Result<Tensor, ModelError> {
        let input = hooks.mlp_input(layer, x)?;
        let m = if hooks.mlp_replaced(layer) {
            input.zeros_like()?
        } else {
            self.mlp_out(layer, &input)?
        };
        hooks.mlp(layer, m)
    }
    /// Final normalisation of the residual stream.
    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Unembedding matrix `[vocab, d_model]`.
    fn unembed(&self) -> &Tensor;
    /// The output projection's weight `[d_model, n_heads * d_head]` of `layer` (bias excluded).
    fn out_proj(&self, layer: usize) -> candle_core::Result<Tensor>;
    /// The value vectors `[.., d_head]` of key/value head `kv_head` of `layer` for the residual
    /// stream `x` (`[.., d_model]`): the attention's input norm, then the head's value
    /// projection with its bias.
    fn value(&self, layer: usize, kv_head: usize, x: &Tensor) -> candle_core::Result<Tensor>;

    /// The value projection's bias of every key/value head of `layer`, `[n_kv_heads, d_head]`,
    /// or `None` when the model has none.
    fn value_bias(&self, layer: usize) -> candle_core::Result<Option<Tensor>>;

    /// What head `head` of `layer` writes into the residual stream for head outputs `z`
    /// (`[rows, T, d_head]` to `[rows, T, d_model]`), bias excluded.
    fn head_out(&self, layer: usize, head: usize, z: &Tensor) -> candle_core::Result<Tensor> {
        let dh = z.dim(2)?;
        let w = self
            .out_proj(layer)?
            .narrow(1, head * dh, dh)?
            .t()?
            .contiguous()?;
        layers::by_rows(z, w.dim(1)?, |r| r.matmul(&w))
    }
}

/// A loaded model with hook points, on one device in one dtype. Cloning shares the weights.
#[derive(Clone)]
pub struct HookedModel {
    info: ModelInfo,
    blocks: std::sync::Arc<dyn Blocks>,
    device: Device,
    /// Masks and rotary tables of the sequence lengths run so far.
    seq_ctxs: std::sync::Arc<seq_ctx::SeqCtxCache>,
}

impl fmt::Debug for HookedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedModel")
            .field("info", &self.info)
            .finish()
    }
}

impl HookedModel {
    pub(crate) fn new(info: ModelInfo, blocks: Box<dyn Blocks>, device: Device) -> Self {
        HookedModel {
            info,
            blocks: blocks.into(),
            device,
            seq_ctxs: Default::default(),
        }
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What head `head` of `layer` writes into the residual stream for head outputs `z`
    /// (`[rows, T, d_head]` to `[rows, T, d_model]`; its slice of the output projection, bias
    /// excluded).
    pub fn head_out(&self, layer: usize, head: usize, z: &Tensor) -> Result<Tensor, ModelError> {
        let i = &self.info;
        if layer >= i.n_layers || head >= i.n_heads || z.rank() != 3 || z.dim(2)? != i.d_head {
            return Err(ModelError::InvalidRequest(format!(
                "head_out of h{layer}.{head} on {:?}: the model has {} layers of {} heads of width {}",
                z.dims(),
                i.n_layers,
                i.n_heads,
                i.d_head
            )));
        }
        Ok(self.blocks.head_out(layer, head, &z.to_dtype(i.dtype)?)?)
    }

    /// The MLP of `layer` (its norm included) on the residual stream `x` it reads (`[rows, T,
    /// d_model]`), as the forward pass computes it.
    pub fn mlp_out(&self, layer: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.blocks.mlp_out(layer, &x.to_dtype(self.info.dtype)?)?)
    }

    /// The value bias of every query head of `layer` (a key/value head's repeated for the query
    /// heads sharing it), `[n_heads, d_head]`, or `None` when the model has none.
    pub fn value_bias(&self, layer: usize) -> Result<Option<Tensor>, ModelError> {
        let i = &self.info;
        let Some(b) = self.blocks.value_bias(layer)? else {
            return Ok(None);
        };
        let group = i.n_heads / i.n_kv_heads.max(1);
        Ok(Some(
            b.unsqueeze(1)?
                .broadcast_as((i.n_kv_heads, group, i.d_head))?
                .reshape((i.n_heads, i.d_head))?,
        ))
    }

    /// Token ids (one row per prompt, all the same length) as a `[prompts, positions]` tensor.
    pub fn tokens(&self, rows: &[Vec<u32>]) -> Result<Tensor, ModelError> {
        let t = rows.first().map_or(0, Vec::len);
        if t == 0 {
            return Err(ModelError::InvalidRequest("no tokens to run".into()));
        }
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != t) {
            return Err(ModelError::InvalidRequest(format!(
                "prompt {i} has {} tokens but prompt 0 has {t}: prompts in one batch must have equal length",
                r.len()
            )));
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (rows.len(), t), &self.device)?)
    }
}
