//! Per-sequence-length state of a forward pass: the causal mask and the rotary tables, built
//! once per length and kept, since a sweep runs thousands of passes at a few lengths.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

/// Per-sequence-length state shared by all blocks of one forward pass.
///
/// Blocks compute keys and values at every position of their input but queries (and everything
/// after the attention) only at the last `queries` positions: all of them normally, only the
/// last in the final block when nothing but last-position logits is needed. With a KV cache the
/// input holds only the new positions; the keys and values of the `cached` earlier ones come
/// from the cache.
#[derive(Clone)]
pub(crate) struct SeqCtx {
    /// Positions in the sequence, cached ones included.
    pub seq_len: usize,
    /// Trailing positions whose queries, MLP and output are computed.
    pub queries: usize,
    /// Leading positions whose keys and values come from a KV cache (not in the input).
    pub cached: usize,
    /// Additive causal mask `[queries, T]` in f32 (0 where a query may attend, -inf after it).
    pub mask: Tensor,
    /// Rotary `cos` and `sin` tables `[T - cached, rotary_dim / 2]` in the model dtype (for
    /// the keys of the input's positions).
    pub rope: Option<(Tensor, Tensor)>,
    /// The rows of the tables for the query positions.
    pub rope_q: Option<(Tensor, Tensor)>,
}

impl SeqCtx {
    /// Builds the mask, and the rotary tables when `rotary` is given.
    pub fn new(
        seq_len: usize,
        rotary: Option<&Rotary>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mask: Vec<f32> = (0..seq_len)
            .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (seq_len, seq_len), device)?;
        let rope = rotary.map(|r| r.tables(seq_len)).transpose()?;
        Ok(SeqCtx {
            seq_len,
            queries: seq_len,
            cached: 0,
            mask,
            rope_q: rope.clone(),
            rope,
        })
    }

    /// Elements of the mask and rotary tables (`rope_q` shares the tables' storage here).
    fn elements(&self) -> usize {
        let rope = self
            .rope
            .as_ref()
            .map_or(0, |(c, s)| c.elem_count() + s.elem_count());
        self.mask.elem_count() + rope
    }

    /// The same context computing only the last `n` positions' queries and outputs.
    pub fn tail(&self, n: usize) -> candle_core::Result<Self> {
        let t = self.seq_len;
        let last = |(c, s): &(Tensor, Tensor)| -> candle_core::Result<(Tensor, Tensor)> {
            let rows = c.dim(0)?;
            Ok((
                c.narrow(0, rows - n, n)?.contiguous()?,
                s.narrow(0, rows - n, n)?.contiguous()?,
            ))
        };
        Ok(SeqCtx {
            seq_len: t,
            queries: n,
            cached: self.cached,
            mask: self
                .mask
                .narrow(0, self.mask.dim(0)? - n, n)?
                .contiguous()?,
            rope: self.rope.clone(),
            rope_q: self.rope.as_ref().map(last).transpose()?,
        })
    }

    /// The same context computing only the last position's queries and outputs.
    pub fn last_query(&self) -> candle_core::Result<Self> {
        self.tail(1)
    }

    /// The context of a pass whose input holds only the last `new` positions, the earlier
    /// ones being in a KV cache.
    pub fn with_cache(&self, new: usize) -> candle_core::Result<Self> {
        let mut c = self.tail(new)?;
        c.cached = self.seq_len - new;
        c.rope = c.rope_q.clone();
        Ok(c)
    }

    /// The query positions of `x` (`[B, T, ..]` with positions in dim `dim`), contiguous:
    /// candle's norms take another (differently rounded) path on strided input, and whether a
    /// narrowed view is strided depends on the batch size.
    pub fn queries_of(&self, x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
        let n = x.dim(dim)?;
        if n == self.queries {
            Ok(x.clone())
        } else {
            x.narrow(dim, n - self.queries, self.queries)?.contiguous()
        }
    }
}

/// Rotary position embedding frequencies (Hugging Face's `rotate_half` layout).
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    inv_freq: Vec<f32>,
    dtype: DType,
    device: Device,
}

impl Rotary {
    /// Plain frequencies `1 / theta^(2i / dim)`, computed in f32 as `transformers` does.
    pub fn new(dim: usize, theta: f64, dtype: DType, device: &Device) -> Self {
        let base = theta as f32;
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        Rotary {
            inv_freq,
            dtype,
            device: device.clone(),
        }
    }

    /// The frequencies, for scaling.
    pub fn inv_freq_mut(&mut self) -> &mut Vec<f32> {
        &mut self.inv_freq
    }

    /// `cos` and `sin` tables for positions `0..seq_len`.
    fn tables(&self, seq_len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for t in 0..seq_len {
            for &f in &self.inv_freq {
                let a = t as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq_len, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (seq_len, half), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }
}

/// Elements the cached contexts may hold together (64 MiB of f32): long prompts or the growing
/// lengths of generation must not pile up masks.
const CACHED_ELEMENTS: usize = 1 << 24;

/// Contexts already built, by sequence length, oldest first. A model has one device and dtype,
/// so the length alone decides a context.
#[derive(Default)]
pub(crate) struct SeqCtxCache(Mutex<Vec<(usize, SeqCtx)>>);

impl SeqCtxCache {
    /// The context for `seq_len`, built by `build` the first time.
    pub fn get_or_build(
        &self,
        seq_len: usize,
        build: impl FnOnce(usize) -> candle_core::Result<SeqCtx>,
    ) -> candle_core::Result<SeqCtx> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ctx)) = cached.iter().find(|(n, _)| *n == seq_len) {
            return Ok(ctx.clone());
        }
        let ctx = build(seq_len)?;
        let size = ctx.elements();
        if size <= CACHED_ELEMENTS {
            while cached.iter().map(|(_, c)| c.elements()).sum::<usize>() + size > CACHED_ELEMENTS {
                cached.remove(0);
            }
            cached.push((seq_len, ctx.clone()));
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn contexts_are_built_once_per_length_within_the_bound() {
        let dev = Device::Cpu;
        let rotary = Rotary::new(8, 10000.0, DType::F32, &dev);
        let cache = SeqCtxCache::default();
        let builds = Cell::new(0);
        let get = |n: usize| {
            cache
                .get_or_build(n, |n| {
                    builds.set(builds.get() + 1);
                    SeqCtx::new(n, Some(&rotary), &dev)
                })
                .unwrap()
        };
        let kept = get(5);
        let again = get(5);
        assert_eq!(builds.get(), 1);
        // Bit for bit what a fresh build gives.
        let tables = |c: &SeqCtx| {
            let (cos, sin) = c.rope.clone().unwrap();
            [c.mask.clone(), cos, sin].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let fresh = tables(&SeqCtx::new(5, Some(&rotary), &dev).unwrap());
        assert_eq!(tables(&kept), fresh);
        assert_eq!(tables(&again), fresh);
        // A mask over the bound is built each time and evicts nothing.
        get(1 << 12);
        get(1 << 12);
        assert_eq!(builds.get(), 3);
        get(5);
        assert_eq!(builds.get(), 3);
        // Four masks of about 2^22 elements do not fit together: the oldest goes.
        for n in [2048, 2049, 2050, 2051] {
            get(n);
        }
        assert_eq!(builds.get(), 7);
        get(2051);
        assert_eq!(builds.get(), 7);
        get(5);
        assert_eq!(builds.get(), 8);
    }
}
