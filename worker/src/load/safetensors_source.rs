//! Weights from memory-mapped safetensors files (one or sharded), by Hugging Face name.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::load_error::{LoadError, candle_reason};
use crate::weights::{LoadedCounter, WeightSource, check_shape};

/// Safetensors files of a Hugging Face folder, memory-mapped.
pub(crate) struct SafetensorsSource {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// The file to name when a tensor is in none of the files (the index, when sharded).
    catalogue: PathBuf,
    route: HashMap<String, usize>,
    dtype: DType,
    device: Device,
    counter: LoadedCounter,
}

impl SafetensorsSource {
    /// Opens `files` (each validated: a truncated file fails here, naming it); `catalogue` is
    /// the file that lists them (the shard index) or the single file itself.
    pub fn open(
        files: &[PathBuf],
        catalogue: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let mut opened = Vec::with_capacity(files.len());
        let mut route = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            if !path.exists() {
                return Err(LoadError::NotFound { path: path.clone() });
            }
            // SAFETY: the file is mapped read-only; like every mmap user we assume nobody
            // truncates it while the model is loaded.
            let st =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| LoadError::Safetensors {
                    file: path.clone(),
                    reason: candle_reason(&e),
                })?;
            for (name, _) in st.tensors() {
                route.insert(name, i);
            }
            opened.push((path.clone(), st));
        }
        Ok(SafetensorsSource {
            files: opened,
            catalogue: catalogue.to_path_buf(),
            route,
            dtype,
            device: device.clone(),
            counter: LoadedCounter::default(),
        })
    }

    /// Every tensor name in the files, sorted.
    pub fn names(&self) -> BTreeSet<&str> {
        self.route.keys().map(String::as_str).collect()
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let &i = self
            .route
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                file: self.catalogue.clone(),
                tensor: name.to_string(),
            })?;
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| LoadError::Safetensors {
            file: path.clone(),
            reason: format!("tensor `{name}`: {}", candle_reason(&e)),
        })?;
        use candle_core::safetensors::Load;
        let dt = view.dtype();
        if !matches!(
            dt,
            safetensors::Dtype::F32
                | safetensors::Dtype::F16
                | safetensors::Dtype::BF16
                | safetensors::Dtype::F64
        ) {
            return Err(LoadError::UnsupportedDtype {
                file: path.clone(),
                tensor: name.to_string(),
                dtype: format!("{dt:?}"),
            });
        }
        let t = view
            .load(&self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| LoadError::Safetensors {
                file: path.clone(),
                reason: format!("tensor `{name}`: {}", candle_reason(&e)),
            })?;
        check_shape(path, name, &t, shape)?;
        self.counter.record(name, &t);
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.route.contains_key(name)
    }

    fn loaded_elements(&self) -> u64 {
        self.counter.total()
    }
}
