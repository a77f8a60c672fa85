//! GPT-2: learned positions, LayerNorm, `gelu_new`, Conv1D weights (stored `[in, out]` in
//! Hugging Face checkpoints), tied unembedding.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};

use circuit_sweep_common::edge::Qkv;

use super::edges;
use super::hooks::LayerHooks;
use super::layers::{self, Activation};
use super::seq_ctx::SeqCtx;
use super::{Architecture, Blocks, ModelError, ModelInfo};
use crate::load_error::LoadError;
use crate::weights::WeightSource;

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// A GPT-2 `config.json`, read as Hugging Face writes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Heads per block.
    pub n_head: usize,
    /// MLP hidden width; defaults to `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Unsupported variant flag (Mistral's GPT-2s); refused when true.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Unsupported variant flag; refused when true.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    /// Whether attention scores are divided by `sqrt(d_head)`; refused when false.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
}

fn yes() -> bool {
    true
}

impl Gpt2Config {
    /// MLP hidden width.
    pub fn d_mlp(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks values the loader depends on, naming the field.
    pub fn validate(&self, file: &Path) -> Result<(), LoadError> {
        let bad = |field: &str, reason: String| LoadError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        };
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(bad(
                "n_head",
                format!(
                    "n_embd {} is not divisible by n_head {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if Activation::parse(&self.activation_function).is_none() {
            return Err(bad(
                "activation_function",
                format!("unsupported activation `{}`", self.activation_function),
            ));
        }
        if self.scale_attn_by_inverse_layer_idx {
            return Err(bad(
                "scale_attn_by_inverse_layer_idx",
                "true is not supported".into(),
            ));
        }
        if self.reorder_and_upcast_attn {
            return Err(bad(
                "reorder_and_upcast_attn",
                "true is not supported".into(),
            ));
        }
        if !self.scale_attn_weights {
            return Err(bad("scale_attn_weights", "false is not supported".into()));
        }
        Ok(())
    }
}

struct Gpt2Layer {
    ln1: layers::Norm,
    qkv: layers::Dense,
    proj: layers::Dense,
    ln2: layers::Norm,
    fc: layers::Dense,
    fc_proj: layers::Dense,
}

/// A GPT-2 model.
pub(crate) struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    layers: Vec<Gpt2Layer>,
    ln_f: layers::Norm,
    act: Activation,
    n_heads: usize,
    d_head: usize,
    device: Device,
}

impl Gpt2 {
    /// Loads weights named as in Hugging Face checkpoints, with or without the `transformer.`
    /// prefix (`GPT2LMHeadModel` vs `GPT2Model`).
    pub fn load(
        w: &dyn WeightSource,
        cfg: &Gpt2Config,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ModelInfo), LoadError> {
        let pre = if w.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (d, v, f) = (cfg.n_embd, cfg.vocab_size, cfg.d_mlp());
        let eps = cfg.layer_norm_epsilon;
        let wte = w.get(&format!("{pre}wte.weight"), &[v, d])?;
        let wpe = w.get(&format!("{pre}wpe.weight"), &[cfg.n_positions, d])?;
        let mut layers_ = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("{pre}h.{i}");
            layers_.push(Gpt2Layer {
                ln1: layers::layer_norm(w, &format!("{p}.ln_1"), d, eps)?,
                qkv: layers::conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                proj: layers::conv1d(w, &format!("{p}.attn.c_proj"), d, d)?,
                ln2: layers::layer_norm(w, &format!("{p}.ln_2"), d, eps)?,
                fc: layers::conv1d(w, &format!("{p}.mlp.c_fc"), d, f)?,
                fc_proj: layers::conv1d(w, &format!("{p}.mlp.c_proj"), f, d)?,
            });
        }
        let ln_f = layers::layer_norm(w, &format!("{pre}ln_f"), d, eps)?;
        let info = ModelInfo {
            architecture: Architecture::Gpt2,
            n_layers: cfg.n_layer,
            n_heads: cfg.n_head,
            n_kv_heads: cfg.n_head,
            d_model: d,
            d_head: d / cfg.n_head,
            d_mlp: f,
            vocab_size: v,
            context_length: cfg.n_positions,
            rope_theta: None,
            tied_embeddings: true,
            parallel_residual: false,
            parameters: w.loaded_elements(),
            dtype,
        };
        let model = Gpt2 {
            wte,
            wpe,
            layers: layers_,
            ln_f,
            act: Activation::parse(&cfg.activation_function).unwrap_or(Activation::GeluTanh),
            n_heads: cfg.n_head,
            d_head: cfg.n_embd / cfg.n_head,
            device: device.clone(),
        };
        Ok((model, info))
    }
}

impl Blocks for Gpt2 {
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
        let qkv = layers::dense(&l.qkv, &l.ln1.forward(x)?)?;
        let col = |w: Qkv, i: usize| match w {
            Qkv::Q => i * dh,
            Qkv::K => d + i * dh,
            Qkv::V => 2 * d + i * dh,
        };
        let rx = hooks.attn_inputs(layer, x)?;
        let qkv = edges::patch_qkv(qkv, &rx, dh, col, &l.qkv, |t| l.ln1.forward(t))?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape((b, t, h, dh))?
                .transpose(1, 2)
        };
        let q = ctx.queries_of(&split(0)?, 2)?;
        layers::attention(layer, &q, split(1)?, split(2)?, &[], ctx, hooks)
    }

    fn heads(&self) -> (usize, usize) {
        (self.n_heads, self.d_head)
    }

    fn embed(&self, ids: &Tensor, pos0: usize) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let n_pos = self.wpe.dim(0)?;
        if pos0 + t > n_pos {
            candle_core::bail!(
                "{} positions exceed GPT-2's {n_pos} learned positions",
                pos0 + t
            );
        }
        let tok = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        tok.broadcast_add(&self.wpe.i(pos0..pos0 + t)?)
    }

    fn seq_ctx(&self, seq_len: usize) -> candle_core::Result<SeqCtx> {
        SeqCtx::new(seq_len, None, &self.device)
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
        let a = layers::dense(&l.proj, &z.reshape((b, ctx.queries, d))?)?;
        let x = (ctx.queries_of(x, 1)? + a)?;
        let m = self.hooked_mlp(layer, &x, hooks)?;
        Ok((x + m)?)
    }

    fn mlp_out(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        layers::dense(
            &l.fc_proj,
            &self
                .act
                .forward(&layers::dense(&l.fc, &l.ln2.forward(x)?)?)?,
        )
    }

    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.ln_f.forward(x)
    }

    fn unembed(&self) -> &Tensor {
        &self.wte
    }

    fn out_proj(&self, layer: usize) -> candle_core::Result<Tensor> {
        self.layers[layer].proj.weight()
    }

    fn value_bias(&self, layer: usize) -> candle_core::Result<Option<Tensor>> {
        let l = &self.layers[layer];
        let d = l.proj.out_dim()?;
        let dh = d / self.n_heads;
        l.qkv
            .bias()
            .map(|b| b.narrow(0, 2 * d, d)?.reshape((self.n_heads, dh)))
            .transpose()
    }

    fn value(&self, layer: usize, kv_head: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        let d = l.proj.out_dim()?;
        let dh = d / self.n_heads;
        layers::dense_cols(&l.qkv, &l.ln1.forward(x)?, 2 * d + kv_head * dh, dh)
    }
}
