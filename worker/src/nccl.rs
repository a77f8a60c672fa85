//! NCCL through cudarc, in builds with the `nccl` feature: a communicator of one rank on one
//! GPU and an all-reduce of a score tensor, the smallest collective a group of workers sharing
//! a model would run. With one rank the sum is the input itself, so the result is checkable.

/// Why NCCL did not run.
#[derive(Debug, thiserror::Error)]
pub enum NcclError {
    #[error("this build has no NCCL (build with --features nccl)")]
    NotBuilt,
    #[error("device `{0}` is not cuda:N")]
    Device(String),
    #[error("NCCL on {device}: {why}")]
    Failed { device: String, why: String },
}

/// What one all-reduce did.
#[derive(Debug, Clone)]
pub struct AllReduce {
    /// Elements reduced.
    pub elements: usize,
    /// Seconds of the timed all-reduces, each.
    pub seconds: f64,
    /// Whether the result equals the input (one rank: a sum over one is the value).
    pub exact: bool,
}

/// A one-rank communicator on `device` (`cuda:N`) and `runs` all-reduces (sum) of `elements`
/// f32 scores.
#[cfg(feature = "nccl")]
pub fn one_rank_all_reduce(
    device: &str,
    elements: usize,
    runs: usize,
) -> Result<AllReduce, NcclError> {
    use cudarc::driver::CudaContext;
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};
    let ordinal =
        crate::device::cuda_ordinal(device).ok_or_else(|| NcclError::Device(device.into()))?;
    let fail = |why: String| NcclError::Failed {
        device: device.into(),
        why,
    };
    let ctx = CudaContext::new(ordinal).map_err(|e| fail(format!("{e:?}")))?;
    let stream = ctx.default_stream();
    let id = Id::new().map_err(|e| fail(format!("unique id: {e:?}")))?;
    let comm =
        Comm::from_rank(stream.clone(), 0, 1, id).map_err(|e| fail(format!("init: {e:?}")))?;
    let scores: Vec<f32> = (0..elements)
        .map(|i| (i % 1000) as f32 * 0.125 - 50.0)
        .collect();
    let send = stream
        .clone_htod(&scores)
        .map_err(|e| fail(format!("{e:?}")))?;
    let mut recv = stream
        .alloc_zeros::<f32>(elements)
        .map_err(|e| fail(format!("{e:?}")))?;
    comm.all_reduce(&send, &mut recv, &ReduceOp::Sum)
        .map_err(|e| fail(format!("all-reduce: {e:?}")))?;
    stream.synchronize().map_err(|e| fail(format!("{e:?}")))?;
    let t0 = std::time::Instant::now();
    for _ in 0..runs.max(1) {
        comm.all_reduce(&send, &mut recv, &ReduceOp::Sum)
            .map_err(|e| fail(format!("all-reduce: {e:?}")))?;
    }
    stream.synchronize().map_err(|e| fail(format!("{e:?}")))?;
    let seconds = t0.elapsed().as_secs_f64() / runs.max(1) as f64;
    let back = stream
        .clone_dtoh(&recv)
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok(AllReduce {
        elements,
        seconds,
        exact: back == scores,
    })
}

/// Without the `nccl` feature: says how to build it.
#[cfg(not(feature = "nccl"))]
pub fn one_rank_all_reduce(
    _device: &str,
    _elements: usize,
    _runs: usize,
) -> Result<AllReduce, NcclError> {
    Err(NcclError::NotBuilt)
}
