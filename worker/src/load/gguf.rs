//! GGUF files (llama.cpp's format): metadata to a Llama config, tensors dequantized exactly by
//! candle, llama.cpp's q/k row permutation undone, the tokenizer built from the metadata.

use std::cell::RefCell;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::{LoadError, LoadOptions};
use crate::load_error::candle_reason;
use crate::model::{HookedModel, Llama, LlamaConfig, RopeScaling};
use crate::tokenizer::PromptTokenizer;
use crate::weights::{LoadedCounter, WeightSource, check_shape};

/// An opened GGUF file.
pub(crate) struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: RefCell<BufReader<File>>,
}

impl GgufFile {
    /// Reads the header and metadata (tensor data stays on disk until asked for).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            let reason = candle_reason(&e);
            LoadError::Gguf {
                file: path.to_path_buf(),
                // The reader quotes the bytes it found: never echo a file's contents.
                reason: if reason.contains("magic") {
                    "not a GGUF file (it does not start with the GGUF magic and a supported version)"
                        .into()
                } else {
                    format!("not a readable GGUF file: {reason}")
                },
            }
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader: RefCell::new(reader),
        })
    }

    fn missing(&self, key: &str) -> LoadError {
        LoadError::Config {
            file: self.path.clone(),
            field: key.into(),
            reason: "missing from the GGUF metadata".into(),
        }
    }

    /// A metadata value.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A numeric metadata value as u64, whatever its stored integer type.
    pub fn uint(&self, key: &str) -> Result<Option<u64>, LoadError> {
        self.value(key)
            .map(|v| {
                number(v)
                    .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                    .map(|n| n as u64)
                    .ok_or_else(|| LoadError::Config {
                        file: self.path.clone(),
                        field: key.into(),
                        reason: format!("expected a non-negative integer, found {v:?}"),
                    })
            })
            .transpose()
    }

    /// A required numeric metadata value as usize.
    pub fn need_usize(&self, key: &str) -> Result<usize, LoadError> {
        self.uint(key)?
            .map(|n| n as usize)
            .ok_or_else(|| self.missing(key))
    }

    /// A numeric metadata value as f64.
    pub fn float(&self, key: &str) -> Result<Option<f64>, LoadError> {
        self.value(key)
            .map(|v| {
                number(v).ok_or_else(|| LoadError::Config {
                    file: self.path.clone(),
                    field: key.into(),
                    reason: format!("expected a number, found {v:?}"),
                })
            })
            .transpose()
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<Option<&str>, LoadError> {
        self.value(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(LoadError::Config {
                    file: self.path.clone(),
                    field: key.into(),
                    reason: format!("expected a string, found {:?}", other.value_type()),
                }),
            })
            .transpose()
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, LoadError> {
        let v = self.value(key).ok_or_else(|| self.missing(key))?;
        let bad = || LoadError::Config {
            file: self.path.clone(),
            field: key.into(),
            reason: "expected an array of strings".into(),
        };
        let arr = v.to_vec().map_err(|_| bad())?;
        arr.iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(bad()),
            })
            .collect()
    }

    /// An array of integers (token types).
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, LoadError> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let bad = || LoadError::Config {
            file: self.path.clone(),
            field: key.into(),
            reason: "expected an array of integers".into(),
        };
        let arr = v.to_vec().map_err(|_| bad())?;
        arr.iter()
            .map(|x| number(x).map(|n| n as i64).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Whether the file holds a tensor.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor dequantized to f32 (exactly: scale * q + min per block, as ggml defines).
    pub fn dequantize(&self, name: &str, device: &Device) -> Result<Tensor, LoadError> {
        if !self.has_tensor(name) {
            return Err(LoadError::MissingTensor {
                file: self.path.clone(),
                tensor: name.into(),
            });
        }
        let mut reader = self.reader.borrow_mut();
        let qt = self
            .content
            .tensor(&mut *reader, name, device)
            .map_err(|e| LoadError::Gguf {
                file: self.path.clone(),
                reason: format!("tensor `{name}`: {}", candle_reason(&e)),
            })?;
        qt.dequantize(device).map_err(|e| LoadError::Gguf {
            file: self.path.clone(),
            reason: format!(
                "dequantizing `{name}` ({:?}): {}",
                qt.dtype(),
                candle_reason(&e)
            ),
        })
    }
}

fn number(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// How a Hugging Face q/k weight was permuted by llama.cpp's converter.
#[derive(Clone, Copy)]
enum Permute {
    None,
    Heads(usize),
}

/// A GGUF file seen through Hugging Face Llama tensor names.
struct GgufLlamaSource<'a> {
    file: &'a GgufFile,
    n_heads: usize,
    n_kv: usize,
    dtype: DType,
    device: Device,
    counter: LoadedCounter,
}

impl GgufLlamaSource<'_> {
    /// The GGUF name of a Hugging Face Llama tensor, and the permutation to undo.
    fn map(&self, hf: &str) -> Option<(String, Permute)> {
        let simple = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(s) = simple {
            return Some((s.to_string(), Permute::None));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let (name, permute) = match module {
            "self_attn.q_proj" => ("attn_q", Permute::Heads(self.n_heads)),
            "self_attn.k_proj" => ("attn_k", Permute::Heads(self.n_kv)),
            "self_attn.v_proj" => ("attn_v", Permute::None),
            "self_attn.o_proj" => ("attn_output", Permute::None),
            "mlp.gate_proj" => ("ffn_gate", Permute::None),
            "mlp.up_proj" => ("ffn_up", Permute::None),
            "mlp.down_proj" => ("ffn_down", Permute::None),
            "input_layernorm" => ("attn_norm", Permute::None),
            "post_attention_layernorm" => ("ffn_norm", Permute::None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{name}.{kind}"), permute))
    }
}

/// Undoes llama.cpp's permutation of q/k rows: it stored each head's rows as interleaved
/// rotary pairs `(n, d/2, 2)`; Hugging Face's `rotate_half` layout is `(n, 2, d/2)`.
fn unpermute(t: Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    t.reshape((n_heads, rows / n_heads / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

impl WeightSource for GgufLlamaSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let (gname, permute) = self.map(name).ok_or_else(|| LoadError::MissingTensor {
            file: self.file.path.clone(),
            tensor: format!("{name} (no GGUF equivalent known)"),
        })?;
        let t = self.file.dequantize(&gname, &self.device)?;
        check_shape(&self.file.path, &gname, &t, shape)?;
        let t = match permute {
            Permute::Heads(n) => unpermute(t, n),
            Permute::None => Ok(t),
        }
        .and_then(|t| t.to_dtype(self.dtype))
        .map_err(|e| LoadError::tensor_op(&gname, e))?;
        self.counter.record(&gname, &t);
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.map(name)
            .is_some_and(|(g, _)| self.file.has_tensor(&g))
    }

    fn loaded_elements(&self) -> u64 {
        self.counter.total()
    }
}

/// GGUF metadata to a Llama config (the fields `transformers` would read from config.json).
fn llama_config(f: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let a = "llama";
    let key = |k: &str| format!("{a}.{k}");
    let n_heads = f.need_usize(&key("attention.head_count"))?;
    let d_model = f.need_usize(&key("embedding_length"))?;
    let vocab = match f.uint(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => f.strings("tokenizer.ggml.tokens")?.len(),
    };
    let theta = match f.float(&key("rope.freq_base"))? {
        Some(t) => t,
        None => {
            tracing::warn!(
                "{}: no {a}.rope.freq_base in the GGUF metadata: using 10000, llama.cpp's default",
                f.path.display()
            );
            10000.0
        }
    };
    let head_dim = f
        .uint(&key("attention.key_length"))?
        .or(f.uint(&key("rope.dimension_count"))?);
    let rope_scaling = match f.string(&key("rope.scaling.type"))? {
        None | Some("none") => None,
        Some(kind) => Some(RopeScaling {
            rope_type: Some(kind.to_string()),
            factor: f.float(&key("rope.scaling.factor"))?,
            original_max_position_embeddings: f
                .uint(&key("rope.scaling.original_context_length"))?
                .map(|n| n as usize),
            ..RopeScaling::default()
        }),
    };
    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: d_model,
        intermediate_size: f.need_usize(&key("feed_forward_length"))?,
        num_hidden_layers: f.need_usize(&key("block_count"))?,
        num_attention_heads: n_heads,
        num_key_value_heads: f.uint(&key("attention.head_count_kv"))?.map(|n| n as usize),
        head_dim: head_dim.map(|n| n as usize),
        rms_norm_eps: f
            .float(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| f.missing(&key("attention.layer_norm_rms_epsilon")))?,
        rope_theta: Some(theta),
        rope_scaling,
        rope_parameters: None,
        tie_word_embeddings: !f.has_tensor("output.weight"),
        max_position_embeddings: f.uint(&key("context_length"))?.map_or(2048, |n| n as usize),
        attention_bias: f.has_tensor("blk.0.attn_q.bias"),
        mlp_bias: f.has_tensor("blk.0.ffn_up.bias"),
        hidden_act: "silu".into(),
    })
}

/// Loads a GGUF model file and the tokenizer in its metadata.
pub(crate) fn load_file(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(HookedModel, Option<PromptTokenizer>), LoadError> {
    let f = GgufFile::open(path)?;
    let arch = f
        .string("general.architecture")?
        .ok_or_else(|| f.missing("general.architecture"))?;
    if arch != "llama" {
        return Err(LoadError::UnsupportedArchitecture {
            file: path.to_path_buf(),
            field: "general.architecture".into(),
            name: arch.into(),
            supported: "llama (GPT-2 and GPT-NeoX load from Hugging Face folders)".into(),
        });
    }
    let cfg = llama_config(&f)?;
    cfg.validate(path)?;
    // llama.cpp stores Llama-3 rotary scaling as per-frequency divisors.
    let freq_factors = if f.has_tensor("rope_freqs.weight") {
        let t = f.dequantize("rope_freqs.weight", &Device::Cpu)?;
        Some(
            t.to_vec1::<f32>()
                .map_err(|e| LoadError::tensor_op("rope_freqs.weight", e))?,
        )
    } else {
        None
    };
    let rotary = cfg.rotary(opts.dtype, &opts.device, freq_factors.as_deref());
    let source = GgufLlamaSource {
        file: &f,
        n_heads: cfg.num_attention_heads,
        n_kv: cfg.kv_heads(),
        dtype: opts.dtype,
        device: opts.device.clone(),
        counter: LoadedCounter::default(),
    };
    let (m, info) = Llama::load(&source, &cfg, rotary, opts.dtype, &opts.device)?;
    let model = HookedModel::new(info, Box::new(m), opts.device.clone());
    let tokenizer = match super::gguf_tokenizer::build(&f) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("{e}; the model loads without a tokenizer");
            None
        }
    };
    Ok((model, tokenizer))
}

impl GgufFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
