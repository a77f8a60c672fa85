//! The KV cache of generation: per layer, the keys (rotary applied) and values of every position
//! run so far, so each new token costs one position's work instead of the whole sequence's.

use std::sync::Mutex;

use candle_core::Tensor;

use super::ModelError;

/// Keys and values `[rows, kv_heads, positions, d_head]` per layer, filled by passes that name
/// the cache in [`super::RunRequest::cache`]. The first pass sets the rows (variants times
/// prompts); later passes give one row of new tokens each.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Mutex<Vec<Option<(Tensor, Tensor)>>>,
    len: Mutex<usize>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        *self.len.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows of the cached batch (0 when empty).
    pub fn rows(&self) -> usize {
        let layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers
            .iter()
            .flatten()
            .next()
            .map_or(0, |(k, _)| k.dims()[0])
    }

    /// Appends the keys and values of layer `layer`'s new positions and returns all of them.
    pub(crate) fn append(
        &self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        if layers.len() <= layer {
            layers.resize(layer + 1, None);
        }
        let (k, v) = match layers[layer].take() {
            None => (k, v),
            Some((ck, cv)) => {
                if ck.dims()[0] != k.dims()[0] {
                    return Err(ModelError::InvalidRequest(format!(
                        "the KV cache holds {} rows, the pass has {}",
                        ck.dims()[0],
                        k.dims()[0]
                    )));
                }
                (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?)
            }
        };
        layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that a pass added `n` positions.
    pub(crate) fn advance(&self, n: usize) {
        *self.len.lock().unwrap_or_else(|e| e.into_inner()) += n;
    }
}
