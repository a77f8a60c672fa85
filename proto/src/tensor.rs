//! Score tensors on the wire: raw little-endian bytes with a dtype and a shape, cut into chunks
//! of at most [`MAX_CHUNK_BYTES`], and reassembled with every check a receiver needs (offsets,
//! lengths, shapes, finite values) before anything is stored.

use crate::v1::{Dtype, ResultChunk, TensorChunk};

/// Largest `data` of one chunk.
pub const MAX_CHUNK_BYTES: usize = 2 << 20;

/// A whole tensor: name, dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    /// Name, unique within one shard result.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (`[bytes]` for JSON).
    pub shape: Vec<u64>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

/// Why a tensor or a stream of chunks is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    /// Bytes do not match the shape and dtype.
    #[error("tensor `{name}`: {got} bytes, but shape {shape:?} of {dtype:?} needs {want}")]
    Length {
        /// Tensor.
        name: String,
        /// Received bytes.
        got: u64,
        /// Bytes the shape needs.
        want: u64,
        /// Shape.
        shape: Vec<u64>,
        /// Dtype.
        dtype: Dtype,
    },
    /// A chunk does not continue the tensor where the previous one ended.
    #[error("tensor `{name}`: chunk at byte {offset}, expected byte {expected}")]
    Offset {
        /// Tensor.
        name: String,
        /// Offset of the chunk.
        offset: u64,
        /// Where it should start.
        expected: u64,
    },
    /// Chunks of one tensor disagree on dtype, shape or total size.
    #[error("tensor `{0}`: chunks disagree on dtype, shape or total size")]
    Inconsistent(String),
    /// A chunk larger than the limit.
    #[error("tensor `{name}`: chunk of {bytes} bytes exceeds the limit of {MAX_CHUNK_BYTES}")]
    ChunkTooLarge {
        /// Tensor.
        name: String,
        /// Chunk size.
        bytes: usize,
    },
    /// A float that is NaN or infinite.
    #[error("tensor `{name}`: element {index} is {value} (scores must be finite)")]
    NotFinite {
        /// Tensor.
        name: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// An unknown or unspecified dtype.
    #[error("tensor `{0}`: unspecified or unsupported dtype")]
    Dtype(String),
    /// The stream ended inside a tensor, or a tensor name came twice.
    #[error("{0}")]
    Stream(String),
    /// The result would take more bytes than its shard can produce.
    #[error(
        "tensor `{name}`: the result would take {bytes} bytes, over the limit of {limit} bytes for its shard"
    )]
    OverLimit {
        /// Tensor.
        name: String,
        /// Bytes the result would take with this tensor.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Not the expected type.
    #[error("tensor `{name}`: {why}")]
    Decode {
        /// Tensor.
        name: String,
        /// What was wrong.
        why: String,
    },
}

/// Bytes per element (1 for JSON text).
pub fn dtype_size(d: Dtype) -> Option<u64> {
    Some(match d {
        Dtype::F32 | Dtype::U32 => 4,
        Dtype::F16 | Dtype::Bf16 => 2,
        Dtype::I64 | Dtype::F64 => 8,
        Dtype::U8 | Dtype::Json => 1,
        Dtype::Unspecified => return None,
    })
}

impl WireTensor {
    /// An f64 tensor.
    pub fn f64(name: &str, shape: &[usize], values: &[f64]) -> Self {
        WireTensor {
            name: name.into(),
            dtype: Dtype::F64,
            shape: shape.iter().map(|&d| d as u64).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// JSON text as a `[bytes]` tensor.
    pub fn json(name: &str, text: String) -> Self {
        WireTensor {
            name: name.into(),
            dtype: Dtype::Json,
            shape: vec![text.len() as u64],
            data: text.into_bytes(),
        }
    }

    /// Checks length against shape and that floats are finite.
    pub fn validate(&self) -> Result<(), TensorError> {
        let size = dtype_size(self.dtype).ok_or_else(|| TensorError::Dtype(self.name.clone()))?;
        let want = byte_len(&self.shape, size);
        if want != Some(self.data.len() as u64) {
            return Err(TensorError::Length {
                name: self.name.clone(),
                got: self.data.len() as u64,
                want: want.unwrap_or(u64::MAX),
                shape: self.shape.clone(),
                dtype: self.dtype,
            });
        }
        let bad = |index: usize, value: f64| TensorError::NotFinite {
            name: self.name.clone(),
            index,
            value,
        };
        match self.dtype {
            Dtype::F64 => {
                for (i, c) in self.data.chunks_exact(8).enumerate() {
                    let v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
                    if !v.is_finite() {
                        return Err(bad(i, v));
                    }
                }
            }
            Dtype::F32 => {
                for (i, c) in self.data.chunks_exact(4).enumerate() {
                    let v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                    if !v.is_finite() {
                        return Err(bad(i, v as f64));
                    }
                }
            }
            Dtype::Json => {
                std::str::from_utf8(&self.data).map_err(|e| TensorError::Decode {
                    name: self.name.clone(),
                    why: format!("not UTF-8: {e}"),
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The values of an f64 tensor with the given shape.
    pub fn to_f64(&self, shape: &[usize]) -> Result<Vec<f64>, TensorError> {
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if self.dtype != Dtype::F64 || self.shape != want {
            return Err(TensorError::Decode {
                name: self.name.clone(),
                why: format!(
                    "expected f64 of shape {want:?}, got {:?} of shape {:?}",
                    self.dtype, self.shape
                ),
            });
        }
        self.validate()?;
        Ok(self
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// The text of a JSON tensor.
    pub fn to_json_text(&self) -> Result<&str, TensorError> {
        if self.dtype != Dtype::Json {
            return Err(TensorError::Decode {
                name: self.name.clone(),
                why: format!("expected JSON, got {:?}", self.dtype),
            });
        }
        std::str::from_utf8(&self.data).map_err(|e| TensorError::Decode {
            name: self.name.clone(),
            why: format!("not UTF-8: {e}"),
        })
    }

    /// The tensor as chunks of at most `max` bytes (at least one chunk, even when empty).
    pub fn chunks(&self, max: usize) -> Vec<TensorChunk> {
        let max = max.clamp(1, MAX_CHUNK_BYTES);
        let total = self.data.len() as u64;
        let mk = |offset: usize, data: &[u8]| TensorChunk {
            name: self.name.clone(),
            dtype: self.dtype as i32,
            shape: self.shape.clone(),
            offset: offset as u64,
            data: data.to_vec(),
            total_bytes: total,
        };
        if self.data.is_empty() {
            return vec![mk(0, &[])];
        }
        self.data
            .chunks(max)
            .enumerate()
            .map(|(i, c)| mk(i * max, c))
            .collect()
    }
}

/// Longest tensor name (names are short words such as `heads`).
pub const MAX_NAME_BYTES: usize = 256;

/// Most dimensions of a tensor.
pub const MAX_DIMS: usize = 8;

/// Most tensors in one result (a shard sends two at most).
pub const MAX_TENSORS: usize = 64;

/// What a tensor counts against an [`Assembler`]'s limit besides its data and name.
const TENSOR_OVERHEAD: u64 = 64;

/// Bytes of a tensor of `shape` and elements of `size` bytes; `None` when it overflows.
fn byte_len(shape: &[u64], size: u64) -> Option<u64> {
    shape.iter().try_fold(size, |n, &d| n.checked_mul(d))
}

/// Reassembles tensors from chunks, in order, refusing anything inconsistent and anything past
/// its limit before buffering it.
#[derive(Debug)]
pub struct Assembler {
    done: Vec<WireTensor>,
    open: Option<(WireTensor, u64)>,
    /// Most bytes accepted: data, plus names and a fixed overhead per tensor.
    limit: u64,
    /// Bytes counted so far, declared sizes included.
    used: u64,
}

impl Assembler {
    /// An assembler that accepts at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Assembler {
            done: vec![],
            open: None,
            limit,
            used: 0,
        }
    }

    /// Adds the next chunk.
    pub fn push(&mut self, c: TensorChunk) -> Result<(), TensorError> {
        if c.name.len() > MAX_NAME_BYTES {
            return Err(TensorError::Stream(format!(
                "a tensor name of {} bytes exceeds {MAX_NAME_BYTES}",
                c.name.len()
            )));
        }
        if c.data.len() > MAX_CHUNK_BYTES {
            return Err(TensorError::ChunkTooLarge {
                name: c.name,
                bytes: c.data.len(),
            });
        }
        let dtype = Dtype::try_from(c.dtype).map_err(|_| TensorError::Dtype(c.name.clone()))?;
        let size = dtype_size(dtype).ok_or_else(|| TensorError::Dtype(c.name.clone()))?;
        let continues = matches!(&self.open, Some((t, _)) if t.name == c.name);
        if !continues {
            self.close()?;
            self.open(&c, dtype, size)?;
        }
        let (t, total) = self.open.as_mut().expect("opened above");
        if t.dtype != dtype || t.shape != c.shape || *total != c.total_bytes {
            return Err(TensorError::Inconsistent(c.name));
        }
        if c.offset != t.data.len() as u64 {
            return Err(TensorError::Offset {
                name: c.name,
                offset: c.offset,
                expected: t.data.len() as u64,
            });
        }
        if c.data.is_empty() && *total > 0 {
            // Honest senders never send one; endless empty chunks would cost without limit.
            return Err(TensorError::Stream(format!(
                "tensor `{}`: an empty chunk",
                c.name
            )));
        }
        if t.data.len() as u64 + c.data.len() as u64 > *total {
            return Err(TensorError::Length {
                name: c.name,
                got: t.data.len() as u64 + c.data.len() as u64,
                want: *total,
                shape: c.shape,
                dtype,
            });
        }
        t.data.extend_from_slice(&c.data);
        Ok(())
    }

    /// Starts the tensor of chunk `c`, counting its declared size against the limit.
    fn open(&mut self, c: &TensorChunk, dtype: Dtype, size: u64) -> Result<(), TensorError> {
        if self.done.iter().any(|t| t.name == c.name) {
            return Err(TensorError::Stream(format!(
                "tensor `{}` sent twice",
                c.name
            )));
        }
        if self.done.len() >= MAX_TENSORS || c.shape.len() > MAX_DIMS {
            return Err(TensorError::Stream(format!(
                "tensor `{}`: more than {MAX_TENSORS} tensors or {MAX_DIMS} dimensions",
                c.name
            )));
        }
        let want = byte_len(&c.shape, size).ok_or_else(|| {
            TensorError::Stream(format!(
                "tensor `{}`: shape {:?} overflows",
                c.name, c.shape
            ))
        })?;
        if want != c.total_bytes {
            return Err(TensorError::Length {
                name: c.name.clone(),
                got: c.total_bytes,
                want,
                shape: c.shape.clone(),
                dtype,
            });
        }
        let used = self
            .used
            .saturating_add(TENSOR_OVERHEAD + c.name.len() as u64)
            .saturating_add(want);
        if used > self.limit {
            return Err(TensorError::OverLimit {
                name: c.name.clone(),
                bytes: used,
                limit: self.limit,
            });
        }
        self.used = used;
        let t = WireTensor {
            name: c.name.clone(),
            dtype,
            shape: c.shape.clone(),
            // Grows with the bytes that arrive: a stream holds only what it sent.
            data: Vec::with_capacity(want.min(MAX_CHUNK_BYTES as u64) as usize),
        };
        self.open = Some((t, want));
        Ok(())
    }

    fn close(&mut self) -> Result<(), TensorError> {
        if let Some((t, _)) = self.open.take() {
            t.validate()?;
            self.done.push(t);
        }
        Ok(())
    }

    /// The complete, validated tensors.
    pub fn finish(mut self) -> Result<Vec<WireTensor>, TensorError> {
        self.close()?;
        Ok(self.done)
    }
}

/// The messages of a result stream of `lease` held by `worker`: every message names the lease,
/// and the last one says so (a stream that ends without it is refused as incomplete). It owns
/// what it needs, so a request can take it past the caller's borrows.
pub fn result_messages(
    worker: &str,
    lease: &str,
    chunks: Vec<TensorChunk>,
) -> impl Iterator<Item = ResultChunk> + use<> {
    let n = chunks.len();
    let (worker, lease) = (worker.to_string(), lease.to_string());
    chunks
        .into_iter()
        .enumerate()
        .map(move |(i, chunk)| ResultChunk {
            worker_id: worker.clone(),
            lease_id: lease.clone(),
            chunk: Some(chunk),
            last: i + 1 == n,
        })
}

/// Finds a tensor by name.
pub fn find<'a>(ts: &'a [WireTensor], name: &str) -> Result<&'a WireTensor, TensorError> {
    ts.iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TensorError::Stream(format!("the result has no tensor `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(ts: &[WireTensor], max: usize) -> Result<Vec<WireTensor>, TensorError> {
        let mut a = Assembler::new(u64::MAX);
        for t in ts {
            for c in t.chunks(max) {
                a.push(c)?;
            }
        }
        a.finish()
    }

    #[test]
    fn tensors_survive_chunking() {
        let vals: Vec<f64> = (0..1000).map(|i| i as f64 * 0.5 - 3.0).collect();
        let ts = vec![
            WireTensor::f64("heads", &[100, 10], &vals),
            WireTensor::json("runs", "[{\"a\": 1}]".into()),
            WireTensor::f64("empty", &[0], &[]),
        ];
        for max in [1, 7, 8, 64, MAX_CHUNK_BYTES] {
            assert_eq!(roundtrip(&ts, max).unwrap(), ts, "chunks of {max}");
        }
        assert_eq!(
            roundtrip(&ts, 8).unwrap()[0].to_f64(&[100, 10]).unwrap(),
            vals
        );
    }

    #[test]
    fn bad_streams_are_refused_with_the_reason() {
        let t = WireTensor::f64("s", &[4], &[1.0, 2.0, 3.0, 4.0]);
        // Wrong total for the shape.
        let mut c = t.chunks(64).remove(0);
        c.shape = vec![5];
        let e = Assembler::new(u64::MAX).push(c).unwrap_err();
        assert!(matches!(e, TensorError::Length { .. }), "{e}");
        // A gap between chunks.
        let mut cs = t.chunks(8);
        cs.remove(1);
        let mut a = Assembler::new(u64::MAX);
        a.push(cs[0].clone()).unwrap();
        let e = a.push(cs[1].clone()).unwrap_err();
        assert!(e.to_string().contains("expected byte 8"), "{e}");
        // Truncated: the stream ends inside the tensor.
        let mut a = Assembler::new(u64::MAX);
        a.push(t.chunks(8)[0].clone()).unwrap();
        let e = a.finish().unwrap_err();
        assert!(matches!(e, TensorError::Length { .. }), "{e}");
        // NaN.
        let nan = WireTensor::f64("s", &[2], &[1.0, f64::NAN]);
        let e = roundtrip(&[nan], 64).unwrap_err();
        assert!(e.to_string().contains("element 1 is NaN"), "{e}");
        // Shape mismatch on decode.
        assert!(t.to_f64(&[2, 2]).is_err());
        // Unspecified dtype.
        let mut c = t.chunks(64).remove(0);
        c.dtype = 0;
        assert!(matches!(
            Assembler::new(u64::MAX).push(c),
            Err(TensorError::Dtype(_))
        ));
    }

    #[test]
    fn a_stream_past_its_limit_is_refused_before_it_is_buffered() {
        let t = WireTensor::f64("s", &[4], &[1.0, 2.0, 3.0, 4.0]);
        let fits = 32 + TENSOR_OVERHEAD + 1;
        let mut a = Assembler::new(fits);
        for c in t.chunks(8) {
            a.push(c).unwrap();
        }
        let e = a.push(WireTensor::f64("u", &[1], &[1.0]).chunks(8).remove(0));
        assert!(matches!(e, Err(TensorError::OverLimit { limit, .. }) if limit == fits));
        // A declared size past the limit is refused on its first chunk, nothing reserved.
        let mut huge = t.chunks(8).remove(0);
        huge.shape = vec![1 << 27];
        huge.total_bytes = 1 << 30;
        let e = Assembler::new(1 << 20).push(huge.clone()).unwrap_err();
        assert!(
            e.to_string().contains("over the limit of 1048576 bytes"),
            "{e}"
        );
        // Within the limit, the buffer grows with what arrives rather than what is declared.
        let mut a = Assembler::new(u64::MAX);
        a.push(huge).unwrap();
        assert!(a.open.as_ref().unwrap().0.data.capacity() <= MAX_CHUNK_BYTES);
        // A shape whose size overflows, a long name, and empty chunks inside a tensor.
        let mut c = t.chunks(8).remove(0);
        c.shape = vec![u64::MAX, 2];
        let e = Assembler::new(u64::MAX).push(c).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let mut c = t.chunks(8).remove(0);
        c.name = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(Assembler::new(u64::MAX).push(c).is_err());
        let mut a = Assembler::new(u64::MAX);
        let mut cs = t.chunks(8);
        a.push(cs.remove(0)).unwrap();
        let mut empty = cs.remove(0);
        empty.data.clear();
        let e = a.push(empty).unwrap_err();
        assert!(e.to_string().contains("empty chunk"), "{e}");
    }
}
