//! `circuit-sweep run SPEC.toml` end to end: the results folder, determinism, and bad specs
//! refused before any forward pass.

mod support;

use std::path::Path;

use support::{ok, with_model};

fn run(spec: &Path, out: &Path) -> std::process::Output {
    with_model()
        .args(["run", "--quiet"])
        .arg(spec)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn without_timing(p: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("timing");
    v
}

#[test]
fn node_sweep_writes_the_results_folder_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("nodes.toml");
    std::fs::write(
        &spec,
        "[data]\ntask = \"digits\"\nn = 4\nseed = 1\n\n[sweep]\nkind = \"nodes\"\n",
    )
    .unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(&spec, &a));
    ok(run(&spec, &b));
    for f in [
        "result.json",
        "nodes_heads.csv",
        "nodes_mlps.csv",
        "nodes.safetensors",
        "heads.svg",
        "prompts.jsonl",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let ra = without_timing(&a.join("result.json"));
    assert_eq!(
        ra,
        without_timing(&b.join("result.json")),
        "same spec, same numbers"
    );
    assert_eq!(
        std::fs::read(a.join("nodes.safetensors")).unwrap(),
        std::fs::read(b.join("nodes.safetensors")).unwrap()
    );
    assert_eq!(ra["schema"], 1);
    assert_eq!(ra["dataset"]["prompts"], 4);
    let heads = ra["nodes"]["heads"].as_array().unwrap();
    assert_eq!((heads.len(), heads[0].as_array().unwrap().len()), (30, 9));
    assert_eq!(ra["nodes"]["mlps"].as_array().unwrap().len(), 30);
    assert!(ra["full"].as_f64().unwrap() > 1.0);
    // Some component matters: its ablation costs more than 5 % of the logit difference.
    let min = heads
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    let mlp_min = ra["nodes"]["mlps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(min.min(mlp_min) < 95.0, "{min} {mlp_min}");
    let csv = std::fs::read_to_string(a.join("nodes_heads.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 270);
    let svg = std::fs::read_to_string(a.join("heads.svg")).unwrap();
    assert_eq!(svg.matches("<title>").count(), 300);
}

fn refused(spec_text: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, spec_text).unwrap();
    std::fs::write(dir.path().join("empty.jsonl"), "\n").unwrap();
    std::fs::write(dir.path().join("orders.json"), r#"[["m0", "h40.2"]]"#).unwrap();
    let t0 = std::time::Instant::now();
    let out = run(&spec, &dir.path().join("out"));
    assert!(!out.status.success(), "{spec_text:?} was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{spec_text:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("out/result.json").exists());
    // Refused before any sweep: a spec error costs about one model load.
    assert!(
        t0.elapsed().as_secs() < 60,
        "{spec_text:?} took {:?}",
        t0.elapsed()
    );
}

#[test]
fn an_unknown_field_is_refused_with_its_name() {
    refused("[sweep]\nkind = \"nodes\"\nthreshhold = 80\n", "threshhold");
}

#[test]
fn a_threshold_outside_the_range_is_refused() {
    refused(
        "[sweep]\nkind = \"prune\"\nthreshold = 0\n",
        "[sweep] threshold: 0 is outside (0, 100]",
    );
}

#[test]
fn an_empty_dataset_is_refused() {
    refused(
        "[data]\nfile = \"empty.jsonl\"\n",
        "empty.jsonl: the dataset is empty",
    );
}

#[test]
fn a_dataset_with_a_pitfall_is_refused() {
    refused(
        "[data]\ntask = \"months\"\nn = 4\nlength = 1\n",
        "at least 2 members",
    );
}

#[test]
fn a_component_that_does_not_exist_is_refused() {
    // Checked against the loaded model's shape before the first forward pass.
    refused(
        "[data]\ntask = \"digits\"\nn = 2\n\n[sweep]\nkind = \"orders\"\norders_file = \"orders.json\"\n",
        "orders.json: order 0: component `h40.2` does not exist",
    );
}
