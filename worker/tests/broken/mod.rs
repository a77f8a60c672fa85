//! Breaking copies of the fixture models for the `load_errors_*` tests: each test copies a fixture
//! (`tests/fixtures/models`, made by `scripts/make_fixtures.py`) into a temporary folder, breaks
//! one thing, and expects a typed `LoadError` (never a panic) naming the file and the tensor or
//! field.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use circuit_sweep_worker::{LoadError, LoadOptions, load_model};
use serde_json::{Map, Value as Json};
use tempfile::TempDir;

/// A fixture model folder.
pub fn fixture(name: &str) -> PathBuf {
    crate::common::fixtures().join("models").join(name)
}

/// A copy of a fixture model folder in a fresh temporary folder.
pub fn copy_fixture(name: &str) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    tmp
}

/// Loads `path`, which must fail with a `LoadError`: a panic or a success fails the test.
pub fn load_err(path: &Path) -> LoadError {
    let result = catch_unwind(AssertUnwindSafe(|| {
        load_model(path, &LoadOptions::default())
    }));
    match result {
        Err(_) => panic!(
            "loading {} panicked instead of returning a LoadError",
            path.display()
        ),
        Ok(Ok(_)) => panic!(
            "loading {} succeeded although the input is broken",
            path.display()
        ),
        Ok(Err(e)) => {
            eprintln!("{e}");
            e
        }
    }
}

/// Asserts that the error's message contains every one of `parts`.
pub fn assert_mentions(err: &LoadError, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(
            msg.contains(p),
            "error message does not mention `{p}`: {msg}"
        );
    }
}

/// Asserts that `path`'s last component is `name`.
pub fn assert_file_name(path: &Path, name: &str) {
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(name),
        "error names {} rather than {name}",
        path.display()
    );
}

/// Edits `dir/config.json` (or another JSON file) as a JSON object.
pub fn edit_json(file: &Path, edit: impl FnOnce(&mut Map<String, Json>)) {
    let mut v: Json = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    edit(v.as_object_mut().expect("a JSON object"));
    fs::write(file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites a safetensors file after editing its tensors.
pub fn edit_tensors(file: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, file).unwrap();
}

/// Cuts a file to `len` bytes.
pub fn truncate(file: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Asserts a `Config` error naming `field` in a file called `file_name`, with both in its
/// message.
pub fn assert_config_error(err: &LoadError, file_name: &str, field: &str) {
    match err {
        LoadError::Config { file, field: f, .. } => {
            assert_file_name(file, file_name);
            assert_eq!(f, field);
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(err, &[file_name, field]);
}
