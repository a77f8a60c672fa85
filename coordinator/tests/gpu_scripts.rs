//! The GPU machine's scripts, rehearsed here: `scripts/gpu-check.sh` end to end on the CPU
//! (`DEV=cpu`: the same steps on small shapes made on the spot, no GPU rows), and the search of
//! `scripts/gpu-env.sh` for the CUDA libraries a carried binary needs.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::root;

#[test]
fn the_gpu_check_runs_end_to_end_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = Command::new("bash")
        .arg(root().join("scripts/gpu-check.sh"))
        .env("DEV", "cpu")
        .env("BIN", env!("CARGO_BIN_EXE_circuit-sweep"))
        .env("OUT", &out)
        .env("WORK", tmp.path().join("work"))
        .output()
        .unwrap();
    let table = std::fs::read_to_string(out.join("gpu-check.md")).unwrap_or_default();
    let log = std::fs::read_to_string(out.join("gpu-check.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "gpu-check failed:\n{table}\n--- log tail:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );
    // Every section ran and filled its rows.
    for want in [
        "## Models made on the spot",
        "| llama-2-7b | --shape llama-2-7b",
        "| gpt2 | node scores, f32 | 0.00e+00 pp",
        "| neox | node scores, bf16 |",
        "| llama | logits of",
        "## Matmul peak through candle on cpu",
        "| llama-2-7b bf16 | 10 x 4 x",
        "| edge sweep, random GPT-2",
        "| attribution EAP of every edge, gpt2-small f32 |",
        "| attribution EAP-IG(5) of every edge, llama-2-7b bf16 |",
        "| order study, 2 orders",
        "every check passed",
    ] {
        assert!(table.contains(want), "no `{want}` in:\n{table}");
    }
    assert!(!table.contains("FAIL"), "{table}");
    // On the CPU a peak is measured, never the placeholder of a failed measurement.
    let peak = table
        .lines()
        .find(|l| l.starts_with("| f32 | 256x256x256 |"))
        .unwrap();
    let gflops: f64 = peak.split('|').nth(3).unwrap().trim().parse().unwrap();
    assert!(gflops > 1.0, "{peak}");
}

/// A fake Python package tree holding CUDA 13 and NCCL libraries the way the `nvidia-*` wheels
/// lay them out, and a toolkit folder with a libcuda link stub.
fn fake_site(dir: &Path) -> PathBuf {
    let site = dir.join("site");
    for (sub, lib) in [
        ("nvidia/cu13/lib", "libcublas.so.13"),
        ("nvidia/cu13/lib", "libcurand.so.10"),
        ("nvidia/nccl/lib", "libnccl.so.2"),
        ("cuda/lib64/stubs", "libcuda.so.1"),
    ] {
        std::fs::create_dir_all(site.join(sub)).unwrap();
        std::fs::write(site.join(sub).join(lib), "").unwrap();
    }
    site
}

fn gpu_env(site: &Path, libs: &str) -> std::process::Output {
    Command::new("bash")
        .arg(root().join("scripts/gpu-env.sh"))
        .arg(env!("CARGO_BIN_EXE_circuit-sweep"))
        .env("PYTHONPATH", site)
        .env("GPU_LIBS", libs)
        .env("CUDA_HOME", site.join("cuda"))
        .output()
        .unwrap()
}

#[test]
fn gpu_env_finds_the_libraries_in_pythons_nvidia_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let site = fake_site(tmp.path());
    let out = gpu_env(&site, "libcublas.so.13 libcurand.so.10 libnccl.so.2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cu13 = site.join("nvidia/cu13/lib").display().to_string();
    let nccl = site.join("nvidia/nccl/lib").display().to_string();
    assert_eq!(
        stdout.trim(),
        format!("export LD_LIBRARY_PATH={cu13}:{nccl}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
    );
    // The line works in a shell.
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!("{stdout}\necho \"$LD_LIBRARY_PATH\""))
        .env("LD_LIBRARY_PATH", "/before")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("{cu13}:{nccl}:/before")
    );
    // Unset before: no empty entry (the current folder) at the end.
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "unset LD_LIBRARY_PATH\n{stdout}\necho \"$LD_LIBRARY_PATH\""
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("{cu13}:{nccl}")
    );
}

#[test]
fn gpu_env_names_what_it_cannot_find_and_never_takes_a_stub() {
    let tmp = tempfile::tempdir().unwrap();
    let site = fake_site(tmp.path());
    // libcuda exists only as the toolkit's link stub: not found, unless the driver's is.
    let has_driver = Command::new("bash")
        .arg("-c")
        .arg("ldconfig -p | grep -q ' libcuda.so.1 ' || ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1")
        .output()
        .unwrap()
        .status
        .success();
    let out = gpu_env(&site, "libcublas.so.13 libcuda.so.1 libnotthere.so.7");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "printed an environment anyway");
    let missing = stderr
        .lines()
        .find(|l| l.starts_with("gpu-env: not found:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(missing.contains("libnotthere.so.7"), "{missing}");
    assert_eq!(missing.contains("libcuda.so.1"), !has_driver, "{stderr}");
    assert!(!stderr.contains("stubs"), "{stderr}");
}
