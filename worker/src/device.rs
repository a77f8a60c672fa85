//! Devices by name (`cpu`, `cuda:N`): CUDA only in builds with the `cuda` feature, and only
//! where a driver is present, each with an error that says which is missing.

use candle_core::Device;

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu` or `cuda:N`.
    #[error("device `{0}` is not cpu or cuda:N")]
    Name(String),
    /// A CUDA device in a build without CUDA.
    #[error("device `{0}`: this build runs on cpu only (build with --features cuda)")]
    NoCudaBuild(String),
    /// The CUDA device does not open (no such ordinal, no GPU visible).
    #[error("device `{0}`: {1}")]
    Cuda(String, String),
}

/// The ordinal of a `cuda:N` name.
pub fn cuda_ordinal(name: &str) -> Option<usize> {
    name.strip_prefix("cuda:")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

/// Usable memory (MiB) of each GPU this process opens (`--gpu-memory-mb`), and the ordinals
/// already capped.
static GPU_CAP: std::sync::Mutex<(Option<u64>, Vec<usize>)> = std::sync::Mutex::new((None, vec![]));

/// From now on, each GPU this process opens keeps at most `mb` MiB usable (see
/// [`crate::gpu_memory::cap_usable`]).
pub fn cap_gpu_memory(mb: u64) {
    GPU_CAP.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(mb);
}

/// Opens the device `name`.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(ordinal) = cuda_ordinal(name) else {
        return Err(DeviceError::Name(name.into()));
    };
    let dev = open_cuda(name, ordinal)?;
    let mut cap = GPU_CAP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mb) = cap.0
        && !cap.1.contains(&ordinal)
    {
        crate::gpu_memory::cap_usable(&dev, mb)
            .map_err(|e| DeviceError::Cuda(name.into(), format!("capping its memory: {e}")))?;
        cap.1.push(ordinal);
    }
    Ok(dev)
}

/// The GPUs of `--gpus`: `all` (every GPU the driver shows, which honours
/// `CUDA_VISIBLE_DEVICES`) or a list of ordinals (`0,1`).
pub fn gpu_list(spec: &str) -> Result<Vec<usize>, DeviceError> {
    if spec == "all" {
        return all_gpus();
    }
    let mut out = vec![];
    for part in spec.split(',') {
        let n: usize = part
            .trim()
            .parse()
            .map_err(|_| DeviceError::Name(format!("cuda:{}", part.trim())))?;
        if out.contains(&n) {
            return Err(DeviceError::Cuda(
                format!("cuda:{n}"),
                "listed twice".into(),
            ));
        }
        out.push(n);
    }
    Ok(out)
}

#[cfg(feature = "cuda")]
fn all_gpus() -> Result<Vec<usize>, DeviceError> {
    let n = cudarc::driver::CudaContext::device_count()
        .map_err(|e| DeviceError::Cuda("cuda".into(), e.to_string()))?;
    if n <= 0 {
        return Err(DeviceError::Cuda("cuda".into(), "no GPU is visible".into()));
    }
    Ok((0..n as usize).collect())
}

#[cfg(not(feature = "cuda"))]
fn all_gpus() -> Result<Vec<usize>, DeviceError> {
    Err(DeviceError::NoCudaBuild("cuda".into()))
}

#[cfg(feature = "cuda")]
fn open_cuda(name: &str, ordinal: usize) -> Result<Device, DeviceError> {
    // candle links cudarc to libcuda: a binary that runs has a driver; the device may still
    // not open (no such ordinal, no GPU visible).
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda(name.into(), e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(name: &str, _ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NoCudaBuild(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_cuda_is_refused_with_the_reason() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        assert_eq!(cuda_ordinal("cuda:3"), Some(3));
        assert_eq!(cuda_ordinal("cuda:"), None);
        assert_eq!(open("gpu").unwrap_err(), DeviceError::Name("gpu".into()));
        // This machine has no GPU.
        let e = open("cuda:0").unwrap_err().to_string();
        assert!(e.starts_with("device `cuda:0`: "), "{e}");
        assert_eq!(gpu_list("0, 2").unwrap(), vec![0, 2]);
        assert!(gpu_list("0,x").is_err() && gpu_list("1,1").is_err());
        assert!(gpu_list("all").is_err(), "no GPU here");
    }
}
