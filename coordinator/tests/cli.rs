//! The `circuit-sweep` binary end to end: fetch the default model with the project's own
//! command, then `predict` and `model info` as a user runs them.

mod support;

use support::{bin, fetched, fixtures, ok, with_model};

fn predict_json(prompt: &str) -> serde_json::Value {
    let out = bin()
        .arg("--models-dir")
        .arg(fetched())
        .args(["predict", "--json", "--top", "5", prompt])
        .output()
        .unwrap();
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn predict_continues_digits_with_five() {
    let v = predict_json("1 2 3 4 ");
    let tokens: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["1", " ", "2", " ", "3", " ", "4", " "]);
    let top = &v["top"][0];
    assert_eq!(top["token"], "5");
    assert_eq!(top["id"], 37);
    let p = top["prob"].as_f64().unwrap();
    assert!((p - 0.919).abs() < 0.01, "p(5) = {p}");
    assert!(top["logit"].as_f64().unwrap() > v["top"][1]["logit"].as_f64().unwrap());
    assert_eq!(v["top"].as_array().unwrap().len(), 5);
}

#[test]
fn predict_without_trailing_space_predicts_the_space_token() {
    let v = predict_json("1 2 3 4");
    assert_eq!(v["top"][0]["token"], " ");
}

#[test]
fn predict_prints_a_readable_table() {
    let out = ok(bin()
        .arg("--models-dir")
        .arg(fetched())
        .args(["predict", "--top", "3", "1 2 3 4 "])
        .output()
        .unwrap());
    assert!(out.contains("prompt tokens (8)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with('1') && l.contains("\"5\"")),
        "{out}"
    );
}

#[test]
fn model_info_of_the_default_model() {
    let out = ok(bin()
        .arg("--models-dir")
        .arg(fetched())
        .args(["model", "info", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["n_layers"], 30);
    assert_eq!(v["n_heads"], 9);
    assert_eq!(v["n_kv_heads"], 3);
    assert_eq!(v["d_model"], 576);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["parameters"], 134_515_008u64);
    assert_eq!(v["tokenizer"]["adds_bos"], false);
}

#[test]
fn model_info_of_a_fixture_folder_in_f16() {
    let dir = fixtures().join("models/neox");
    let out = ok(bin()
        .args(["model", "info", "--dtype", "f16"])
        .arg(&dir)
        .output()
        .unwrap());
    assert!(out.contains("gpt_neox") && out.contains("f16"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("layers") && l.ends_with(" 3")),
        "{out}"
    );
}

#[test]
fn a_missing_default_model_says_how_to_fetch_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("--models-dir")
        .arg(empty.path())
        .args(["predict", "1 2 3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circuit-sweep model fetch"), "{err}");
}

#[test]
fn a_broken_model_folder_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    let out = bin()
        .args(["model", "info"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("model_type") && err.contains("bert"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn flags_are_readable_from_the_environment() {
    let out = bin()
        .env("CIRCUIT_SWEEP_MODELS", fetched())
        .env("CIRCUIT_SWEEP_JSON", "true")
        .env("CIRCUIT_SWEEP_TOP", "2")
        .args(["predict", "1 2 3 4 "])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(v["top"].as_array().unwrap().len(), 2);
}

#[test]
fn a_cuda_device_in_a_cpu_build_or_without_a_gpu_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("gpu.toml");
    std::fs::write(
        &spec,
        "[model]\ndevice = \"cuda:0\"\n[data]\ntask = \"digits\"\nn = 2\n",
    )
    .unwrap();
    for args in [
        vec!["predict", "--device", "cuda:0", "1 2 "],
        vec!["worker", "--device", "cuda:0"],
        vec!["worker", "--gpus", "all"],
        vec!["run", spec.to_str().unwrap()],
    ] {
        let out = with_model().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cuda:0") || err.contains("--gpus all"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("cpu only") || err.contains("device `cuda"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn empty_or_unsendable_tokens_and_unsound_timings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("token");
    std::fs::write(&file, "a b\n").unwrap();
    let coordinator = || {
        let mut c = bin();
        c.args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
            .arg(&state)
            .env_remove("CIRCUIT_SWEEP_TOKEN");
        c
    };
    let cases: Vec<(std::process::Command, &str)> = vec![
        (
            {
                let mut c = coordinator();
                c.args(["--token", ""]);
                c
            },
            "--token (or CIRCUIT_SWEEP_TOKEN): the token is empty",
        ),
        (
            {
                let mut c = coordinator();
                c.env("CIRCUIT_SWEEP_TOKEN", "");
                c
            },
            "the token is empty",
        ),
        (
            {
                let mut c = coordinator();
                c.args(["--token", "line\nbreak"]);
                c
            },
            "the token holds '\\n'",
        ),
        (
            {
                let mut c = coordinator();
                c.arg("--token-file").arg(&file);
                c
            },
            "the token holds ' '",
        ),
        (
            {
                let mut c = coordinator();
                c.args(["--token", "ok", "--worker-token", ""]);
                c
            },
            "--worker-token (or CIRCUIT_SWEEP_WORKER_TOKEN): the token is empty",
        ),
        (
            {
                let mut c = coordinator();
                c.args(["--heartbeat-ms", "0"]);
                c
            },
            "--heartbeat-ms",
        ),
        (
            {
                let mut c = coordinator();
                c.args(["--heartbeat-ms", "1000", "--lost-after-ms", "1500"]);
                c
            },
            "--lost-after-ms 1500: must be at least twice --heartbeat-ms (1000)",
        ),
        (
            {
                let mut c = bin();
                c.args(["status", "--token", ""]);
                c
            },
            "the token is empty",
        ),
    ];
    for (mut c, needle) in cases {
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{c:?} started: {err}");
        assert!(err.contains(needle), "{c:?}: {err}");
    }
}
