//! Broken GGUF files (unreadable, cut tensor data, bad metadata, an unsupported architecture, a
//! truncated default model) end with a `LoadError` naming the file and the tensor or key.

mod broken;
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use broken::*;
use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use circuit_sweep_worker::{LoadError, LoadOptions, load_model};

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

#[test]
fn a_file_that_is_not_gguf_is_named_without_echoing_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("passwd", b"root:x:0:0:root:/root:/bin/bash\n".as_slice()),
        ("version.gguf", b"GGUFxyzw-and-more-bytes".as_slice()),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        let err = load_err(&path).to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        // Neither the bytes nor their value as a number.
        for leak in ["root", "0x746f6f72", "xyzw", "2021161080", "7a79"] {
            assert!(!err.contains(leak), "{name}: {err}");
        }
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
    use circuit_sweep_worker::default_model::FILE_NAME;
    let real = common::models_dir().join(FILE_NAME);
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
