//! Random weights written straight into a `.safetensors` file, tensor by tensor, so a 7B shape
//! needs no more memory than a batch of chunks. Draws are deterministic per seed, tensor name
//! and chunk, so the file is the same whatever the number of threads.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::shapes::Fill;

/// Element type of the written tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    /// Parses `f32`, `bf16` or `f16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "f16" | "float16" => Some(Self::F16),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
            Self::F16 => "F16",
        }
    }

    /// `torch_dtype` of `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    fn put(self, x: f32, out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend_from_slice(&x.to_le_bytes()),
            Self::Bf16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            Self::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
        }
    }
}

/// Elements drawn from one seed: the unit of parallel work.
const CHUNK: usize = 1 << 20;

/// SplitMix64: a full-period 64-bit generator, good enough for weights and cheap to seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the model's seed and a name (FNV-1a over the name, mixed).
fn derive(seed: u64, name: &str) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    let mut s = h;
    splitmix(&mut s)
}

/// `n` normal draws with standard deviation `std` (Box-Muller), in `dtype`'s bytes.
fn normal_chunk(seed: u64, n: usize, std: f32, dtype: WeightDtype, out: &mut Vec<u8>) {
    let mut s = seed;
    let unit = |s: &mut u64| ((splitmix(s) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut i = 0;
    while i < n {
        let (u1, u2) = (unit(&mut s), unit(&mut s));
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        dtype.put((r * cos) as f32 * std, out);
        if i + 1 < n {
            dtype.put((r * sin) as f32 * std, out);
        }
        i += 2;
    }
}

/// Writes `tensors` (name, shape, fill) to `path` as one safetensors file.
pub fn write(
    path: &Path,
    tensors: &[(String, Vec<usize>, Fill)],
    dtype: WeightDtype,
    seed: u64,
    std: f32,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "made_by": "circuit-sweep model init"}),
    );
    let mut offset = 0usize;
    for (name, shape, _) in tensors {
        let bytes = shape.iter().product::<usize>() * dtype.bytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype.safetensors_name(),
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The data starts 8-byte aligned.
    while !(head.len() + 8).is_multiple_of(8) {
        head.push(b' ');
    }
    let mut file = BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    file.write_all(&(head.len() as u64).to_le_bytes())?;
    file.write_all(&head)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, shape, fill) in tensors {
        let n: usize = shape.iter().product();
        match fill {
            Fill::Ones | Fill::Zeros => {
                let x = if *fill == Fill::Ones { 1.0 } else { 0.0 };
                let mut buf = Vec::with_capacity(n * dtype.bytes());
                for _ in 0..n {
                    dtype.put(x, &mut buf);
                }
                file.write_all(&buf)?;
            }
            Fill::Random => {
                let base = derive(seed, name);
                let chunks = n.div_ceil(CHUNK);
                // A batch of chunks at a time, drawn in parallel and written in order.
                for batch in (0..chunks).collect::<Vec<_>>().chunks(threads * 4) {
                    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); batch.len()];
                    std::thread::scope(|scope| {
                        for (part, bufs) in batch
                            .chunks(batch.len().div_ceil(threads))
                            .zip(bufs.chunks_mut(batch.len().div_ceil(threads)))
                        {
                            scope.spawn(move || {
                                for (&c, buf) in part.iter().zip(bufs) {
                                    let len = CHUNK.min(n - c * CHUNK);
                                    buf.reserve_exact(len * dtype.bytes());
                                    let mut s =
                                        base ^ (c as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                                    normal_chunk(splitmix(&mut s), len, std, dtype, buf);
                                }
                            });
                        }
                    });
                    for b in &bufs {
                        file.write_all(b)?;
                    }
                }
            }
        }
        progress(n as u64);
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_asked_spread_and_do_not_repeat_across_names() {
        let mut a = vec![];
        normal_chunk(derive(7, "a"), 100_000, 0.02, WeightDtype::F32, &mut a);
        let xs: Vec<f32> = a
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 3e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 3e-4, "std {}", var.sqrt());
        let mut b = vec![];
        normal_chunk(derive(7, "b"), 100_000, 0.02, WeightDtype::F32, &mut b);
        assert_ne!(a, b);
        let mut again = vec![];
        normal_chunk(derive(7, "a"), 100_000, 0.02, WeightDtype::F32, &mut again);
        assert_eq!(a, again);
    }
}
