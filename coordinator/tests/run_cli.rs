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
    let pair = |clean: &str, corrupt: &str, answer: &str, wrong: &str| {
        format!(
            "{{\"clean\": \"{clean}\", \"corrupt\": \"{corrupt}\", \"answer\": \"{answer}\", \"wrong\": \"{wrong}\"}}\n"
        )
    };
    // The model continues these with 5 and 6: answer and wrong swapped.
    let swapped = pair("1 2 3 4 ", "7 3 9 1 ", "4", "5") + &pair("2 3 4 5 ", "8 1 9 2 ", "5", "6");
    std::fs::write(dir.path().join("swapped.jsonl"), swapped).unwrap();
    // A corruption of the first member only: the corrupt run keeps the whole logit difference.
    let weak = pair("1 2 3 4 5 6 7 8 ", "3 2 3 4 5 6 7 8 ", "9", "0")
        + &pair("0 1 2 3 4 5 6 7 ", "5 1 2 3 4 5 6 7 ", "8", "0");
    std::fs::write(dir.path().join("weak.jsonl"), weak).unwrap();
    // Line 2's corrupt prompt ends with another token than its clean prompt.
    let ends = pair("1 2 3 4 ", "7 3 9 1 ", "5", "4") + &pair("2 3 4 5 ", "8 1 9 27", "6", "5");
    std::fs::write(dir.path().join("ends.jsonl"), ends).unwrap();
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

#[test]
fn a_full_model_that_prefers_the_wrong_token_is_refused() {
    refused(
        "[data]\nfile = \"swapped.jsonl\"\n",
        "the full model's mean logit difference on the clean prompts is -",
    );
    refused(
        "[data]\nfile = \"swapped.jsonl\"\n",
        "prompts check FILE --filter",
    );
}

#[test]
fn a_corruption_that_removes_nothing_is_refused_with_clean_corrupt() {
    refused(
        "[data]\nfile = \"weak.jsonl\"\n[ablation]\nnormalize = \"clean_corrupt\"\n",
        "[ablation] normalize = \"clean_corrupt\": the full model's metric",
    );
}

#[test]
fn kl_pruning_takes_tau_not_a_percent_threshold() {
    refused(
        "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"prune\"\nthreshold = 80\n",
        "[sweep] threshold: a % threshold does not apply with [ablation] metric = \"kl\"",
    );
    refused(
        "[sweep]\nkind = \"orders\"\ntau = 0.01\n",
        "[sweep] tau: applies to [ablation] metric = \"kl\"",
    );
    refused(
        "[ablation]\nmetric = \"kl\"\nnormalize = \"empty\"\n",
        "[ablation] normalize: does not apply to metric = \"kl\"",
    );
}

#[test]
fn denoising_without_a_sound_meaning_is_refused() {
    refused(
        "[ablation]\ndirection = \"denoising\"\n",
        "[ablation] kind: `mean` does not apply to direction = \"denoising\"",
    );
    refused(
        "[data]\nfile = \"ends.jsonl\"\n[ablation]\nkind = \"resample\"\ndirection = \"denoising\"\n",
        "line 2 ends its clean and corrupt prompts with different tokens",
    );
}

#[test]
fn path_patching_has_no_order_study() {
    refused(
        "[sweep]\nkind = \"edge_prune\"\nedge_method = \"path\"\norders = 4\ncircuit = [\"m0\"]\n",
        "[sweep] orders: edge_method = \"path\" prunes in one pass",
    );
}

/// Edge pruning of a small circuit of the default model with KL (ACDC's rule) and with the
/// paper's path patching: the rules reach the results folder, drawings are in the metric's unit.
#[test]
fn kl_and_path_edge_pruning_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let common = "[data]\ntask = \"digits\"\nn = 4\nseed = 2\n";
    let sweep = "kind = \"edge_prune\"\ncircuit = [\"h28.3\", \"m28\", \"h29.0\", \"m29\"]\npositions = [-1]\n";
    let kl = dir.path().join("kl.toml");
    std::fs::write(
        &kl,
        format!("{common}[ablation]\nmetric = \"kl\"\n[sweep]\n{sweep}tau = 0.005\n"),
    )
    .unwrap();
    let out = dir.path().join("kl");
    ok(run(&kl, &out));
    let r = without_timing(&out.join("result.json"));
    let p = &r["edge_prune"];
    assert_eq!(p["tau"], 0.005);
    assert!(p.get("threshold").is_none());
    // ACDC's rule: each removal raised the circuit's KL by less than tau.
    let graph = r["edges"]["names"].as_array().unwrap().len();
    // The search starts from the node circuit's own KL.
    let mut current = r["edges"]["circuit_score"].as_f64().unwrap();
    for d in p["decisions"].as_array().unwrap() {
        let s = d["score"].as_f64().unwrap();
        assert_eq!(d["removed"].as_bool().unwrap(), s - current < 0.005, "{d}");
        if d["removed"].as_bool().unwrap() {
            current = s;
        }
    }
    let kept = p["edges"].as_array().unwrap().len();
    assert!(kept > 0 && kept < graph, "{kept} of {graph}");
    let svg = std::fs::read_to_string(out.join("edges.svg")).unwrap();
    assert!(svg.contains("KL (nats)"), "edges.svg is drawn in nats");
    let title = std::fs::read_to_string(out.join("edge-circuit.svg")).unwrap();
    assert!(
        title.contains("tau 0.005 nats"),
        "edge-circuit.svg names the rule"
    );
    // Every query head has its own key and value inputs: h29.0's key receiver is its own.
    let names: Vec<&str> = r["edges"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"h28.3->h29.0.k"), "{names:?}");

    let path = dir.path().join("path.toml");
    std::fs::write(
        &path,
        format!("{common}[sweep]\n{sweep}edge_method = \"path\"\nthreshold = 99.5\n"),
    )
    .unwrap();
    let out = dir.path().join("path");
    ok(run(&path, &out));
    let r = without_timing(&out.join("result.json"));
    let p = &r["edge_prune"];
    let names = r["edges"]["names"].as_array().unwrap();
    assert!(
        names
            .iter()
            .all(|n| !n.as_str().unwrap().starts_with("embed"))
    );
    // One pass: every edge decided once, kept when its path-patched score is at most 99.5 %.
    assert_eq!(p["passes"], 1);
    let decisions = p["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), names.len());
    let scores = r["edges"]["scores"].as_array().unwrap();
    for (d, s) in decisions.iter().zip(scores) {
        assert_eq!(
            d["score"], *s,
            "the prune shard's scores equal the edge shards'"
        );
        assert_eq!(d["removed"].as_bool().unwrap(), s.as_f64().unwrap() > 99.5);
    }
}

#[test]
fn an_out_path_that_is_a_file_is_refused_before_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("nodes.toml");
    std::fs::write(&spec, "[data]\ntask = \"months\"\nn = 4\n").unwrap();
    let file = dir.path().join("taken");
    std::fs::write(&file, "not a folder").unwrap();
    let out = run(&spec, &file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("taken: exists and is not a folder"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
}

/// Attribute, then verify, against plain greedy edge pruning on the same graph and rule, and
/// `compare` of the two runs.
#[test]
fn guided_edge_pruning_and_compare_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    // KL with ACDC's rule: the estimates rank by nats gained.
    let common = "[data]\ntask = \"digits\"\nn = 4\nseed = 2\n[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"edge_prune\"\ncircuit = [\"h28.3\", \"m28\", \"h29.0\", \"m29\"]\npositions = [-1]\ntau = 0.005\n";
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, common).unwrap();
    let guided = dir.path().join("guided.toml");
    std::fs::write(
        &guided,
        format!("{common}candidates = \"attribution\"\nsteps = 3\n"),
    )
    .unwrap();
    let (po, go) = (dir.path().join("plain"), dir.path().join("guided"));
    ok(run(&plain, &po));
    ok(run(&guided, &go));
    let p = without_timing(&po.join("result.json"));
    let g = without_timing(&go.join("result.json"));
    let r = &g["edge_prune"];
    assert_eq!(r["guided"]["method"], "eap_ig");
    assert_eq!(r["guided"]["steps"], 3);
    assert_eq!(r["tau"], 0.005);
    let kept = r["edges"].as_array().unwrap().len();
    let graph = r["graph_edges"].as_u64().unwrap() as usize;
    assert!(kept > 0 && kept < graph, "{kept} of {graph}");
    // No single-edge sweep, and the drawing says how the run was guided.
    assert!(g["edges"].is_null());
    let svg = std::fs::read_to_string(go.join("edge-circuit.svg")).unwrap();
    assert!(svg.contains("candidates by eap_ig"));
    let out = support::bin()
        .args(["compare", "--json"])
        .arg(&po)
        .arg(go.join("result.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    let kept = p["edge_prune"]["edges"].as_array().unwrap().len();
    let o = &v["overlap"];
    assert_eq!(
        o["both"].as_array().unwrap().len() + o["only_first"].as_array().unwrap().len(),
        kept
    );
    assert_eq!(v["first"]["evaluations"], p["edge_prune"]["evaluations"]);
    assert_eq!(v["second"]["evaluations"], r["evaluations"]);
    let text = ok(support::bin()
        .arg("compare")
        .arg(&po)
        .arg(&go)
        .output()
        .unwrap());
    assert!(
        text.contains("Jaccard") && text.contains("attribution (eap_ig, 3 steps"),
        "{text}"
    );
    // A result with no pruning run in it is refused.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(po.join("result.json")).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("edge_prune");
    let edges = dir.path().join("edges.json");
    std::fs::write(&edges, doc.to_string()).unwrap();
    let bad = support::bin()
        .arg("compare")
        .arg(&po)
        .arg(&edges)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("holds no pruning run (kind = \"edge_prune\")"),
        "{err}"
    );
}
