//! Running the `circuit-sweep` binary in tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The binary, with quiet logs.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_circuit-sweep"));
    c.env("CIRCUIT_SWEEP_LOG", "warn");
    c
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    std::env::var_os("CIRCUIT_SWEEP_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

/// Fetches the default model once per test binary, through `circuit-sweep model fetch`, and
/// returns the models folder.
pub fn fetched() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = models_dir();
        let out = bin()
            .arg("--models-dir")
            .arg(&dir)
            .args(["model", "fetch"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "model fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.trim().ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{printed}"
        );
        dir
    })
}

/// The binary with the default model's folder set.
pub fn with_model() -> Command {
    let mut c = bin();
    c.arg("--models-dir").arg(fetched());
    c
}

/// Stdout of a successful run (panics with stderr otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
