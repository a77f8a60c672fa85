//! `circuit-sweep analyze ...` end to end on the default model: the files each analysis
//! writes, values that must hold whatever the model, and refusals that name the bad input.

mod support;

use std::path::Path;

use support::{ok, with_model};

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn logit_lens_counts_every_prompt_once_and_ends_at_the_models_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lens");
    let printed = ok(with_model()
        .args([
            "analyze",
            "logit-lens",
            "--task",
            "digits",
            "--n",
            "4",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert!(printed.contains("never top-1"), "{printed}");
    let d = json(&out.join("logit-lens.json"));
    let c = &d["counts"];
    let sum = |k: &str| -> u64 {
        c[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("first") + c["never"].as_u64().unwrap(), 4);
    assert_eq!(c["first"].as_array().unwrap().len(), 30);
    // The last layer of the lens is the model itself: its top token is `predict`'s.
    let p0 = &d["prompts"][0];
    let top = p0["top"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let pred = ok(with_model()
        .args(["predict", "--json", "--top", "1"])
        .arg(p0["prompt"].as_str().unwrap())
        .output()
        .unwrap());
    let pred: serde_json::Value = serde_json::from_str(&pred).unwrap();
    assert_eq!(pred["top"][0]["token"].as_str().unwrap(), top);
    assert!(
        std::fs::read_to_string(out.join("logit-lens.svg"))
            .unwrap()
            .starts_with("<svg")
    );
}

#[test]
fn attention_patterns_are_causal_distributions_with_token_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("att");
    let printed = ok(with_model()
        .args([
            "analyze",
            "attention",
            "--heads",
            "h21.2,h0.0",
            "--prompt",
            "1 2 3 4 ",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert!(
        printed.contains("h21.2") && printed.contains("n-1"),
        "{printed}"
    );
    let d = json(&out.join("attention.json"));
    let pats = d["patterns"][0].as_array().unwrap();
    assert_eq!(pats.len(), 2);
    for p in pats {
        let w = p["weights"].as_array().unwrap();
        assert_eq!(w.len(), 8, "8 tokens");
        for (i, row) in w.iter().enumerate() {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            assert!(row[i + 1..].iter().all(|&x| x == 0.0), "causal");
        }
    }
    let svg = std::fs::read_to_string(out.join("h21.2-prompt0.svg")).unwrap();
    assert!(
        svg.contains("7 &quot; &quot;") || svg.contains("7 \" \""),
        "token labels"
    );
    // An MLP is not a head.
    let bad = with_model()
        .args(["analyze", "attention", "--heads", "m3", "--prompt", "1 2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("m3 is an MLP"));
}

#[test]
fn ov_scores_of_every_head_on_days() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ov");
    ok(with_model()
        .args(["analyze", "ov", "--sets", "days", "--k", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    let d = json(&out.join("ov.json"));
    let s = &d["sets"]["days"]["scores"];
    let succ = s["successor"].as_array().unwrap();
    assert_eq!(succ.len(), 30);
    assert!(succ.iter().all(|r| r.as_array().unwrap().len() == 9));
    let all: Vec<f64> = succ
        .iter()
        .chain(s["copy"].as_array().unwrap())
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    assert!(all.iter().all(|x| (0.0..=100.0).contains(x)));
    assert!(all.iter().any(|&x| x > 0.0), "some head copies or moves on");
    for f in ["successor-days.svg", "copy-days.svg", "ov-days.csv"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let bad = with_model()
        .args(["analyze", "ov", "--sets", "planets"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown token set `planets`"));
}

/// The recorded scores of `cross-task.json`.
fn d_own(out: &Path) -> Vec<f64> {
    let d = json(&out.join("cross-task.json"));
    d["own_recorded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["kind"], "circuit");
            o["score"].as_f64().unwrap()
        })
        .collect()
}

/// A results folder as a pruning run writes it: the spec, the circuit and its score, the
/// prompts.
fn fake_run(
    dir: &Path,
    task: &str,
    heads: &[String],
    mlps: &[String],
    score: f64,
) -> std::path::PathBuf {
    let d = dir.join(task);
    std::fs::create_dir_all(&d).unwrap();
    ok(with_model()
        .args(["prompts", "gen", task, "--n", "4", "--seed", "2", "-o"])
        .arg(d.join("prompts.jsonl"))
        .output()
        .unwrap());
    use circuit_sweep_common::prune::PruneResult;
    use circuit_sweep_common::results::{ModelRecord, PruneRuns, ResultDoc, Timing};
    let spec = format!("[data]\ntask = \"{task}\"\nn = 4\nseed = 2\n\n[sweep]\nkind = \"prune\"\n");
    let run = PruneResult {
        threshold: Some(80.0),
        tau: None,
        heads: heads.to_vec(),
        mlps: mlps.to_vec(),
        score,
        evaluations: 0,
        passes: 0,
        decisions: vec![],
        guided: None,
    };
    let doc = ResultDoc {
        schema: circuit_sweep_common::results::SCHEMA,
        spec: circuit_sweep_common::spec::SweepSpec::parse(&spec, Path::new("spec.toml")).unwrap(),
        model: ModelRecord {
            path: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            info: serde_json::json!({}),
        },
        dataset: serde_json::json!({}),
        full: Some(1.0),
        corrupt: Some(0.0),
        empty: None,
        nodes: None,
        prune: Some(PruneRuns::of(vec![run])),
        orders: None,
        edges: None,
        edge_prune: None,
        edge_orders: None,
        downstream: None,
        attribution: None,
        faithfulness: None,
        timing: Timing {
            seconds: 0.0,
            shards: 0,
            shard_attempts: 0,
            profiles: vec![],
        },
    };
    doc.write(&d).unwrap();
    d
}

#[test]
fn cross_task_scores_every_circuit_on_every_tasks_data() {
    let dir = tempfile::tempdir().unwrap();
    // Task A's circuit is the whole model: nothing is ablated, it scores 100 on any data, and
    // the shared sub-circuit is task B's circuit.
    let all_heads: Vec<String> = (0..30)
        .flat_map(|l| (0..9).map(move |h| format!("h{l}.{h}")))
        .collect();
    let all_mlps: Vec<String> = (0..30).map(|l| format!("m{l}")).collect();
    let b_heads: Vec<String> = ["h20.8", "h21.2", "h9.4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let b_mlps: Vec<String> = all_mlps[..20].to_vec();
    // Task B's recorded score is not what its circuit scores: the data must have changed.
    let a = fake_run(dir.path(), "digits", &all_heads, &all_mlps, 100.0);
    let b = fake_run(dir.path(), "months", &b_heads, &b_mlps, 123.0);
    let out = dir.path().join("x");
    let run = with_model()
        .args(["analyze", "cross-task"])
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let warned = String::from_utf8_lossy(&run.stderr).into_owned();
    let printed = ok(run);
    assert!(printed.contains("shared by all"), "{printed}");
    assert!(printed.contains("own (recorded)"), "{printed}");
    assert!(
        warned.contains(&b.display().to_string()) && !warned.contains(&a.display().to_string()),
        "{warned}"
    );
    assert_eq!(d_own(&out), [100.0, 123.0]);
    let d = json(&out.join("cross-task.json"));
    let m: Vec<Vec<f64>> = d["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(m.len(), 4, "two circuits, shared, union");
    let full = |r: &[f64]| r.iter().all(|x| (x - 100.0).abs() < 1e-9);
    assert!(full(&m[0]), "{:?}", m[0]);
    assert!(full(&m[3]), "the union is the whole model: {:?}", m[3]);
    assert_eq!(m[2], m[1], "the shared sub-circuit is task B's circuit");
    assert!(
        m[1].iter().all(|&x| x < 100.0),
        "ablating most heads costs something"
    );
    let shared = d["overlap"]["shared"].as_array().unwrap().len();
    assert_eq!(shared, 23);
    let listed: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("shared.json")).unwrap()).unwrap();
    assert_eq!(listed.len(), 23);
    for f in ["cross-task.svg", "overlap.svg", "cross-task.csv"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("cross-task.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "circuit,digits,months,own (recorded),recorded");
    assert!(
        lines[1].ends_with(",100,circuit") && lines[3].ends_with(",,"),
        "{csv}"
    );
    // A folder without result.json is named.
    let bad = with_model()
        .args(["analyze", "cross-task"])
        .arg(&a)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("result.json"));
}
