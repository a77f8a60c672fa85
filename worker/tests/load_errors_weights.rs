//! Broken safetensors weights (a tensor missing, cut or misshapen; a shard or the index broken;
//! no weights at all) end with a `LoadError` naming the file and the tensor.

mod broken;
mod common;

use std::fs;

use broken::*;
use candle_core::{DType, Device, Tensor};
use circuit_sweep_worker::LoadError;
use serde_json::json;

/// Asserts a `MissingTensor` error for `gone` that names a file called `file_name`.
fn assert_missing(err: &LoadError, file_name: &str, gone: &str) {
    match err {
        LoadError::MissingTensor { file, tensor } => {
            assert_file_name(file, file_name);
            assert_eq!(tensor, gone);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(err, &[file_name, gone]);
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    let gone = "model.layers.1.self_attn.k_proj.weight";
    edit_tensors(&weights, |t| {
        t.remove(gone).expect("the fixture has the tensor");
    });
    assert_missing(&load_err(dir.path()), "model.safetensors", gone);
}

#[test]
fn missing_tensor_in_a_shard_names_index_and_tensor() {
    let dir = copy_fixture("llama3_sharded");
    let gone = "model.layers.1.mlp.up_proj.weight";
    edit_tensors(&dir.path().join("model-00002-of-00003.safetensors"), |t| {
        t.remove(gone)
            .expect("the fixture has the tensor in shard 2");
    });
    let err = load_err(dir.path());
    assert_missing(&err, "model.safetensors.index.json", gone);
    let index = dir.path().join("model.safetensors.index.json");
    assert!(
        matches!(&err, LoadError::MissingTensor { file, .. } if *file == index),
        "a tensor missing from sharded weights names the shard index"
    );
}

#[test]
fn truncated_safetensors_names_the_file() {
    // Cut to half: the header is intact but the data it describes is not there.
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    truncate(&weights, fs::metadata(&weights).unwrap().len() / 2);
    let err = load_err(dir.path());
    match &err {
        LoadError::Safetensors { file, .. } => assert_file_name(file, "model.safetensors"),
        other => panic!("expected Safetensors, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors"]);

    // Cut inside the header itself.
    truncate(&weights, 20);
    let err = load_err(dir.path());
    assert!(
        matches!(&err, LoadError::Safetensors { .. }),
        "expected Safetensors, got {err:?}"
    );
    assert_mentions(&err, &["model.safetensors"]);

    // A truncated shard is named, not just the folder.
    let dir = copy_fixture("llama3_sharded");
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    truncate(&shard, fs::metadata(&shard).unwrap().len() / 2);
    let err = load_err(dir.path());
    match &err {
        LoadError::Safetensors { file, .. } => {
            assert_file_name(file, "model-00002-of-00003.safetensors")
        }
        other => panic!("expected Safetensors, got {other:?}"),
    }
    assert_mentions(&err, &["model-00002-of-00003.safetensors"]);
}

#[test]
fn wrong_tensor_shape_names_tensor_and_file() {
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    let name = "model.layers.2.mlp.up_proj.weight";
    edit_tensors(&weights, |t| {
        assert_eq!(t[name].dims(), &[128, 64]);
        t.insert(
            name.into(),
            Tensor::zeros((127, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Shape {
            file,
            tensor,
            expected,
            found,
        } => {
            assert_file_name(file, "model.safetensors");
            assert_eq!(tensor, name);
            assert_eq!(expected, &[128, 64]);
            assert_eq!(found, &[127, 64]);
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors", name, "[127, 64]", "[128, 64]"]);
}

#[test]
fn sharded_weights_missing_shard_or_empty_index() {
    // A shard the index names is gone.
    let dir = copy_fixture("llama3_sharded");
    let shard = "model-00002-of-00003.safetensors";
    fs::remove_file(dir.path().join(shard)).unwrap();
    let err = load_err(dir.path());
    match &err {
        LoadError::MissingFile { dir: d, file, .. } => {
            assert_eq!(d, dir.path());
            assert_eq!(file, shard);
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert_mentions(&err, &[shard, "model.safetensors.index.json"]);

    // An index that names no shard.
    let dir = copy_fixture("llama3_sharded");
    let index = dir.path().join("model.safetensors.index.json");
    edit_json(&index, |i| {
        i.insert("weight_map".into(), json!({}));
    });
    assert_config_error(
        &load_err(dir.path()),
        "model.safetensors.index.json",
        "weight_map",
    );

    // An index without a weight map at all.
    edit_json(&index, |i| {
        i.remove("weight_map");
    });
    assert_config_error(
        &load_err(dir.path()),
        "model.safetensors.index.json",
        "weight_map",
    );
}

#[test]
fn no_weights_no_config_or_no_such_path() {
    let dir = copy_fixture("llama");
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    match &err {
        LoadError::MissingFile { dir: d, file, .. } => {
            assert_eq!(d, dir.path());
            assert_eq!(file, "model.safetensors");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors"]);

    let dir = copy_fixture("gpt2");
    fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    match &err {
        LoadError::MissingFile { file, .. } => assert_eq!(file, "config.json"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert_mentions(&err, &["config.json"]);

    let nowhere = dir.path().join("no-such-model");
    let err = load_err(&nowhere);
    match &err {
        LoadError::NotFound { path } => assert_eq!(path, &nowhere),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_mentions(&err, &["no-such-model"]);
}

#[test]
fn untied_config_on_tied_weights_misses_lm_head() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        assert_eq!(c["tie_word_embeddings"], json!(true));
        c.insert("tie_word_embeddings".into(), json!(false));
    });
    assert_missing(&load_err(dir.path()), "model.safetensors", "lm_head.weight");
}
