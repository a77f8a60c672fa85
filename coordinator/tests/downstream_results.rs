//! The results folder of a downstream study, aggregated from constructed shard results: it
//! records which ablation the accuracies were measured under.

use std::path::Path;

use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::results::Timing;
use circuit_sweep_common::shard::JobMeta;
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_coordinator::aggregate::{Collected, write};

/// Aggregates a study of the circuit {h1.0, m0} and two random sets on one task of a
/// 2-layer, 2-head model under `kind` ablation; returns the folder and `result.json`.
fn aggregate(kind: &str) -> (tempfile::TempDir, serde_json::Value) {
    let text = format!(
        "[ablation]\nkind = \"{kind}\"\n[sweep]\nkind = \"downstream\"\ncircuit = [\"h1.0\", \"m0\"]\n\
         random_sets = 2\n[downstream]\ntasks = [\"add1\"]\nn = 4"
    );
    let spec = SweepSpec::parse(&text, Path::new("spec.toml")).unwrap();
    let meta = JobMeta::synthetic("models/tiny", 2, 2);
    let inputs = JobInputs::resolve(&spec, meta.model_shape(), &mut |p| {
        Err(format!("{}: no files", p.display()))
    })
    .unwrap();
    let c = Collected {
        meta: Some(meta),
        // Full model, circuit heads, two random sets.
        downstream: vec![vec![100.0], vec![25.0], vec![75.0], vec![50.0]],
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let timing = Timing {
        seconds: 1.0,
        shards: 2,
        shard_attempts: 2,
        profiles: vec![],
    };
    let doc = write(&spec, &inputs, &c, timing, dir.path())
        .unwrap()
        .to_value();
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(doc, on_disk);
    (dir, doc)
}

#[test]
fn a_downstream_result_records_zero_ablation() {
    let (dir, doc) = aggregate("zero");
    let d = &doc["downstream"];
    assert_eq!(d["ablation"], "zero");
    assert!(d.get("mean_over").is_none());
    assert_eq!(d["sets"][1]["accuracy"]["add1"], 25.0);
    let csv = std::fs::read_to_string(dir.path().join("downstream.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "set,components,add1,ablation");
    assert_eq!(lines[2], "circuit heads,h1.0,25,zero");
    let svg = std::fs::read_to_string(dir.path().join("downstream.svg")).unwrap();
    assert!(svg.contains("with heads zero-ablated"), "{svg}");
}

#[test]
fn a_downstream_result_says_its_mean_is_over_every_position_of_every_prompt() {
    let (dir, doc) = aggregate("mean");
    let d = &doc["downstream"];
    assert_eq!(d["ablation"], "mean");
    let over = d["mean_over"].as_str().unwrap();
    assert!(
        over.contains("every position of every prompt")
            && over.contains("same value at every position"),
        "{over}"
    );
    let csv = std::fs::read_to_string(dir.path().join("downstream.csv")).unwrap();
    assert!(csv.lines().skip(1).all(|l| l.ends_with(",mean")), "{csv}");
    let svg = std::fs::read_to_string(dir.path().join("downstream.svg")).unwrap();
    assert!(svg.contains("with heads mean-ablated"), "{svg}");
}
