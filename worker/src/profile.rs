//! A worker's numeric profile: which kernels compute its numbers. Two workers of one profile
//! give the same scores bit for bit; across profiles the last bits differ (another vector
//! width sums in another order), so a job can require one (`[run] profile`).

use crate::device;

/// The profile of computing on `device` (`cpu` or `cuda:N`) in this build on this machine.
///
/// On the CPU it names the kernels the matmul library runs here, not everything the CPU has:
/// a build without the `avx512` feature runs AVX2 with FMA (x86-64-v3) on an AVX-512 CPU too.
pub fn numeric_profile(device_name: &str) -> String {
    if device::cuda_ordinal(device_name).is_some() {
        return "cuda".into();
    }
    format!("cpu-{}", cpu_level())
}

#[cfg(target_arch = "x86_64")]
fn cpu_level() -> &'static str {
    // The same tests, in the same order, as the matmul library's own choice of kernels.
    if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
        "x86-64-v4"
    } else if std::arch::is_x86_feature_detected!("fma") {
        "x86-64-v3"
    } else {
        "x86-64"
    }
}

#[cfg(target_arch = "aarch64")]
fn cpu_level() -> &'static str {
    "aarch64"
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_level() -> &'static str {
    std::env::consts::ARCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_names_the_device_kind_and_the_cpu_s_kernels() {
        let cpu = numeric_profile("cpu");
        assert!(cpu.starts_with("cpu-"), "{cpu}");
        #[cfg(target_arch = "x86_64")]
        {
            // An AVX-512 CPU is v4 only in a build with the AVX-512 kernels.
            let v4 = cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f");
            let v3 = std::arch::is_x86_feature_detected!("fma");
            let expected = if v4 {
                "cpu-x86-64-v4"
            } else if v3 {
                "cpu-x86-64-v3"
            } else {
                "cpu-x86-64"
            };
            assert_eq!(cpu, expected);
        }
        assert_eq!(numeric_profile("cuda:1"), "cuda");
        assert_eq!(numeric_profile("cpu"), cpu, "the same on every call");
    }
}
