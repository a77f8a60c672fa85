//! Every sweep kind's `result.json` on the tiny Llama fixture, compared field by field with the
//! committed documents in `tests/fixtures/results/`, and the file names of each results folder.
//! Numbers match to 1e-9 relative on the numeric profile the documents were blessed on (the
//! same kernels: in effect bit for bit), and to 1e-4 absolute (pp, nats, logits) on another one
//! (AVX-512 against AVX2); everything else matches exactly. A change of what a run writes shows
//! up here; when it is meant, `CIRCUIT_SWEEP_BLESS=1 cargo test -p circuit-sweep-tests
//! --no-default-features --test results_golden` rewrites the documents (on the AVX2 kernels,
//! the profile every x86-64 CI machine has) and the diff goes into review.

use std::path::{Path, PathBuf};

use circuit_sweep_common::results::ResultDoc;
use circuit_sweep_coordinator::local;
use circuit_sweep_tests::{fixtures, tiny_model_with_data};
use serde_json::Value;

/// `(name, [sweep] table)`, run in this order (later cases read earlier results folders).
const CASES: &[(&str, &str)] = &[
    ("nodes", "kind = \"nodes\""),
    (
        "nodes_resample",
        "kind = \"nodes\"\n\n[ablation]\nkind = \"resample\"",
    ),
    ("prune", "kind = \"prune\"\nthresholds = [90.0, 70.0]"),
    (
        "prune_kl",
        "kind = \"prune\"\ntau = 0.02\n\n[ablation]\nmetric = \"kl\"",
    ),
    (
        "orders",
        "kind = \"orders\"\norders = 6\nseed = 3\nthreshold = 80.0",
    ),
    ("edges", "kind = \"edges\""),
    (
        "edges_kv",
        "kind = \"edges\"\ncircuit_file = \"prune/result.json\"\nkv_edges = \"kv_head\"",
    ),
    (
        "edge_prune",
        "kind = \"edge_prune\"\ncircuit_file = \"prune/result.json\"\nthreshold = 60.0",
    ),
    (
        "edge_prune_path",
        "kind = \"edge_prune\"\ncircuit_file = \"prune/result.json\"\nthreshold = 60.0\nedge_method = \"path\"",
    ),
    (
        "edge_orders",
        "kind = \"edge_prune\"\ncircuit_file = \"prune/result.json\"\nthreshold = 60.0\norders = 5\nseed = 2",
    ),
    (
        "guided_prune",
        "kind = \"prune\"\nthreshold = 80.0\ncandidates = \"attribution\"\nsteps = 3",
    ),
    (
        "guided_edge_prune",
        "kind = \"edge_prune\"\ncircuit_file = \"prune/result.json\"\nthreshold = 60.0\ncandidates = \"attribution\"\nmethod = \"eap\"",
    ),
];

fn golden_dir() -> PathBuf {
    fixtures().join("results")
}

/// The numeric profile the committed documents were computed on.
fn golden_profile() -> PathBuf {
    golden_dir().join("profile.txt")
}

/// How far two numbers may be apart: kernels of another vector width sum in another order.
#[derive(Clone, Copy, Debug)]
enum Tolerance {
    SameKernels,
    OtherKernels,
}

impl Tolerance {
    fn holds(self, x: f64, y: f64) -> bool {
        match self {
            Tolerance::SameKernels => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            Tolerance::OtherKernels => (x - y).abs() <= 1e-4,
        }
    }
}

/// `result.json` without its timing, the run's folder written as `<dir>`.
fn normalized(out: &Path, dir: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("result.json")).unwrap();
    let text = text.replace(&dir.display().to_string(), "<dir>");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("timing");
    v
}

fn file_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Where `a` and `b` differ (numbers within `tol`), as JSON paths.
fn differences(a: &Value, b: &Value, tol: Tolerance, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if !tol.holds(x, y) {
                out.push(format!("{at}: {x} vs {y}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{at}: {} vs {} items", x.len(), y.len()));
            }
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, tol, &format!("{at}[{i}]"), out);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differences(p, q, tol, &format!("{at}.{k}"), out),
                    (p, q) => out.push(format!(
                        "{at}.{k}: {} vs {}",
                        p.map_or("absent".into(), Value::to_string),
                        q.map_or("absent".into(), Value::to_string)
                    )),
                }
            }
        }
        _ if a != b => out.push(format!("{at}: {a} vs {b}")),
        _ => {}
    }
}

#[test]
fn every_sweep_kind_writes_the_committed_result() {
    let bless = std::env::var_os("CIRCUIT_SWEEP_BLESS").is_some();
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model_with_data(dir.path(), 6);
    let models = dir.path().join("models");
    let rt = circuit_sweep_tests::grpc::rt();
    let profile = circuit_sweep_worker::profile::numeric_profile("cpu");
    let tol = if bless {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(golden_profile(), format!("{profile}\n")).unwrap();
        Tolerance::SameKernels
    } else {
        let blessed = std::fs::read_to_string(golden_profile()).unwrap();
        if blessed.trim() == profile {
            Tolerance::SameKernels
        } else {
            Tolerance::OtherKernels
        }
    };
    let mut failures = vec![];
    for (name, sweep) in CASES {
        let (sweep, ablation) = sweep.split_once("\n\n").unwrap_or((sweep, ""));
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                "[model]\npath = {:?}\n\n[data]\nfile = {:?}\n\n[sweep]\n{sweep}\n\n{ablation}\n",
                model.display().to_string(),
                data.display().to_string()
            ),
        )
        .unwrap();
        let out = dir.path().join(name);
        rt.block_on(local::run(&spec, &out, 2, &models, false))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // The typed document reads every field back, and writes the same JSON.
        let raw: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        let typed =
            ResultDoc::read(&out.join("result.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            typed.to_value(),
            raw,
            "{name}: result.json through ResultDoc"
        );
        let got = serde_json::json!({
            "files": file_names(&out),
            "result": normalized(&out, dir.path()),
        });
        let path = golden_dir().join(format!("{name}.json"));
        if bless {
            std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            continue;
        }
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (bless to create it)", path.display())),
        )
        .unwrap();
        let mut diff = vec![];
        differences(&want, &got, tol, name, &mut diff);
        diff.truncate(20);
        failures.extend(diff);
    }
    assert!(
        failures.is_empty(),
        "results differ from tests/fixtures/results (committed vs now, {tol:?}):\n{}",
        failures.join("\n")
    );
}
