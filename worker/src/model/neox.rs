//! GPT-NeoX / Pythia: parallel (or sequential) residual, partial rotary (`rotary_pct`),
//! LayerNorm, fused per-head `query_key_value`, separate unembedding.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};

use circuit_sweep_common::edge::Qkv;

use super::edges;
use super::hooks::LayerHooks;
use super::layers::{self, Activation};
use super::seq_ctx::{Rotary, SeqCtx};
use super::{Architecture, Blocks, ModelError, ModelInfo};
use crate::load_error::LoadError;
use crate::weights::WeightSource;

fn default_eps() -> f64 {
    1e-5
}
fn default_gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}
fn default_context() -> usize {
    2048
}

/// A GPT-NeoX `config.json`, read as Hugging Face writes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NeoxConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Heads per block.
    pub num_attention_heads: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Share of each head's features that get rotary (older spelling).
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    /// Share of each head's features that get rotary (newer spelling).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Rotary base (older spelling).
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    /// Rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary parameters (newer `transformers` spelling).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Parallel attention and MLP (Pythia) or sequential.
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    /// MLP activation.
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    /// Whether `embed_out` is the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections.
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// Trained context length.
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
}

/// `rope_parameters` of newer NeoX configs.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RopeParameters {
    /// Rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Share of features rotated.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Scaling type; only `default` is supported for NeoX.
    #[serde(default)]
    pub rope_type: Option<String>,
}

impl NeoxConfig {
    fn d_head(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Rotary base from whichever field the config uses (default 10000, as `transformers`).
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10000.0)
    }

    /// Rotated features per head.
    pub fn rotary_dims(&self) -> usize {
        let pct = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(0.25);
        (self.d_head() as f64 * pct) as usize
    }

    /// Checks values the loader depends on, naming the field.
    pub fn validate(&self, file: &Path) -> Result<(), LoadError> {
        let bad = |field: &str, reason: String| LoadError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        };
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(
                "num_attention_heads",
                "hidden_size is not divisible by it".into(),
            ));
        }
        if !self.rotary_dims().is_multiple_of(2) {
            return Err(bad(
                "rotary_pct",
                format!(
                    "gives {} rotary features, an odd number",
                    self.rotary_dims()
                ),
            ));
        }
        if Activation::parse(&self.hidden_act).is_none() {
            return Err(bad(
                "hidden_act",
                format!("unsupported activation `{}`", self.hidden_act),
            ));
        }
        if let Some(t) = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            && t != "default"
        {
            return Err(bad(
                "rope_parameters.rope_type",
                format!("unsupported rotary scaling `{t}`"),
            ));
        }
        Ok(())
    }
}

struct NeoxLayer {
    ln1: layers::Norm,
    qkv: layers::Dense,
    dense: layers::Dense,
    ln2: layers::Norm,
    up: layers::Dense,
    down: layers::Dense,
}

/// A GPT-NeoX model.
pub(crate) struct Neox {
    embed: candle_nn::Embedding,
    layers: Vec<NeoxLayer>,
    ln_f: layers::Norm,
    unembed: Tensor,
    rotary: Rotary,
    act: Activation,
    parallel: bool,
    n_heads: usize,
    d_head: usize,
    device: Device,
}

impl Neox {
    /// Loads weights named as in Hugging Face checkpoints.
    pub fn load(
        w: &dyn WeightSource,
        cfg: &NeoxConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ModelInfo), LoadError> {
        let (d, v, f, h) = (
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
        );
        let eps = cfg.layer_norm_eps;
        let embed_w = w.get("gpt_neox.embed_in.weight", &[v, d])?;
        let mut layers_ = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("gpt_neox.layers.{i}");
            let ab = cfg.attention_bias;
            layers_.push(NeoxLayer {
                ln1: layers::layer_norm(w, &format!("{p}.input_layernorm"), d, eps)?,
                qkv: layers::linear(w, &format!("{p}.attention.query_key_value"), 3 * d, d, ab)?,
                dense: layers::linear(w, &format!("{p}.attention.dense"), d, d, ab)?,
                ln2: layers::layer_norm(w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                up: layers::linear(w, &format!("{p}.mlp.dense_h_to_4h"), f, d, true)?,
                down: layers::linear(w, &format!("{p}.mlp.dense_4h_to_h"), d, f, true)?,
            });
        }
        let ln_f = layers::layer_norm(w, "gpt_neox.final_layer_norm", d, eps)?;
        let unembed = if cfg.tie_word_embeddings {
            embed_w.clone()
        } else {
            w.get("embed_out.weight", &[v, d])?
        };
        let info = ModelInfo {
            architecture: Architecture::GptNeox,
            n_layers: cfg.num_hidden_layers,
            n_heads: h,
            n_kv_heads: h,
            d_model: d,
            d_head: d / h,
            d_mlp: f,
            vocab_size: v,
            context_length: cfg.max_position_embeddings,
            rope_theta: Some(cfg.theta()),
            tied_embeddings: cfg.tie_word_embeddings,
            parallel_residual: cfg.use_parallel_residual,
            parameters: w.loaded_elements(),
            dtype,
        };
        let model = Neox {
            embed: candle_nn::Embedding::new(embed_w, d),
            layers: layers_,
            ln_f,
            unembed,
            rotary: Rotary::new(cfg.rotary_dims(), cfg.theta(), dtype, device),
            act: Activation::parse(&cfg.hidden_act).unwrap_or(Activation::GeluErf),
            parallel: cfg.use_parallel_residual,
            n_heads: h,
            d_head: d / h,
            device: device.clone(),
        };
        Ok((model, info))
    }
}

impl Blocks for Neox {
    fn attn_z(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &SeqCtx,
        hooks: &mut dyn LayerHooks,
    ) -> Result<Tensor, ModelError> {
        let l = &self.layers[layer];
        let (b, t, d) = x.dims3()?;
        let h = self.n_heads;
        let dh = d / h;
        // query_key_value is laid out per head: [h, (q | k | v), dh].
        let qkv = layers::dense(&l.qkv, &l.ln1.forward(x)?)?;
        let col = |w: Qkv, i: usize| {
            i * 3 * dh
                + match w {
                    Qkv::Q => 0,
                    Qkv::K => dh,
                    Qkv::V => 2 * dh,
                }
        };
        let rx = hooks.attn_inputs(layer, x)?;
        let qkv = edges::patch_qkv(qkv, &rx, dh, col, &l.qkv, |t| l.ln1.forward(t))?;
        let qkv = qkv.reshape((b, t, h, 3 * dh))?;
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(3, i * dh, dh)?.transpose(1, 2)
        };
        let (q, k, v) = (ctx.queries_of(&part(0)?, 2)?, part(1)?, part(2)?);
        let (q, k) = match (&ctx.rope_q, &ctx.rope) {
            (Some((cos_q, sin_q)), Some((cos, sin))) if cos.dim(1)? > 0 => (
                layers::apply_rotary(&q, cos_q, sin_q)?,
                layers::apply_rotary(&k, cos, sin)?,
            ),
            _ => (q, k),
        };
        layers::attention(layer, &q, k, v, &[], ctx, hooks)
    }

    fn heads(&self) -> (usize, usize) {
        (self.n_heads, self.d_head)
    }

    fn embed(&self, ids: &Tensor, _pos0: usize) -> candle_core::Result<Tensor> {
        self.embed.forward(ids)
    }

    fn seq_ctx(&self, seq_len: usize) -> candle_core::Result<SeqCtx> {
        SeqCtx::new(seq_len, Some(&self.rotary), &self.device)
    }

    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &SeqCtx,
        hooks: &mut dyn LayerHooks,
    ) -> Result<Tensor, ModelError> {
        let l = &self.layers[layer];
        let (b, _, d) = x.dims3()?;
        let z = self.hooked_z(layer, x, ctx, hooks)?;
        let a = layers::dense(&l.dense, &z.reshape((b, ctx.queries, d))?)?;
        let x = &ctx.queries_of(x, 1)?;
        let mlp_in = if self.parallel { x.clone() } else { (x + &a)? };
        let m = self.hooked_mlp(layer, &mlp_in, hooks)?;
        Ok(if self.parallel {
            ((m + a)? + x)?
        } else {
            (mlp_in + m)?
        })
    }

    fn mlp_out(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        layers::dense(
            &l.down,
            &self
                .act
                .forward(&layers::dense(&l.up, &l.ln2.forward(x)?)?)?,
        )
    }

    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.ln_f.forward(x)
    }

    fn unembed(&self) -> &Tensor {
        &self.unembed
    }

    fn out_proj(&self, layer: usize) -> candle_core::Result<Tensor> {
        self.layers[layer].dense.weight()
    }

    fn value_bias(&self, layer: usize) -> candle_core::Result<Option<Tensor>> {
        let l = &self.layers[layer];
        let dh = l.dense.out_dim()? / self.n_heads;
        // Fused per head: [q, k, v] of head 0, then of head 1, ...
        l.qkv
            .bias()
            .map(|b| {
                b.reshape((self.n_heads, 3 * dh))?
                    .narrow(1, 2 * dh, dh)?
                    .contiguous()
            })
            .transpose()
    }

    fn value(&self, layer: usize, kv_head: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        let dh = l.dense.out_dim()? / self.n_heads;
        layers::dense_cols(&l.qkv, &l.ln1.forward(x)?, kv_head * 3 * dh + 2 * dh, dh)
    }
}
