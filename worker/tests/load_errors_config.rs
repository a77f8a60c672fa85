//! Broken `config.json` files (an unknown or missing `model_type`, a missing or mistyped field,
//! unsupported rope scaling, heads that do not divide) end with a `LoadError` naming the field.

mod broken;
mod common;

use std::fs;

use broken::*;
use circuit_sweep_worker::LoadError;
use serde_json::json;

#[test]
fn unknown_model_type_is_unsupported_architecture() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c.insert("model_type".into(), json!("bert"));
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::UnsupportedArchitecture {
            file, field, name, ..
        } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "model_type");
            assert_eq!(name, "bert");
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "model_type", "bert"]);

    // The architecture is refused before the weights are looked for: a BERT folder with only
    // `pytorch_model.bin` is reported as an unsupported architecture, not as missing weights.
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    fs::write(dir.path().join("pytorch_model.bin"), b"not read").unwrap();
    let err = load_err(dir.path());
    match &err {
        LoadError::UnsupportedArchitecture { field, name, .. } => {
            assert_eq!((field.as_str(), name.as_str()), ("model_type", "bert"));
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "model_type", "bert"]);
}

#[test]
fn config_without_model_type_names_the_field() {
    let dir = copy_fixture("gpt2");
    edit_json(&dir.path().join("config.json"), |c| {
        c.remove("model_type");
    });
    assert_config_error(&load_err(dir.path()), "config.json", "model_type");
}

#[test]
fn missing_or_mistyped_config_field_is_named() {
    // A required field absent.
    let dir = copy_fixture("llama");
    let config = dir.path().join("config.json");
    edit_json(&config, |c| {
        c.remove("hidden_size");
    });
    assert_config_error(&load_err(dir.path()), "config.json", "hidden_size");

    // A field of the wrong type.
    let dir = copy_fixture("llama");
    let config = dir.path().join("config.json");
    edit_json(&config, |c| {
        c.insert("num_hidden_layers".into(), json!("three"));
    });
    assert_config_error(&load_err(dir.path()), "config.json", "num_hidden_layers");

    // A nested field of the wrong type is named by its path.
    let dir = copy_fixture("llama");
    let config = dir.path().join("config.json");
    edit_json(&config, |c| {
        c["rope_parameters"]["rope_theta"] = json!("large");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { field, .. } => assert_eq!(field, "rope_parameters.rope_theta"),
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "rope_parameters.rope_theta"]);

    // The same for the other architectures' required fields.
    for (name, field) in [("gpt2", "n_embd"), ("neox", "intermediate_size")] {
        let dir = copy_fixture(name);
        edit_json(&dir.path().join("config.json"), |c| {
            c.remove(field);
        });
        let err = load_err(dir.path());
        match &err {
            LoadError::Config { field: f, .. } => assert_eq!(f, field, "{name}"),
            other => panic!("{name}: expected Config, got {other:?}"),
        }
        assert_mentions(&err, &["config.json", field]);
    }

    // Not JSON at all: a JSON error naming the file, line and column.
    let dir = copy_fixture("llama");
    fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",",
    )
    .unwrap();
    let err = load_err(dir.path());
    match &err {
        LoadError::Json { file, .. } => assert_file_name(file, "config.json"),
        other => panic!("expected Json, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "invalid JSON", "line 1 column 23"]);
}

#[test]
fn unsupported_rope_scaling_and_bad_gqa_are_config_errors() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c["rope_parameters"]["rope_type"] = json!("yarn");
    });
    let err = load_err(dir.path());
    assert_config_error(&err, "config.json", "rope_parameters.rope_type");
    assert_mentions(&err, &["yarn"]);

    // The older `rope_scaling` spelling.
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c.insert(
            "rope_scaling".into(),
            json!({"type": "yarn", "factor": 4.0}),
        );
    });
    let err = load_err(dir.path());
    assert!(
        matches!(&err, LoadError::Config { .. }),
        "expected Config, got {err:?}"
    );
    assert_mentions(&err, &["config.json", "rope_scaling", "yarn"]);

    // NeoX supports no rotary scaling.
    let dir = copy_fixture("neox");
    edit_json(&dir.path().join("config.json"), |c| {
        c["rope_parameters"]["rope_type"] = json!("linear");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { field, .. } => assert_eq!(field, "rope_parameters.rope_type"),
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(
        &err,
        &["config.json", "rope_parameters.rope_type", "linear"],
    );

    // 8 query heads cannot share 3 key/value heads.
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c.insert("num_key_value_heads".into(), json!(3));
    });
    assert_config_error(&load_err(dir.path()), "config.json", "num_key_value_heads");
}
