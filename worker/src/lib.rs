//! The circuit-sweep worker: hooked transformer models written with candle ops (GPT-2, Llama
//! family, GPT-NeoX), their loaders (Hugging Face folders and GGUF files), tokenizers, the
//! default model, and the worker process (`fleet`: one agent per device, health, drain), which
//! the CLI only feeds with flags.

pub mod agent;
pub mod analysis;
pub mod default_model;
pub mod device;
pub mod downstream;
pub mod eval;
pub mod fleet;
pub mod gpu_memory;
pub mod health;
pub mod job;
mod json_file;
pub mod load;
pub mod load_error;
pub mod model;
pub mod model_access;
pub mod nccl;
pub mod profile;
pub mod random_model;
pub mod resident;
pub mod shard;
pub mod sweep;
pub mod tokenizer;
mod weights;

pub use eval::{Evaluator, PromptSet};
pub use load::{LoadOptions, LoadedModel, load_model, load_tokenizer};
pub use load_error::LoadError;
pub use model::{
    Activations, Architecture, Capture, Captured, HookedModel, Interventions, KvCache,
    LogitSelection, ModelError, ModelInfo, RunOutput, RunRequest, Start,
};
pub use tokenizer::PromptTokenizer;
