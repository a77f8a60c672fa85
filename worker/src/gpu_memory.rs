//! GPU memory: how many tokens a forward pass may hold given the device's free memory, and the
//! cap on usable memory (`--gpu-memory-mb`), which holds the rest of the card in a ballast
//! buffer so that a worker behaves as on a smaller card (and out-of-memory retries can be
//! exercised for real).

use candle_core::Device;

use crate::model::ModelInfo;

/// Share of the free memory a pass may fill; the rest is for what the estimate leaves out
/// (the allocator's rounding, cached runs of edge pruning).
const FILL: f64 = 0.6;

/// Free bytes on `dev` (a GPU); `None` on the CPU.
pub fn free_bytes(dev: &Device) -> Option<u64> {
    match dev {
        Device::Cpu => None,
        _ => cuda_free(dev),
    }
}

#[cfg(feature = "cuda")]
fn cuda_free(dev: &Device) -> Option<u64> {
    let Device::Cuda(cuda) = dev else {
        return None;
    };
    cuda.cuda_stream()
        .context()
        .mem_get_info()
        .ok()
        .map(|(free, _)| free as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_free(_dev: &Device) -> Option<u64> {
    None
}

/// Bytes one token of a pass holds at the widest point of a block, counted generously:
/// residual, norm, attention output and a temporary, q/k/v, attention scores over `seq_len`
/// keys (and their softmax), the MLP's hidden layers; with `full_vocab`, its share of the
/// last position's logits over the whole vocabulary (the KL and accuracy metrics read them).
pub fn bytes_per_token(info: &ModelInfo, seq_len: usize, full_vocab: bool) -> u64 {
    let d = info.d_model as u64;
    let qkv = ((info.n_heads + 2 * info.n_kv_heads) * info.d_head) as u64;
    let scores = 2 * (info.n_heads * seq_len) as u64;
    let mlp = 3 * info.d_mlp as u64;
    let activations = (4 * d + qkv + scores + mlp) * info.dtype.size_in_bytes() as u64;
    // The logits are f32, in the model's dtype first.
    let logits = if full_vocab {
        (info.vocab_size as u64 * (4 + info.dtype.size_in_bytes() as u64))
            .div_ceil(seq_len.max(1) as u64)
    } else {
        0
    };
    activations + logits
}

/// Tokens per pass: the spec's bound where it sets one, else the CPU default on a CPU and on a
/// GPU what [`FILL`] of its free memory holds; never above `limit` nor below one variant.
/// `(seq_len, per_variant)`: positions of a prompt and tokens of one variant.
pub fn pass_tokens(
    dev: &Device,
    info: &ModelInfo,
    (seq_len, per_variant): (usize, usize),
    full_vocab: bool,
    requested: Option<usize>,
    limit: usize,
) -> usize {
    let free = free_bytes(dev);
    let fit = free.map(|free| {
        (free as f64 * FILL) as u64 / bytes_per_token(info, seq_len, full_vocab).max(1)
    });
    let tokens = match (requested, fit) {
        (Some(r), Some(f)) => r.min(f as usize),
        (Some(r), None) => r,
        (None, Some(f)) => f as usize,
        (None, None) => circuit_sweep_common::spec::CPU_BATCH_TOKENS,
    };
    let tokens = tokens.min(limit).max(per_variant.max(1));
    if let Some(free) = free {
        tracing::info!(
            "passes of up to {tokens} tokens ({} variants): {:.0} MiB free on the GPU",
            tokens / per_variant.max(1),
            free as f64 / 1048576.0
        );
    }
    tokens
}

/// Leaves at most `mb` MiB free on the GPU `dev` from now on, by holding the rest in a buffer
/// kept for the life of the process (nothing is held on the CPU, or when less is free).
pub fn cap_usable(dev: &Device, mb: u64) -> Result<(), candle_core::Error> {
    let Some(free) = free_bytes(dev) else {
        return Ok(());
    };
    let keep = mb << 20;
    if free <= keep {
        return Ok(());
    }
    let ballast = candle_core::Tensor::zeros((free - keep) as usize, candle_core::DType::U8, dev)?;
    tracing::info!(
        "holding {:.0} MiB of the GPU's {:.0} MiB free: {mb} MiB stay usable",
        (free - keep) as f64 / 1048576.0,
        free as f64 / 1048576.0
    );
    BALLAST
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ballast);
    Ok(())
}

static BALLAST: std::sync::Mutex<Vec<candle_core::Tensor>> = std::sync::Mutex::new(Vec::new());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_cpu_the_spec_or_the_default_decides() {
        let info = ModelInfo {
            architecture: crate::model::Architecture::Llama,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            d_model: 64,
            d_head: 16,
            d_mlp: 128,
            vocab_size: 300,
            context_length: 64,
            rope_theta: Some(1e4),
            tied_embeddings: true,
            parallel_residual: false,
            parameters: 0,
            dtype: candle_core::DType::F32,
        };
        let cpu = Device::Cpu;
        assert_eq!(
            pass_tokens(&cpu, &info, (8, 80), false, None, 1 << 22),
            16384
        );
        assert_eq!(
            pass_tokens(&cpu, &info, (8, 80), true, Some(1000), 1 << 22),
            1000
        );
        // At least one variant, at most the limit.
        assert_eq!(
            pass_tokens(&cpu, &info, (8, 80), false, Some(10), 1 << 22),
            80
        );
        assert_eq!(pass_tokens(&cpu, &info, (8, 80), false, None, 500), 500);
        assert!(cap_usable(&cpu, 1).is_ok());
        // q/k/v of 4 + 2 + 2 heads of 16, scores over 8 keys, a gated MLP.
        let activations = (4 * 64 + 128 + 2 * 32 + 3 * 128) * 4;
        assert_eq!(bytes_per_token(&info, 8, false), activations);
        // 300 logits in f32 and in f32 again, shared by 8 positions.
        assert_eq!(bytes_per_token(&info, 8, true), activations + 300);
    }
}
