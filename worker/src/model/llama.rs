//! The Llama family (Llama-2, Llama-3, SmolLM2): RMSNorm, rotary embeddings (with `rope_theta`
//! and `rope_scaling`), grouped-query attention, SiLU-gated MLP, tied or separate unembedding.

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

/// Rotary scaling as in `config.json`'s `rope_scaling` (or `rope_parameters`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RopeScaling {
    /// `default`, `linear`, `llama3` or `dynamic`.
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama-3: low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3: high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3: context length the frequencies were trained for.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Newer configs keep the rotary base here.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl RopeScaling {
    fn name(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default")
    }
}

fn default_eps() -> f64 {
    1e-6
}
fn default_silu() -> String {
    "silu".into()
}
fn default_context() -> usize {
    2048
}

/// A Llama `config.json`, read as Hugging Face writes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Rotary parameters (newer `transformers` spelling of theta and scaling).
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// Whether `lm_head` is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Trained context length.
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
    /// Biases on q, k, v, o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases in the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
    /// MLP activation.
    #[serde(default = "default_silu")]
    pub hidden_act: String,
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head width.
    pub fn d_head(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000 (the
    /// `transformers` default, with a warning since a wrong base silently degrades a model).
    pub fn theta(&self) -> f64 {
        let t = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta);
        t.unwrap_or_else(|| {
            tracing::warn!("config has no rope_theta: using 10000, the transformers default");
            10000.0
        })
    }

    fn scaling(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// Checks values the loader depends on, naming the field.
    pub fn validate(&self, file: &Path) -> Result<(), LoadError> {
        let bad = |field: &str, reason: String| LoadError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        };
        if self.num_attention_heads == 0 || self.num_hidden_layers == 0 || self.hidden_size == 0 {
            return Err(bad("num_attention_heads", "sizes must be positive".into()));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_attention_heads,
                    self.kv_heads()
                ),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(
                "hidden_size",
                "not divisible by num_attention_heads".into(),
            ));
        }
        if !self.d_head().is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} is odd: rotary needs an even head width", self.d_head()),
            ));
        }
        if Activation::parse(&self.hidden_act).is_none() {
            return Err(bad(
                "hidden_act",
                format!("unsupported activation `{}`", self.hidden_act),
            ));
        }
        if let Some(s) = self.scaling() {
            // Name the field the config actually uses.
            let key = if self.rope_scaling.is_some() {
                "rope_scaling"
            } else {
                "rope_parameters"
            };
            match s.name() {
                "default" | "dynamic" => {}
                "linear" | "llama3" if s.factor.is_some() => {}
                "linear" | "llama3" => return Err(bad(&format!("{key}.factor"), "missing".into())),
                other => {
                    return Err(bad(
                        &format!("{key}.rope_type"),
                        format!(
                            "unsupported rotary scaling `{other}` (supported: default, linear, llama3, dynamic)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Rotary frequencies with scaling applied, and with GGUF per-frequency factors if given.
    pub(crate) fn rotary(
        &self,
        dtype: DType,
        device: &Device,
        freq_factors: Option<&[f32]>,
    ) -> Rotary {
        let dim = self.d_head();
        let mut r = Rotary::new(dim, self.theta(), dtype, device);
        if let Some(s) = self.scaling() {
            let factor = s.factor.unwrap_or(1.0) as f32;
            match s.name() {
                "linear" => r.inv_freq_mut().iter_mut().for_each(|f| *f /= factor),
                "llama3" => {
                    let low = s.low_freq_factor.unwrap_or(1.0) as f32;
                    let high = s.high_freq_factor.unwrap_or(4.0) as f32;
                    let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
                    let low_wavelen = old / low;
                    let high_wavelen = old / high;
                    for f in r.inv_freq_mut().iter_mut() {
                        let wavelen = 2.0 * std::f32::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(ff) = freq_factors {
            r.inv_freq_mut()
                .iter_mut()
                .zip(ff)
                .for_each(|(f, d)| *f /= d);
        }
        r
    }
}

struct LlamaLayer {
    ln1: layers::Norm,
    /// q, k and v projections fused: outputs `[q (h*dh) | k (kv*dh) | v (kv*dh)]`.
    qkv: layers::Dense,
    o: layers::Dense,
    ln2: layers::Norm,
    /// gate and up projections fused: outputs `[gate (f) | up (f)]`.
    gate_up: layers::Dense,
    down: layers::Dense,
}

/// A Llama-family model.
pub(crate) struct Llama {
    embed: candle_nn::Embedding,
    layers: Vec<LlamaLayer>,
    norm: layers::Norm,
    lm_head: Tensor,
    rotary: Rotary,
    act: Activation,
    n_heads: usize,
    n_kv: usize,
    d_head: usize,
    device: Device,
}

impl Llama {
    /// Loads weights named as in Hugging Face checkpoints.
    pub fn load(
        w: &dyn WeightSource,
        cfg: &LlamaConfig,
        rotary: Rotary,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, ModelInfo), LoadError> {
        let (d, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (h, kv, dh) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.d_head());
        let eps = cfg.rms_norm_eps;
        let embed_w = w.get("model.embed_tokens.weight", &[v, d])?;
        let mut layers_ = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ab = cfg.attention_bias;
            let mb = cfg.mlp_bias;
            let q = layers::linear(w, &format!("{p}.self_attn.q_proj"), h * dh, d, ab)?;
            let k = layers::linear(w, &format!("{p}.self_attn.k_proj"), kv * dh, d, ab)?;
            let v = layers::linear(w, &format!("{p}.self_attn.v_proj"), kv * dh, d, ab)?;
            let gate = layers::linear(w, &format!("{p}.mlp.gate_proj"), f, d, mb)?;
            let up = layers::linear(w, &format!("{p}.mlp.up_proj"), f, d, mb)?;
            layers_.push(LlamaLayer {
                ln1: layers::rms_norm(w, &format!("{p}.input_layernorm"), d, eps)?,
                qkv: layers::fuse(&[q, k, v], &format!("{p}.self_attn.qkv"))?,
                o: layers::linear(w, &format!("{p}.self_attn.o_proj"), d, h * dh, ab)?,
                ln2: layers::rms_norm(w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                gate_up: layers::fuse(&[gate, up], &format!("{p}.mlp.gate_up"))?,
                down: layers::linear(w, &format!("{p}.mlp.down_proj"), d, f, mb)?,
            });
        }
        let norm = layers::rms_norm(w, "model.norm", d, eps)?;
        // A checkpoint that says "tied" may still ship lm_head; tied means the embedding wins.
        let tied = cfg.tie_word_embeddings;
        let lm_head = if tied {
            embed_w.clone()
        } else {
            w.get("lm_head.weight", &[v, d])?
        };
        let info = ModelInfo {
            architecture: Architecture::Llama,
            n_layers: cfg.num_hidden_layers,
            n_heads: h,
            n_kv_heads: kv,
            d_model: d,
            d_head: dh,
            d_mlp: f,
            vocab_size: v,
            context_length: cfg.max_position_embeddings,
            rope_theta: Some(cfg.theta()),
            tied_embeddings: tied,
            parallel_residual: false,
            parameters: w.loaded_elements(),
            dtype,
        };
        let model = Llama {
            embed: candle_nn::Embedding::new(embed_w, d),
            layers: layers_,
            norm,
            lm_head,
            rotary,
            act: Activation::parse(&cfg.hidden_act).unwrap_or(Activation::Silu),
            n_heads: h,
            n_kv: kv,
            d_head: dh,
            device: device.clone(),
        };
        Ok((model, info))
    }
}

impl Blocks for Llama {
    fn attn_z(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &SeqCtx,
        hooks: &mut dyn LayerHooks,
    ) -> Result<Tensor, ModelError> {
        let l = &self.layers[layer];
        let (b, t, _) = x.dims3()?;
        let (h, kv, dh) = (self.n_heads, self.n_kv, self.d_head);
        let qkv = layers::dense(&l.qkv, &l.ln1.forward(x)?)?;
        let col = |w: Qkv, i: usize| match w {
            Qkv::Q => i * dh,
            Qkv::K => (h + i) * dh,
            Qkv::V => (h + kv + i) * dh,
        };
        let (per_query, rx): (Vec<_>, Vec<_>) = hooks
            .attn_inputs(layer, x)?
            .into_iter()
            .partition(|r| r.per_query);
        let qkv = edges::patch_qkv(qkv, &rx, dh, col, &l.qkv, |t| l.ln1.forward(t))?;
        let heads = |start: usize, n: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, start * dh, n * dh)?
                .reshape((b, t, n, dh))?
                .transpose(1, 2)
        };
        let (q, k, v) = (heads(0, h)?, heads(h, kv)?, heads(h + kv, kv)?);
        let (cos, sin) = ctx.rope.as_ref().expect("llama always has rotary tables");
        let (cos_q, sin_q) = ctx.rope_q.as_ref().expect("llama always has rotary tables");
        let q = layers::apply_rotary(&ctx.queries_of(&q, 2)?, cos_q, sin_q)?;
        let k = layers::apply_rotary(&k, cos, sin)?;
        // A query head's own key or value input: its key/value head's projection of that input.
        let group = h / kv;
        let per_head = per_query
            .into_iter()
            .map(|r| {
                let new = layers::dense_cols(
                    &l.qkv,
                    &l.ln1.forward(&r.input)?,
                    col(r.which, r.index / group),
                    dh,
                )?
                .reshape((b, t, 1, dh))?
                .transpose(1, 2)?;
                let new = match r.which {
                    Qkv::K => layers::apply_rotary(&new, cos, sin)?,
                    _ => new.contiguous()?,
                };
                Ok(layers::HeadKv {
                    which: r.which,
                    head: r.index,
                    new,
                    keep: r.keep,
                    put: r.put,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        layers::attention(layer, &q, k, v, &per_head, ctx, hooks)
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
        let b = x.dim(0)?;
        let (h, dh) = (self.n_heads, self.d_head);
        let z = self.hooked_z(layer, x, ctx, hooks)?;
        let tq = ctx.queries;
        let a = layers::dense(&l.o, &z.reshape((b, tq, h * dh))?)?;
        let x = (ctx.queries_of(x, 1)? + a)?;
        let m = self.hooked_mlp(layer, &x, hooks)?;
        Ok((x + m)?)
    }

    fn mlp_out(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        let gate_up = layers::dense(&l.gate_up, &l.ln2.forward(x)?)?;
        let f = gate_up.dim(2)? / 2;
        let gated = (self.act.forward(&gate_up.narrow(2, 0, f)?)? * gate_up.narrow(2, f, f)?)?;
        layers::dense(&l.down, &gated)
    }

    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.norm.forward(x)
    }

    fn unembed(&self) -> &Tensor {
        &self.lm_head
    }

    fn out_proj(&self, layer: usize) -> candle_core::Result<Tensor> {
        self.layers[layer].o.weight()
    }

    fn value_bias(&self, layer: usize) -> candle_core::Result<Option<Tensor>> {
        let (h, kv, dh) = (self.n_heads, self.n_kv, self.d_head);
        self.layers[layer]
            .qkv
            .bias()
            .map(|b| b.narrow(0, (h + kv) * dh, kv * dh)?.reshape((kv, dh)))
            .transpose()
    }

    fn value(&self, layer: usize, kv_head: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let l = &self.layers[layer];
        let (h, kv, dh) = (self.n_heads, self.n_kv, self.d_head);
        layers::dense_cols(&l.qkv, &l.ln1.forward(x)?, (h + kv + kv_head) * dh, dh)
    }
}
