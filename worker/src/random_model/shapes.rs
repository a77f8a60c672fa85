//! Named shapes of real checkpoints (layers, widths, heads, vocabulary, context, rotary base),
//! with per-field overrides, and the Hugging Face `config.json` and tensor list of each.

use serde_json::{Value, json};

use crate::model::Architecture;

/// The shape of a model to make: everything but its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The preset it came from (`"custom"` once overridden fields make it another shape).
    pub name: String,
    /// Architecture family.
    pub architecture: Architecture,
    /// Blocks.
    pub layers: usize,
    /// Query heads per block.
    pub heads: usize,
    /// Key/value heads (Llama family; equal to `heads` elsewhere).
    pub kv_heads: usize,
    /// Residual width.
    pub d_model: usize,
    /// MLP hidden width.
    pub d_mlp: usize,
    /// Vocabulary (rows of the embedding).
    pub vocab: usize,
    /// Positions (learned positions of GPT-2, `max_position_embeddings` elsewhere).
    pub context: usize,
    /// Whether the unembedding is the embedding.
    pub tied: bool,
    /// Rotary base (Llama family and NeoX).
    pub rope_theta: f64,
}

/// Per-field changes to a preset (`model init --layers 2 ...`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub d_model: Option<usize>,
    pub d_mlp: Option<usize>,
    pub vocab: Option<usize>,
    pub context: Option<usize>,
}

impl Overrides {
    fn any(&self) -> bool {
        [
            self.layers,
            self.heads,
            self.kv_heads,
            self.d_model,
            self.d_mlp,
            self.vocab,
            self.context,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// The presets: name, then the published parameter count of the checkpoint (what `parameters`
/// must give), then the shape.
#[allow(clippy::type_complexity)]
const PRESETS: &[(&str, u64, Architecture, [usize; 7], bool, f64)] = {
    use Architecture::{Gpt2, GptNeox, Llama};
    // [layers, heads, kv_heads, d_model, d_mlp, vocab, context]
    &[
        (
            "gpt2-small",
            124_439_808,
            Gpt2,
            [12, 12, 12, 768, 3072, 50257, 1024],
            true,
            0.0,
        ),
        (
            "gpt2-medium",
            354_823_168,
            Gpt2,
            [24, 16, 16, 1024, 4096, 50257, 1024],
            true,
            0.0,
        ),
        (
            "gpt2-xl",
            1_557_611_200,
            Gpt2,
            [48, 25, 25, 1600, 6400, 50257, 1024],
            true,
            0.0,
        ),
        (
            "pythia-70m",
            70_426_624,
            GptNeox,
            [6, 8, 8, 512, 2048, 50304, 2048],
            false,
            10000.0,
        ),
        (
            "pythia-160m",
            162_322_944,
            GptNeox,
            [12, 12, 12, 768, 3072, 50304, 2048],
            false,
            10000.0,
        ),
        (
            "pythia-1.4b",
            1_414_647_808,
            GptNeox,
            [24, 16, 16, 2048, 8192, 50304, 2048],
            false,
            10000.0,
        ),
        (
            "smollm2-135m",
            134_515_008,
            Llama,
            [30, 9, 3, 576, 1536, 49152, 8192],
            true,
            100000.0,
        ),
        (
            "smollm2-360m",
            361_821_120,
            Llama,
            [32, 15, 5, 960, 2560, 49152, 8192],
            true,
            100000.0,
        ),
        (
            "smollm2-1.7b",
            1_711_376_384,
            Llama,
            [24, 32, 32, 2048, 8192, 49152, 8192],
            true,
            130000.0,
        ),
        (
            "llama-3.2-1b",
            1_235_814_400,
            Llama,
            [16, 32, 8, 2048, 8192, 128256, 131072],
            true,
            500000.0,
        ),
        (
            "llama-2-7b",
            6_738_415_616,
            Llama,
            [32, 32, 32, 4096, 11008, 32000, 4096],
            false,
            10000.0,
        ),
        (
            "llama-3-8b",
            8_030_261_248,
            Llama,
            [32, 32, 8, 4096, 14336, 128256, 8192],
            false,
            500000.0,
        ),
        (
            "llama-2-13b",
            13_015_864_320,
            Llama,
            [40, 40, 40, 5120, 13824, 32000, 4096],
            false,
            10000.0,
        ),
        (
            "llama-2-70b",
            68_976_648_192,
            Llama,
            [80, 64, 8, 8192, 28672, 32000, 4096],
            false,
            10000.0,
        ),
    ]
};

/// Names of the presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The published parameter count of a preset.
pub fn published_parameters(name: &str) -> Option<u64> {
    PRESETS.iter().find(|p| p.0 == name).map(|p| p.1)
}

/// Why a shape cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("unknown shape `{0}` (shapes: {list})", list = preset_names().join(", "))]
    Unknown(String),
    #[error("shape {name}: {why}")]
    Invalid { name: String, why: String },
}

impl Shape {
    /// A preset with `over` applied.
    pub fn preset(name: &str, over: &Overrides) -> Result<Shape, ShapeError> {
        let &(n, _, architecture, dims, tied, rope_theta) = PRESETS
            .iter()
            .find(|p| p.0 == name)
            .ok_or_else(|| ShapeError::Unknown(name.into()))?;
        let [layers, heads, kv_heads, d_model, d_mlp, vocab, context] = dims;
        let heads_changed = over.heads.is_some();
        let mut s = Shape {
            name: if over.any() {
                format!("{n} (custom)")
            } else {
                n.into()
            },
            architecture,
            layers: over.layers.unwrap_or(layers),
            heads: over.heads.unwrap_or(heads),
            // Only the Llama family groups query heads; changing the heads alone keeps them
            // ungrouped unless the preset grouped them.
            kv_heads: over
                .kv_heads
                .unwrap_or(if heads_changed && kv_heads == heads {
                    over.heads.unwrap_or(heads)
                } else {
                    kv_heads
                }),
            d_model: over.d_model.unwrap_or(d_model),
            d_mlp: over.d_mlp.unwrap_or(d_mlp),
            vocab: over.vocab.unwrap_or(vocab),
            context: over.context.unwrap_or(context),
            tied,
            rope_theta,
        };
        if over.d_model.is_some() && over.d_mlp.is_none() {
            // Keep the preset's MLP ratio.
            s.d_mlp = d_mlp * s.d_model / d_model;
        }
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ShapeError> {
        let bad = |why: String| {
            Err(ShapeError::Invalid {
                name: self.name.clone(),
                why,
            })
        };
        if [
            self.layers,
            self.heads,
            self.kv_heads,
            self.d_model,
            self.d_mlp,
        ]
        .contains(&0)
        {
            return bad("layers, heads, widths must be at least 1".into());
        }
        if self.vocab < 256 {
            return bad(format!(
                "a vocabulary of {} cannot hold the tokenizer's 256 byte tokens",
                self.vocab
            ));
        }
        if self.context < 2 {
            return bad("the context must hold at least 2 positions".into());
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return bad(format!(
                "d_model {} is not a multiple of {} heads",
                self.d_model, self.heads
            ));
        }
        if self.architecture != Architecture::Llama && self.kv_heads != self.heads {
            return bad(format!(
                "{} has no grouped keys and values (kv heads {} != heads {})",
                self.architecture, self.kv_heads, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads do not split into {} key/value groups",
                self.heads, self.kv_heads
            ));
        }
        let d_head = self.d_model / self.heads;
        // Rotary turns pairs of features: all of a Llama head's, a quarter of a NeoX head's.
        let (rotated, whole) = match self.architecture {
            // Learned positions: nothing turns.
            Architecture::Gpt2 => (2, true),
            Architecture::Llama => (d_head, true),
            Architecture::GptNeox => (d_head / 4, d_head.is_multiple_of(4)),
        };
        if !(whole && rotated > 0 && rotated.is_multiple_of(2)) {
            return bad(format!(
                "rotary turns pairs of features, and a head width of {d_head} gives {} to turn",
                if self.architecture == Architecture::GptNeox {
                    format!("{} (a quarter)", d_head as f64 / 4.0)
                } else {
                    d_head.to_string()
                }
            ));
        }
        Ok(())
    }

    /// Width of a head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.heads
    }

    /// Every tensor of the checkpoint: name, shape, and whether it is a norm's scale (ones),
    /// a bias or norm offset (zeros) or a weight (random).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Fill)> {
        let (d, f, v, dh) = (self.d_model, self.d_mlp, self.vocab, self.d_head());
        let (h, kv) = (self.heads, self.kv_heads);
        let mut t: Vec<(String, Vec<usize>, Fill)> = vec![];
        let mut push = |name: String, shape: Vec<usize>, fill: Fill| t.push((name, shape, fill));
        match self.architecture {
            Architecture::Gpt2 => {
                push("transformer.wte.weight".into(), vec![v, d], Fill::Random);
                push(
                    "transformer.wpe.weight".into(),
                    vec![self.context, d],
                    Fill::Random,
                );
                for l in 0..self.layers {
                    let p = format!("transformer.h.{l}");
                    for ln in ["ln_1", "ln_2"] {
                        push(format!("{p}.{ln}.weight"), vec![d], Fill::Ones);
                        push(format!("{p}.{ln}.bias"), vec![d], Fill::Zeros);
                    }
                    // Conv1D: `[in, out]`.
                    for (name, i, o) in [
                        ("attn.c_attn", d, 3 * d),
                        ("attn.c_proj", d, d),
                        ("mlp.c_fc", d, f),
                        ("mlp.c_proj", f, d),
                    ] {
                        push(format!("{p}.{name}.weight"), vec![i, o], Fill::Random);
                        push(format!("{p}.{name}.bias"), vec![o], Fill::Zeros);
                    }
                }
                push("transformer.ln_f.weight".into(), vec![d], Fill::Ones);
                push("transformer.ln_f.bias".into(), vec![d], Fill::Zeros);
            }
            Architecture::GptNeox => {
                push("gpt_neox.embed_in.weight".into(), vec![v, d], Fill::Random);
                for l in 0..self.layers {
                    let p = format!("gpt_neox.layers.{l}");
                    for ln in ["input_layernorm", "post_attention_layernorm"] {
                        push(format!("{p}.{ln}.weight"), vec![d], Fill::Ones);
                        push(format!("{p}.{ln}.bias"), vec![d], Fill::Zeros);
                    }
                    for (name, o, i) in [
                        ("attention.query_key_value", 3 * d, d),
                        ("attention.dense", d, d),
                        ("mlp.dense_h_to_4h", f, d),
                        ("mlp.dense_4h_to_h", d, f),
                    ] {
                        push(format!("{p}.{name}.weight"), vec![o, i], Fill::Random);
                        push(format!("{p}.{name}.bias"), vec![o], Fill::Zeros);
                    }
                }
                push(
                    "gpt_neox.final_layer_norm.weight".into(),
                    vec![d],
                    Fill::Ones,
                );
                push(
                    "gpt_neox.final_layer_norm.bias".into(),
                    vec![d],
                    Fill::Zeros,
                );
                if !self.tied {
                    push("embed_out.weight".into(), vec![v, d], Fill::Random);
                }
            }
            Architecture::Llama => {
                push("model.embed_tokens.weight".into(), vec![v, d], Fill::Random);
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}");
                    push(format!("{p}.input_layernorm.weight"), vec![d], Fill::Ones);
                    push(
                        format!("{p}.post_attention_layernorm.weight"),
                        vec![d],
                        Fill::Ones,
                    );
                    for (name, o, i) in [
                        ("self_attn.q_proj", h * dh, d),
                        ("self_attn.k_proj", kv * dh, d),
                        ("self_attn.v_proj", kv * dh, d),
                        ("self_attn.o_proj", d, h * dh),
                        ("mlp.gate_proj", f, d),
                        ("mlp.up_proj", f, d),
                        ("mlp.down_proj", d, f),
                    ] {
                        push(format!("{p}.{name}.weight"), vec![o, i], Fill::Random);
                    }
                }
                push("model.norm.weight".into(), vec![d], Fill::Ones);
                if !self.tied {
                    push("lm_head.weight".into(), vec![v, d], Fill::Random);
                }
            }
        }
        t
    }

    /// Parameters of the checkpoint (every tensor's elements; GPT-2's fixed causal-mask
    /// buffers are not parameters).
    pub fn parameters(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>() as u64)
            .sum()
    }

    /// `config.json` as `transformers` writes it for this architecture (the token ids of
    /// the tokenizer are added by whoever writes the tokenizer).
    pub fn config(&self, torch_dtype: &str) -> Value {
        match self.architecture {
            Architecture::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "n_layer": self.layers, "n_head": self.heads, "n_embd": self.d_model,
                "n_inner": self.d_mlp, "vocab_size": self.vocab, "n_positions": self.context,
                "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
                "initializer_range": 0.02, "tie_word_embeddings": true,
                "torch_dtype": torch_dtype,
            }),
            Architecture::GptNeox => json!({
                "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "hidden_size": self.d_model, "intermediate_size": self.d_mlp,
                "vocab_size": self.vocab, "max_position_embeddings": self.context,
                "rotary_pct": 0.25, "rotary_emb_base": self.rope_theta,
                "use_parallel_residual": true, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
                "attention_bias": true, "tie_word_embeddings": self.tied,
                "initializer_range": 0.02,
                "torch_dtype": torch_dtype,
            }),
            Architecture::Llama => json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "head_dim": self.d_head(),
                "hidden_size": self.d_model, "intermediate_size": self.d_mlp,
                "vocab_size": self.vocab, "max_position_embeddings": self.context,
                "rope_theta": self.rope_theta, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": self.tied,
                "initializer_range": 0.02,
                "torch_dtype": torch_dtype,
            }),
        }
    }
}

/// What a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Independent normal draws with the initializer's standard deviation.
    Random,
    /// A norm's scale.
    Ones,
    /// A bias or a norm's offset.
    Zeros,
}
