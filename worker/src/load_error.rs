//! The error of loading a model or tokenizer, shared by the loader, the models' weight
//! readers and the tokenizer (so none of them depends on another for it).

use std::path::PathBuf;

/// Why a model could not be loaded. Every variant names the file, and the tensor or field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("{path}: no such file or folder")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder lacks a file the format requires.
    #[error("{dir}: missing `{file}` ({why})")]
    MissingFile {
        /// The model folder.
        dir: PathBuf,
        /// The file name expected in it.
        file: String,
        /// What the file is for.
        why: String,
    },
    /// A configuration file is malformed or has a bad value.
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        /// The configuration file (or GGUF file for GGUF metadata).
        file: PathBuf,
        /// The field (JSON key or GGUF metadata key).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The architecture is not one this engine implements.
    #[error("{file}: field `{field}`: unsupported architecture `{name}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The file that names it.
        file: PathBuf,
        /// The field that names it (`model_type` or `general.architecture`).
        field: String,
        /// The architecture named.
        name: String,
        /// What is supported.
        supported: String,
    },
    /// A weight the architecture needs is absent.
    #[error("{file}: missing tensor `{tensor}`")]
    MissingTensor {
        /// Where it was looked for.
        file: PathBuf,
        /// The tensor name.
        tensor: String,
    },
    /// A weight has the wrong shape for the configuration.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// The file holding the tensor.
        file: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// A safetensors file is truncated or malformed.
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A GGUF file is truncated or malformed, or a tensor in it cannot be read.
    #[error("{file}: {reason}")]
    Gguf {
        /// The file.
        file: PathBuf,
        /// What went wrong, naming the tensor or key where there is one.
        reason: String,
    },
    /// A tensor's dtype cannot be loaded.
    #[error("{file}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// The tokenizer could not be built.
    #[error("{file}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file (or GGUF file).
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A configuration or index file is not valid JSON.
    #[error("{file}: invalid JSON: {reason}")]
    Json {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        reason: String,
    },
    /// A tensor operation failed while preparing weights.
    #[error("preparing `{tensor}`: {reason}")]
    TensorOp {
        /// The tensor being prepared.
        tensor: String,
        /// candle's message.
        reason: String,
    },
}

impl LoadError {
    pub(crate) fn tensor_op(tensor: &str, source: candle_core::Error) -> Self {
        LoadError::TensorOp {
            tensor: tensor.to_string(),
            reason: candle_reason(&source),
        }
    }
}

/// candle's message without the backtrace and path wrappers it may add (our errors name the
/// file themselves, and a backtrace buries the one line a user needs).
pub(crate) fn candle_reason(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::WithPath { inner, .. } => candle_reason(inner),
        other => other.to_string(),
    }
}
