//! Models kept resident across shards and jobs: loaded once per (path, dtype), evicted least
//! recently used when the memory budget would be exceeded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use crate::load::{LoadError, LoadOptions, LoadedModel, load_model};

struct Entry {
    path: PathBuf,
    dtype: DType,
    model: Arc<LoadedModel>,
    bytes: u64,
    last_used: u64,
}

/// The resident models and a use counter (the clock of least-recent use).
#[derive(Default)]
struct Resident {
    entries: Vec<Entry>,
    ticks: u64,
}

/// A cache of loaded models shared by every shard a worker runs, all on one device.
pub struct ModelCache {
    budget_bytes: u64,
    device: Device,
    inner: Mutex<Resident>,
}

impl ModelCache {
    /// A cache holding models up to `budget_bytes` of weights in total (at least one model is
    /// always kept, however large), on the CPU.
    pub fn new(budget_bytes: u64) -> Self {
        Self::on(budget_bytes, Device::Cpu)
    }

    /// The same on `device`.
    pub fn on(budget_bytes: u64, device: Device) -> Self {
        ModelCache {
            budget_bytes,
            device,
            inner: Mutex::new(Resident::default()),
        }
    }

    /// The model at `path` in `dtype`, loading it if it is not resident.
    pub fn get(&self, path: &Path, dtype: DType) -> Result<Arc<LoadedModel>, LoadError> {
        {
            let mut g = self.inner.lock().expect("cache lock");
            g.ticks += 1;
            let tick = g.ticks;
            if let Some(e) = g
                .entries
                .iter_mut()
                .find(|e| e.path == path && e.dtype == dtype)
            {
                e.last_used = tick;
                return Ok(e.model.clone());
            }
        }
        // Load outside the lock: another shard may use a resident model meanwhile.
        let t0 = std::time::Instant::now();
        let loaded = load_model(
            path,
            &LoadOptions {
                dtype,
                device: self.device.clone(),
            },
        )?;
        let info = loaded.model.info();
        let bytes = info.parameters * dtype.size_in_bytes() as u64;
        tracing::info!(
            "loaded {} ({}, {} layers, {}) in {:.1} s",
            path.display(),
            info.architecture,
            info.n_layers,
            dtype.as_str(),
            t0.elapsed().as_secs_f64()
        );
        let model = Arc::new(loaded);
        let mut g = self.inner.lock().expect("cache lock");
        g.ticks += 1;
        let tick = g.ticks;
        if let Some(e) = g
            .entries
            .iter()
            .find(|e| e.path == path && e.dtype == dtype)
        {
            return Ok(e.model.clone());
        }
        // Evict least recently used models until the new one fits.
        let mut total: u64 = g.entries.iter().map(|e| e.bytes).sum();
        while !g.entries.is_empty() && total + bytes > self.budget_bytes {
            let lru = (0..g.entries.len())
                .min_by_key(|&i| g.entries[i].last_used)
                .expect("not empty");
            let e = g.entries.remove(lru);
            total -= e.bytes;
            tracing::info!(
                "evicted {} ({} MB) to make room",
                e.path.display(),
                e.bytes >> 20
            );
        }
        g.entries.push(Entry {
            path: path.to_path_buf(),
            dtype,
            model: model.clone(),
            bytes,
            last_used: tick,
        });
        Ok(model)
    }

    /// Resident models as `path (dtype)`.
    pub fn resident(&self) -> Vec<String> {
        let g = self.inner.lock().expect("cache lock");
        g.entries
            .iter()
            .map(|e| format!("{} ({})", e.path.display(), e.dtype.as_str()))
            .collect()
    }
}
