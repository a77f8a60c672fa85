//! `circuit-sweep mib select|import|export` end to end on MIB files written here (and, in an
//! ignored test, MIB's published example circuit, which is not redistributed: see
//! tests/fixtures/mib/README.md) and a committed results document: no model needed.

mod support;

use std::path::Path;
use std::process::Output;

use circuit_sweep_common::mib::{MibConfig, MibFile, example_fixture, import, select};
use support::{bin, fixtures, ok};

/// Runs `circuit-sweep mib ARGS...`.
fn mib(args: &[&str]) -> Output {
    bin().arg("mib").args(args).output().unwrap()
}

/// Stderr of a run that must fail.
fn refused(out: Output) -> String {
    assert!(!out.status.success(), "succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Names of the `in_graph` entries of a MIB file's `section` (`nodes` or `edges`).
fn in_graph(f: &serde_json::Value, section: &str) -> Vec<String> {
    let mut names: Vec<String> = f[section]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["in_graph"] == true)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn select_and_import_a_small_file_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // Two layers of one head (23 edges), six of them listed: a path input -> a0.h0 (through its
    // key input) -> m1 -> logits, a dead end a0.h0 -> a1.h0, m0 -> logits that nothing feeds,
    // and a weak input -> logits.
    let file = dir.path().join("small.json");
    std::fs::write(
        &file,
        r#"{"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}, "nodes": {}, "edges": {
            "input->a0.h0<k>": {"score": 5.0, "in_graph": false},
            "a0.h0->m1": {"score": -4.0, "in_graph": false},
            "m1->logits": {"score": 3.0, "in_graph": false},
            "a0.h0->a1.h0<q>": {"score": 2.5, "in_graph": false},
            "m0->logits": {"score": 2.0, "in_graph": false},
            "input->logits": {"score": 0.1, "in_graph": false}}}"#,
    )
    .unwrap();
    let selected = dir.path().join("selected.json");
    let out = mib(&[
        "select",
        path(&file),
        "--edges",
        "5",
        "--absolute",
        "-o",
        path(&selected),
    ]);
    let note = String::from_utf8_lossy(&out.stderr).into_owned();
    let printed = ok(out);
    assert!(
        printed.contains(
            "top 5 of 23 edges by absolute score; 3 lie on a path from input to logits; 4 nodes"
        ),
        "{printed}"
    );
    assert!(
        note.contains("lists 6 of the 23 edges of its graph; the others score 0"),
        "{note}"
    );
    let f = json(&selected);
    assert_eq!(f["edges"].as_object().unwrap().len(), 23);
    assert_eq!(
        in_graph(&f, "edges"),
        ["a0.h0->m1", "input->a0.h0<k>", "m1->logits"]
    );
    assert_eq!(in_graph(&f, "nodes"), ["a0.h0", "input", "logits", "m1"]);
    assert_eq!(f["edges"]["a0.h0->m1"]["score"], -4.0);

    let circuit = dir.path().join("circuit.json");
    let edges_out = dir.path().join("edges.json");
    let printed = ok(mib(&[
        "import",
        path(&selected),
        "-o",
        path(&circuit),
        "--edges-out",
        path(&edges_out),
    ]));
    assert!(printed.contains("2 heads and MLPs"), "{printed}");
    assert_eq!(json(&circuit), serde_json::json!(["h0.0", "m1"]));
    assert_eq!(
        json(&edges_out),
        serde_json::json!(["embed->h0.0.k", "h0.0->m1", "m1->logits"])
    );

    // By signed score a0.h0 -> m1 (-4) misses the top 4, and with it the only path.
    let signed = dir.path().join("signed.json");
    let printed = ok(mib(&[
        "select",
        path(&file),
        "--edges",
        "4",
        "-o",
        path(&signed),
    ]));
    assert!(
        printed.contains("top 4 of 23 edges by signed score; 0 lie on a path")
            && printed.contains("1 nodes"),
        "{printed}"
    );
    let err = refused(mib(&["import", path(&signed), "-o", path(&circuit)]));
    assert!(err.contains("no edge is in_graph"), "{err}");
}

#[test]
fn select_and_import_a_synthetic_gpt2_small_file() {
    let dir = tempfile::tempdir().unwrap();
    // GPT-2 small's graph, every edge scored pseudo-randomly (SplitMix64), nothing selected.
    let mut f = MibFile::empty(MibConfig {
        n_layers: 12,
        n_heads: 12,
        parallel_attn_mlp: false,
        d_model: 768,
        extra: vec![],
    });
    let mut state = 17u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for e in &mut f.edges {
        let unit = (next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        e.score = unit * 10f64.powi(-((next() % 9) as i32));
    }
    let scores = dir.path().join("scores.json");
    f.write(&scores).unwrap();

    let selected = dir.path().join("selected.json");
    let printed = ok(mib(&[
        "select",
        path(&scores),
        "--edges",
        "1624",
        "--absolute",
        "-o",
        path(&selected),
    ]));
    let mut want = MibFile::read(&scores).unwrap();
    let s = select::select_top(&mut want, 1624, true).unwrap();
    assert!(s.kept > 0 && s.kept < 1624, "{s:?}");
    assert!(
        printed.contains(&format!(
            "top 1624 of 32491 edges by absolute score; {} lie on a path",
            s.kept
        )) && printed.contains(&format!("{} nodes", s.nodes)),
        "{printed}"
    );
    // The library's selection, written as MIB writes it; selecting again changes nothing.
    let written = std::fs::read(&selected).unwrap();
    assert_eq!(written, want.to_json().unwrap().as_bytes());
    let again = dir.path().join("again.json");
    ok(mib(&[
        "select",
        path(&selected),
        "--edges",
        "1624",
        "--absolute",
        "-o",
        path(&again),
    ]));
    assert_eq!(std::fs::read(&again).unwrap(), written);

    let circuit = dir.path().join("circuit.json");
    let printed = ok(mib(&["import", path(&selected), "-o", path(&circuit)]));
    let c = import::import(&want).unwrap();
    assert!(
        printed.contains(&format!("{} heads and MLPs", c.components.len()))
            && printed.contains(&format!("{} edges written", s.kept)),
        "{printed}"
    );
    assert_eq!(json(&circuit), serde_json::to_value(&c.components).unwrap());
    assert_eq!(
        json(&dir.path().join("circuit-edges.json")),
        serde_json::to_value(&c.edges).unwrap()
    );

    let too_many = dir.path().join("x.json");
    let err = refused(mib(&[
        "select",
        path(&scores),
        "--edges",
        "40000",
        "-o",
        path(&too_many),
    ]));
    assert!(err.contains("top 40000 edges of a graph of 32491"), "{err}");
}

#[test]
#[ignore = "needs MIB's ioi-eap-ig.json, not redistributed here: see tests/fixtures/mib/README.md"]
fn select_reproduces_mibs_example_and_import_makes_it_ours() {
    let example = example_fixture();
    let dir = tempfile::tempdir().unwrap();
    let selected = dir.path().join("selected.json");
    let printed = ok(mib(&[
        "select",
        path(&example),
        "--edges",
        "800",
        "--absolute",
        "-o",
        path(&selected),
    ]));
    assert!(
        printed.contains("top 800 of 32491 edges by absolute score; 756 lie on a path")
            && printed.contains("81 nodes"),
        "{printed}"
    );
    // MIB's own circuit, written as MIB writes it.
    assert_eq!(
        std::fs::read(&selected).unwrap(),
        std::fs::read(&example).unwrap()
    );

    let circuit = dir.path().join("circuit.json");
    let printed = ok(mib(&["import", path(&selected), "-o", path(&circuit)]));
    assert!(printed.contains("79 heads and MLPs"), "{printed}");
    let components = json(&circuit);
    assert_eq!(components.as_array().unwrap().len(), 79);
    assert!(components.as_array().unwrap().contains(&"h9.9".into()));
    let edges = json(&dir.path().join("circuit-edges.json"));
    assert_eq!(edges.as_array().unwrap().len(), 756);
    assert!(edges.as_array().unwrap().contains(&"h9.9->logits".into()));

    let too_many = dir.path().join("x.json");
    let err = refused(mib(&[
        "select",
        path(&example),
        "--edges",
        "40000",
        "-o",
        path(&too_many),
    ]));
    assert!(err.contains("top 40000 edges of a graph of 32491"), "{err}");
}

#[test]
fn export_writes_a_runs_edge_scores_for_mib() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut result = json(&fixtures().join("results/edges.json"))["result"].clone();
    // The golden documents leave out the timing, the one part that differs between runs.
    result["timing"] = serde_json::json!({"seconds": 1.0, "shards": 1, "shard_attempts": 1});
    std::fs::write(run.join("result.json"), result.to_string()).unwrap();

    let exported = dir.path().join("mib.json");
    let printed = ok(mib(&["export", path(&run), "-o", path(&exported)]));
    assert!(printed.contains("802 edges from `edges`"), "{printed}");
    let f = json(&exported);
    assert_eq!(f["cfg"]["n_layers"], 3);
    assert_eq!(f["cfg"]["n_key_value_heads"], 2);
    let edges = f["edges"].as_object().unwrap();
    assert_eq!(edges.len(), 802);
    assert!(edges.values().all(|e| e["in_graph"] == false));
    // Our first edge, `embed->h0.0.q`, ablated alone: (100 - score) x full / 100.
    let (ours, full) = (
        result["edges"]["scores"][0].as_f64().unwrap(),
        result["full"].as_f64().unwrap(),
    );
    let score = edges["input->a0.h0<q>"]["score"].as_f64().unwrap();
    assert!(
        (score - (100.0 - ours) * full / 100.0).abs() < 1e-12,
        "{score}"
    );

    // The export selects like any MIB file.
    let top = dir.path().join("top40.json");
    let printed = ok(mib(&[
        "select",
        path(&exported),
        "--edges",
        "40",
        "-o",
        path(&top),
    ]));
    assert!(
        printed.contains("top 40 of 802 edges by signed score"),
        "{printed}"
    );

    // A folder without result.json.
    let y = dir.path().join("y.json");
    let err = refused(mib(&["export", path(dir.path()), "-o", path(&y)]));
    assert!(err.contains("result.json"), "{err}");
}
