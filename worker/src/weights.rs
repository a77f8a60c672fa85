//! Named weights as the models read them: the source trait each loader implements (safetensors,
//! GGUF), and the shape check and parameter count every source shares. Models depend on this,
//! never on the loader.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::load_error::LoadError;

/// A source of named weights, converted to the target dtype and device on `get`.
pub(crate) trait WeightSource {
    /// The tensor `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError>;
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// Elements of every distinct tensor handed out so far (the parameter count).
    fn loaded_elements(&self) -> u64;
}

/// Checks a loaded tensor's shape, naming the file and tensor on mismatch.
pub(crate) fn check_shape(
    file: &Path,
    name: &str,
    t: &Tensor,
    shape: &[usize],
) -> Result<(), LoadError> {
    if t.dims() != shape {
        return Err(LoadError::Shape {
            file: file.to_path_buf(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Counts distinct tensors handed out, for the parameter count.
#[derive(Default)]
pub(crate) struct LoadedCounter(RefCell<HashMap<String, u64>>);

impl LoadedCounter {
    pub fn record(&self, name: &str, t: &Tensor) {
        self.0
            .borrow_mut()
            .insert(name.to_string(), t.elem_count() as u64);
    }

    pub fn total(&self) -> u64 {
        self.0.borrow().values().sum()
    }
}
