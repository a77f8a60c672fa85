//! Loading broken model inputs ends with a typed `LoadError` (never a panic) whose message names
//! the file, and the tensor or field. Each test copies a fixture model (`tests/fixtures/models`,
//! made by `scripts/make_fixtures.py`) into a temporary folder, breaks one thing, and loads it.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use circuit_sweep_worker::{Architecture, LoadError, LoadOptions, load_model};
use serde_json::{Map, Value as Json, json};
use tempfile::TempDir;

/// A fixture model folder.
fn fixture(name: &str) -> PathBuf {
    common::fixtures().join("models").join(name)
}

/// A copy of a fixture model folder in a fresh temporary folder.
fn copy_fixture(name: &str) -> TempDir {
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
fn load_err(path: &Path) -> LoadError {
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
fn assert_mentions(err: &LoadError, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(
            msg.contains(p),
            "error message does not mention `{p}`: {msg}"
        );
    }
}

/// Asserts that `path`'s last component is `name`.
fn assert_file_name(path: &Path, name: &str) {
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(name),
        "error names {} rather than {name}",
        path.display()
    );
}

/// Edits `dir/config.json` (or another JSON file) as a JSON object.
fn edit_json(file: &Path, edit: impl FnOnce(&mut Map<String, Json>)) {
    let mut v: Json = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    edit(v.as_object_mut().expect("a JSON object"));
    fs::write(file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites a safetensors file after editing its tensors.
fn edit_tensors(file: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, file).unwrap();
}

/// Cuts a file to `len` bytes.
fn truncate(file: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    let gone = "model.layers.1.self_attn.k_proj.weight";
    edit_tensors(&weights, |t| {
        t.remove(gone).expect("the fixture has the tensor");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::MissingTensor { file, tensor } => {
            assert_file_name(file, "model.safetensors");
            assert_eq!(tensor, gone);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors", gone]);
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
    match &err {
        LoadError::MissingTensor { file, tensor } => {
            assert_eq!(
                file,
                &dir.path().join("model.safetensors.index.json"),
                "a tensor missing from sharded weights names the shard index"
            );
            assert_eq!(tensor, gone);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors.index.json", gone]);
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
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "model_type");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "model_type"]);
}

#[test]
fn missing_or_mistyped_config_field_is_named() {
    // A required field absent.
    let dir = copy_fixture("llama");
    let config = dir.path().join("config.json");
    edit_json(&config, |c| {
        c.remove("hidden_size");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "hidden_size");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "hidden_size"]);

    // A field of the wrong type.
    let dir = copy_fixture("llama");
    let config = dir.path().join("config.json");
    edit_json(&config, |c| {
        c.insert("num_hidden_layers".into(), json!("three"));
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "num_hidden_layers");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "num_hidden_layers"]);

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
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "model.safetensors.index.json");
            assert_eq!(field, "weight_map");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors.index.json", "weight_map"]);

    // An index without a weight map at all.
    edit_json(&index, |i| {
        i.remove("weight_map");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "model.safetensors.index.json");
            assert_eq!(field, "weight_map");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors.index.json", "weight_map"]);
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
    let err = load_err(dir.path());
    match &err {
        LoadError::MissingTensor { file, tensor } => {
            assert_file_name(file, "model.safetensors");
            assert_eq!(tensor, "lm_head.weight");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &["model.safetensors", "lm_head.weight"]);
}

#[test]
fn unsupported_rope_scaling_and_bad_gqa_are_config_errors() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c["rope_parameters"]["rope_type"] = json!("yarn");
    });
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "rope_parameters.rope_type");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "rope_type", "yarn"]);

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
    let err = load_err(dir.path());
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_file_name(file, "config.json");
            assert_eq!(field, "num_key_value_heads");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["config.json", "num_key_value_heads"]);
}

#[test]
fn unreadable_gguf_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();

    // Random bytes (a fixed xorshift stream, so the test is reproducible).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut header = b"GGUF".to_vec();
    header.extend_from_slice(&3u32.to_le_bytes());
    // A header that declares one metadata entry whose key is 2^60 bytes long.
    let mut huge = header.clone();
    huge.extend_from_slice(&0u64.to_le_bytes());
    huge.extend_from_slice(&1u64.to_le_bytes());
    huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
    huge.extend_from_slice(&[0; 16]);
    let cases: [(&str, &[u8]); 5] = [
        ("random.gguf", &noise),
        ("empty.gguf", &[]),
        ("magic-only.gguf", b"GGUF"),
        ("cut-header.gguf", &header),
        ("huge-string.gguf", &huge),
    ];
    for (name, bytes) in cases {
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        let err = load_err(&path);
        match &err {
            LoadError::Gguf { file, .. } => assert_eq!(file, &path, "{name}"),
            other => panic!("{name}: expected Gguf, got {other:?}"),
        }
        assert_mentions(&err, &[name]);
    }
}

/// The `llama` fixture written as a GGUF file (unquantized f32; q/k rows left as they are, which
/// only changes the numbers), tensors in the order the loader reads them. Metadata in `drop` is
/// left out and `arch` is written as `general.architecture`.
fn fixture_as_gguf(path: &Path, arch: &str, drop: &[&str]) {
    let w =
        candle_core::safetensors::load(fixture("llama").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names = vec![(
        "token_embd.weight".to_string(),
        "model.embed_tokens.weight".to_string(),
    )];
    for l in 0..3 {
        for (g, h) in [
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            names.push((
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{h}.weight"),
            ));
        }
    }
    names.push(("output_norm.weight".into(), "model.norm.weight".into()));
    let qts: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|(g, h)| (g, QTensor::quantize(&w[&h], GgmlDType::F32).unwrap()))
        .collect();
    let meta: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", GgufValue::String(arch.into())),
        ("llama.vocab_size", GgufValue::U32(96)),
        ("llama.embedding_length", GgufValue::U32(64)),
        ("llama.feed_forward_length", GgufValue::U32(128)),
        ("llama.block_count", GgufValue::U32(3)),
        ("llama.attention.head_count", GgufValue::U32(8)),
        ("llama.attention.head_count_kv", GgufValue::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("llama.rope.freq_base", GgufValue::F32(100000.0)),
        ("llama.context_length", GgufValue::U32(32)),
    ];
    let meta: Vec<(&str, &GgufValue)> = meta
        .iter()
        .filter(|(k, _)| !drop.contains(k))
        .map(|(k, v)| (*k, v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = qts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
}

/// Where each tensor's data ends in a GGUF file.
fn gguf_data_ends(path: &Path) -> HashMap<String, u64> {
    let mut f = fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    c.tensor_infos
        .iter()
        .map(|(name, info)| {
            let bytes = info.shape.elem_count() / info.ggml_dtype.block_size()
                * info.ggml_dtype.type_size();
            (
                name.clone(),
                c.tensor_data_offset + info.offset + bytes as u64,
            )
        })
        .collect()
}

#[test]
fn gguf_with_cut_tensor_data_or_bad_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("tiny-llama.gguf");
    fixture_as_gguf(&good, "llama", &[]);
    let loaded = load_model(&good, &LoadOptions::default()).expect("the intact GGUF loads");
    let info = loaded.model.info();
    assert_eq!(
        (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model),
        (3, 8, 2, 64)
    );
    assert!(info.tied_embeddings);

    // Tensor data cut in the middle of blk.1.ffn_up.weight: the first tensor the loader cannot
    // read is named (every tensor it reads before comes earlier in the file).
    let cut_name = "blk.1.ffn_up.weight";
    let ends = gguf_data_ends(&good);
    let cut_at = ends[cut_name] - 100;
    let cut = tmp.path().join("cut-data.gguf");
    fs::copy(&good, &cut).unwrap();
    truncate(&cut, cut_at);
    let err = load_err(&cut);
    match &err {
        LoadError::Gguf { file, .. } => assert_eq!(file, &cut),
        other => panic!("expected Gguf, got {other:?}"),
    }
    assert_mentions(&err, &["cut-data.gguf", cut_name]);

    // A required metadata key absent.
    let key = "llama.attention.layer_norm_rms_epsilon";
    let no_eps = tmp.path().join("no-eps.gguf");
    fixture_as_gguf(&no_eps, "llama", &[key]);
    let err = load_err(&no_eps);
    match &err {
        LoadError::Config { file, field, .. } => {
            assert_eq!(file, &no_eps);
            assert_eq!(field, key);
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(&err, &["no-eps.gguf", key]);

    // An architecture other than llama.
    let phi = tmp.path().join("phi.gguf");
    fixture_as_gguf(&phi, "phi3", &[]);
    let err = load_err(&phi);
    match &err {
        LoadError::UnsupportedArchitecture {
            file, field, name, ..
        } => {
            assert_eq!(file, &phi);
            assert_eq!(field, "general.architecture");
            assert_eq!(name, "phi3");
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
    assert_mentions(&err, &["phi.gguf", "general.architecture", "phi3"]);
}

#[test]
fn truncated_default_model_names_the_cut_tensor() {
    use circuit_sweep_worker::default_model::{FILE_NAME, MODELS_ENV};
    let models = std::env::var_os(MODELS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let real = models.join(FILE_NAME);
    if !real.is_file() {
        eprintln!(
            "skipped: {} is absent (fetched by a later CI step)",
            real.display()
        );
        return;
    }
    const CUT: u64 = 5 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join(FILE_NAME);
    let mut head = Vec::new();
    fs::File::open(&real)
        .unwrap()
        .take(CUT)
        .read_to_end(&mut head)
        .unwrap();
    fs::write(&cut, &head).unwrap();
    let err = load_err(&cut);
    match &err {
        LoadError::Gguf { file, .. } => assert_eq!(file, &cut),
        other => panic!("expected Gguf, got {other:?}"),
    }
    assert_mentions(&err, &[FILE_NAME]);
    // The tensor it names is one whose data runs past the cut.
    let msg = err.to_string();
    let ends = gguf_data_ends(&real);
    let named: Vec<&String> = ends
        .keys()
        .filter(|n| msg.contains(&format!("`{n}`")))
        .collect();
    assert_eq!(
        named.len(),
        1,
        "the message should name exactly one tensor: {msg}"
    );
    assert!(
        ends[named[0]] > CUT,
        "{} ends at {} before the cut: {msg}",
        named[0],
        ends[named[0]]
    );
}

/// A `config.json` value as usize.
fn cfg_usize(c: &Json, key: &str) -> usize {
    c[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config has no integer `{key}`")) as usize
}

#[test]
fn model_info_of_each_fixture_matches_its_config() {
    for name in ["gpt2", "llama", "llama3_sharded", "neox", "neox_sequential"] {
        let dir = fixture(name);
        let c: Json =
            serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let loaded = common::load_fixture(name);
        let i = loaded.model.info();
        assert_eq!(loaded.source, dir);
        let (arch, layers, heads, kv, d, mlp, ctx, theta, tied) =
            match c["model_type"].as_str().unwrap() {
                "gpt2" => (
                    Architecture::Gpt2,
                    cfg_usize(&c, "n_layer"),
                    cfg_usize(&c, "n_head"),
                    cfg_usize(&c, "n_head"),
                    cfg_usize(&c, "n_embd"),
                    c["n_inner"]
                        .as_u64()
                        .map_or(4 * cfg_usize(&c, "n_embd"), |n| n as usize),
                    cfg_usize(&c, "n_positions"),
                    None,
                    true,
                ),
                "llama" => (
                    Architecture::Llama,
                    cfg_usize(&c, "num_hidden_layers"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "num_key_value_heads"),
                    cfg_usize(&c, "hidden_size"),
                    cfg_usize(&c, "intermediate_size"),
                    cfg_usize(&c, "max_position_embeddings"),
                    c["rope_parameters"]["rope_theta"].as_f64(),
                    c["tie_word_embeddings"].as_bool().unwrap(),
                ),
                "gpt_neox" => (
                    Architecture::GptNeox,
                    cfg_usize(&c, "num_hidden_layers"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "num_attention_heads"),
                    cfg_usize(&c, "hidden_size"),
                    cfg_usize(&c, "intermediate_size"),
                    cfg_usize(&c, "max_position_embeddings"),
                    c["rope_parameters"]["rope_theta"].as_f64(),
                    c["tie_word_embeddings"].as_bool().unwrap(),
                ),
                other => panic!("{name}: unexpected model_type {other}"),
            };
        assert_eq!(i.architecture, arch, "{name}");
        assert_eq!(i.n_layers, layers, "{name}");
        assert_eq!(i.n_layers, 3, "{name}: the fixtures have 3 layers");
        assert_eq!(i.n_heads, heads, "{name}");
        assert_eq!(i.n_kv_heads, kv, "{name}");
        assert_eq!(i.d_model, d, "{name}");
        let d_head = c["head_dim"].as_u64().map_or(d / heads, |n| n as usize);
        assert_eq!(i.d_head, d_head, "{name}");
        assert_eq!(i.d_mlp, mlp, "{name}");
        assert_eq!(i.vocab_size, cfg_usize(&c, "vocab_size"), "{name}");
        assert_eq!(i.context_length, ctx, "{name}");
        assert_eq!(i.rope_theta, theta, "{name}");
        assert_eq!(i.tied_embeddings, tied, "{name}");
        assert_eq!(i.dtype, DType::F32, "{name}");
        // Every tensor in the fixture's files is a parameter the model uses.
        let mut params = 0u64;
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let file = p.file_name().unwrap().to_str().unwrap();
            if file.starts_with("model") && file.ends_with(".safetensors") {
                let t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
                params += t.values().map(|t| t.elem_count() as u64).sum::<u64>();
            }
        }
        assert_eq!(i.parameters, params, "{name}");
    }
}
