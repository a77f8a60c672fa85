//! A coordinator and workers in one process, over real gRPC on loopback ports: three workers
//! give the numbers of one, bit for bit; refused workers and malformed score streams leave the
//! job unaffected.

use std::path::{Path, PathBuf};

use circuit_sweep_coordinator::local::{self, LocalCluster, LocalConfig};
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::auth;
use circuit_sweep_proto::tensor::WireTensor;
use circuit_sweep_proto::v1::LeaseRequest;
use circuit_sweep_tests::grpc::{Coordinator, info, lease, put, register, rt};
use circuit_sweep_tests::{results_folder as folder, tiny_model_with_data};

fn spec(dir: &Path, name: &str, sweep: &str) -> PathBuf {
    let (model, data) = tiny_model_with_data(dir, 6);
    let text = format!(
        "[model]\npath = {model:?}\n\n[data]\nfile = {data:?}\n\n[sweep]\n{sweep}\n",
        model = model.display().to_string(),
        data = data.display().to_string()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The `result.json` of a results folder in `dir`.
fn folder_doc(dir: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(name).join("result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn three_workers_give_the_numbers_of_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let cases = [
        ("nodes", "kind = \"nodes\""),
        ("prune", "kind = \"prune\"\nthresholds = [90.0, 70.0]"),
        (
            "orders",
            "kind = \"orders\"\norders = 20\nseed = 3\nthreshold = 80.0",
        ),
        // Batches until every frequency is known to +-0.1, at most 96 orders: more than the
        // first batch of 64.
        (
            "orders_auto",
            "kind = \"orders\"\norders = \"auto\"\nci_width = 0.1\nmax_orders = 96\nseed = 3\nthreshold = 80.0",
        ),
        ("edges", "kind = \"edges\""),
        // Restricted to the 70% circuit of the pruning case above.
        (
            "edge_prune",
            "kind = \"edge_prune\"\ncircuit_file = \"prune-1/result.json\"\nthreshold = 60.0",
        ),
        // Attribute, then verify, on the same graph and rule as edge_prune.
        (
            "guided_edge_prune",
            "kind = \"edge_prune\"\ncircuit_file = \"prune-1/result.json\"\nthreshold = 60.0\ncandidates = \"attribution\"\nsteps = 3",
        ),
        (
            "guided_prune",
            "kind = \"prune\"\nthresholds = [90.0, 70.0]\ncandidates = \"attribution\"\nmethod = \"eap\"",
        ),
        (
            "edge_orders",
            "kind = \"edge_prune\"\ncircuit_file = \"prune-1/result.json\"\nthreshold = 60.0\norders = 6\nseed = 2",
        ),
        (
            "edge_orders_auto",
            "kind = \"edge_prune\"\ncircuit_file = \"prune-1/result.json\"\nthreshold = 60.0\norders = \"auto\"\nci_width = 0.2\nmax_orders = 20\nseed = 2",
        ),
        (
            "attribution",
            "kind = \"attribution\"\nmethod = \"eap_ig\"\nsteps = 3",
        ),
        ("eap", "kind = \"attribution\"\nmethod = \"eap\""),
        (
            "eap_ig_one_step",
            "kind = \"attribution\"\nmethod = \"eap_ig\"\nsteps = 1",
        ),
        (
            "attribution_nodes",
            "kind = \"attribution\"\nover = \"nodes\"",
        ),
        // Curves of the attribution and the exact single-edge scores above.
        (
            "faithfulness",
            "kind = \"faithfulness\"\nscores_files = [\"attribution-1/result.json\", \"edges-1/result.json\"]",
        ),
    ];
    let rt = rt();
    for (name, sweep) in cases {
        eprintln!("{name}");
        let spec = spec(dir.path(), name, sweep);
        let one = dir.path().join(format!("{name}-1"));
        let three = dir.path().join(format!("{name}-3"));
        let a = rt
            .block_on(local::run(&spec, &one, 1, &models, false))
            .unwrap();
        let b = rt
            .block_on(local::run(&spec, &three, 3, &models, false))
            .unwrap();
        assert_eq!(
            folder(&one),
            folder(&three),
            "{name}: 1 worker vs 3 workers"
        );
        assert!(a["full"].as_f64().unwrap() > 0.5, "{name}: {}", a["full"]);
        match name {
            "nodes" => assert_eq!(b["nodes"]["heads"].as_array().unwrap().len(), 3),
            "prune" => {
                let runs = b["prune"].as_array().unwrap();
                assert_eq!(runs.len(), 2);
                assert!(runs[1]["score"].as_f64().unwrap() > 70.0);
            }
            "edges" => {
                let names = b["edges"]["names"].as_array().unwrap();
                let scores = b["edges"]["scores"].as_array().unwrap();
                assert_eq!(names.len(), scores.len());
                assert!(names.len() > 200, "{}", names.len());
                assert!(
                    scores
                        .iter()
                        .any(|s| (s.as_f64().unwrap() - 100.0).abs() > 0.5)
                );
                assert!(b["timing"]["shards"].as_u64().unwrap() > 3);
            }
            "edge_prune" => {
                let r = &b["edge_prune"];
                assert!(r["score"].as_f64().unwrap() > 60.0, "{r}");
                assert!(b["edges"]["circuit_score"].as_f64().unwrap() > 70.0);
                let kept = r["edges"].as_array().unwrap().len();
                assert!(kept > 0 && kept < r["graph_edges"].as_u64().unwrap() as usize);
                assert!(three.join("edge-circuit.svg").exists());
            }
            "guided_edge_prune" => {
                let r = &b["edge_prune"];
                assert!(r["score"].as_f64().unwrap() > 60.0, "{r}");
                assert_eq!(r["guided"]["method"], "eap_ig");
                assert_eq!(r["guided"]["steps"], 3);
                let n = r["graph_edges"].as_u64().unwrap();
                assert_eq!(r["guided"]["greedy_at_least"].as_u64().unwrap(), n);
                let plain = folder_doc(dir.path(), "edge_prune-1");
                assert_eq!(plain["edge_prune"]["graph_edges"].as_u64().unwrap(), n);
                let (guided, greedy) = (
                    r["evaluations"].as_u64().unwrap(),
                    plain["edge_prune"]["evaluations"].as_u64().unwrap(),
                );
                // On this small graph most edges stay, so blocks rarely pay: the numbers are
                // for the log; the saving is measured on the default model (README).
                eprintln!("guided: {guided} evaluations, plain greedy {greedy}, {n} edges");
                // No sweep of single-edge scores: the prepare shard and the run.
                assert!(b["edges"].is_null());
                assert_eq!(b["timing"]["shards"], 2);
                assert!(three.join("edge-circuit.svg").exists());
            }
            "guided_prune" => {
                let runs = b["prune"].as_array().unwrap();
                assert_eq!(runs.len(), 2);
                assert!(runs[1]["score"].as_f64().unwrap() > 70.0);
                assert_eq!(runs[0]["guided"]["method"], "eap");
                // The second rule starts from the first rule's circuit.
                let first = runs[0]["heads"].as_array().unwrap().len()
                    + runs[0]["mlps"].as_array().unwrap().len();
                assert_eq!(
                    runs[1]["guided"]["greedy_at_least"].as_u64().unwrap() as usize,
                    first
                );
            }
            "attribution" => {
                let a = &b["attribution"];
                let edges = b["attribution"]["names"].as_array().unwrap().len();
                assert_eq!(a["scores"].as_array().unwrap().len(), edges);
                assert!(edges > 200, "{edges}");
                assert_eq!(a["steps"], 3);
                // Prompts in ranges: two shards of the six prompts after the prepare shard.
                assert_eq!(b["timing"]["shards"], 3);
                let nodes = a["nodes"]["scores"].as_array().unwrap();
                assert_eq!(nodes.len(), 1 + 3 * (8 + 1));
                assert!(three.join("attribution.svg").exists());
            }
            "eap_ig_one_step" => {
                // One integration step is EAP: the same passes, the same numbers.
                assert_eq!(
                    b["attribution"]["scores"],
                    folder_doc(dir.path(), "eap-1")["attribution"]["scores"]
                );
            }
            "attribution_nodes" => {
                let names = b["attribution"]["names"].as_array().unwrap();
                assert_eq!(names[0], "embed");
                assert_eq!(names.len(), 1 + 3 * (8 + 1));
                assert!(b["attribution"]["nodes"].is_null());
            }
            "eap" => assert_eq!(b["attribution"]["method"], "eap"),
            "faithfulness" => {
                let f = &b["faithfulness"];
                let curves = f["curves"].as_array().unwrap();
                assert_eq!(curves.len(), 4);
                let total = f["graph_edges"].as_u64().unwrap();
                for c in curves {
                    let fs = c["faithfulness"].as_array().unwrap();
                    let kept = c["edges"].as_array().unwrap();
                    assert_eq!(fs.len(), 10);
                    // The whole graph is the full model, no edge the empty circuit: 1 and 0
                    // by construction.
                    assert_eq!(kept[9].as_u64().unwrap(), total);
                    assert_eq!(fs[9].as_f64().unwrap(), 1.0, "{c}");
                    for (k, x) in kept.iter().zip(fs) {
                        if k.as_u64().unwrap() == 0 {
                            assert_eq!(x.as_f64().unwrap(), 0.0, "{c}");
                        }
                    }
                    assert!(c["cpr"].as_f64().unwrap().is_finite());
                }
                assert!(three.join("faithfulness.svg").exists());
            }
            "edge_orders" => {
                let st = &b["edge_orders"];
                assert_eq!(st["runs"].as_array().unwrap().len(), 6);
                let j = st["jaccard_mean"].as_f64().unwrap();
                assert!(j > 0.0 && j <= 1.0, "{st}");
                assert!(!st["union"].as_array().unwrap().is_empty());
                assert!(three.join("edge-frequency.svg").exists());
                // Its consensus, scored after the orders: prepare, the single-edge scores,
                // shards of 4 and 2 orders, then it.
                assert!(st["consensus"]["score"].as_f64().unwrap().is_finite());
                assert_eq!(b["timing"]["shards"], 5);
                assert!(st["auto"].is_null());
            }
            "edge_orders_auto" => {
                let st = &b["edge_orders"];
                let k = st["runs"].as_array().unwrap().len();
                let a = &st["auto"];
                eprintln!("edge_orders_auto: {k} orders, {a}");
                // A first batch of 16; more only while some interval is too wide.
                assert!(k == 16 || k == 20, "{k}");
                let widest = a["widest"].as_f64().unwrap();
                assert_eq!(a["converged"].as_bool().unwrap(), widest <= 0.2, "{a}");
                assert_eq!(k == 16, widest <= 0.2, "{a}");
                assert!(st["consensus"]["score"].as_f64().unwrap().is_finite());
            }
            "orders_auto" => {
                let st = &b["orders"];
                let k = st["runs"].as_array().unwrap().len();
                let a = &st["auto"];
                eprintln!("orders_auto: {k} orders, {a}");
                assert!((80..=96).contains(&k) && k.is_multiple_of(16), "{k}");
                let widest = a["widest"].as_f64().unwrap();
                assert_eq!(a["converged"].as_bool().unwrap(), widest <= 0.1, "{a}");
                // Below the cap it stopped because it converged.
                assert!(k == 96 || widest <= 0.1, "{a}");
                // Every frequency's interval is as wide as the study says, or narrower.
                for (_, ci) in st["frequency_ci"].as_object().unwrap() {
                    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
                    assert!((hi - lo) / 2.0 <= widest + 1e-12, "{ci}");
                }
                // The consensus is what at least half of the orders keep, scored.
                let freq = st["frequency"].as_object().unwrap();
                let consensus: Vec<&str> = st["consensus"]["components"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect();
                for (c, f) in freq {
                    assert_eq!(
                        consensus.contains(&c.as_str()),
                        f.as_f64().unwrap() >= 0.5,
                        "{c}"
                    );
                }
                assert!(st["consensus"]["score"].as_f64().unwrap().is_finite());
            }
            _ => {
                assert_eq!(b["orders"]["runs"].as_array().unwrap().len(), 20);
                // 20 orders make shards of 16 and 4 after the prepare shard, then the paper
                // schedule's run, then the consensus.
                assert_eq!(b["timing"]["shards"], 5);
                assert!(b["orders"]["auto"].is_null());
                let score = b["orders"]["consensus"]["score"].as_f64().unwrap();
                // A circuit some order kept scores what that order's run scored.
                let runs = b["orders"]["runs"].as_array().unwrap();
                let consensus = &b["orders"]["consensus"]["components"];
                for r in runs {
                    let mut kept: Vec<serde_json::Value> = r["heads"].as_array().unwrap().clone();
                    kept.extend(r["mlps"].as_array().unwrap().iter().cloned());
                    let mut kept: Vec<&str> = kept.iter().map(|c| c.as_str().unwrap()).collect();
                    let mut want: Vec<&str> = consensus
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap())
                        .collect();
                    kept.sort();
                    want.sort();
                    if kept == want {
                        assert_eq!(r["score"].as_f64().unwrap(), score);
                    }
                }
                let p = &b["orders"]["paper"];
                let q = p["size_quantile"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&q), "{p}");
                assert!(p["score"].as_f64().unwrap() > 80.0, "{p}");
            }
        }
    }
}

#[test]
fn an_extended_order_study_equals_the_larger_study_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let rt = rt();
    let run = |name: &str, sweep: &str| {
        let spec = spec(dir.path(), name, sweep);
        rt.block_on(local::run(&spec, &dir.path().join(name), 1, &models, false))
    };
    let study = "kind = \"orders\"\nseed = 5\nthreshold = 80.0\n";
    let first = run("first", &format!("{study}orders = 6")).unwrap();
    let extended = run(
        "extended",
        &format!("{study}orders = 20\nextends = \"first/result.json\""),
    )
    .unwrap();
    let at_once = run("at_once", &format!("{study}orders = 20")).unwrap();
    assert_eq!(extended["orders"]["runs"].as_array().unwrap().len(), 20);
    assert_eq!(extended["orders"], at_once["orders"]);
    // The extension ran the 14 new orders (one shard) and the paper schedule after prepare.
    assert_eq!(extended["timing"]["shards"], 4);
    assert_eq!(at_once["timing"]["shards"], 5);
    // An extension of the extension continues the same stream.
    let again = run(
        "again",
        &format!("{study}orders = 22\nextends = \"extended/result.json\""),
    )
    .unwrap();
    let direct = run("direct", &format!("{study}orders = 22")).unwrap();
    assert_eq!(again["orders"], direct["orders"]);
    // `auto` extends a study too: its runs continue the same stream until its rule stops it.
    let auto = run(
        "auto",
        &format!(
            "{study}orders = \"auto\"\nci_width = 0.15\nmax_orders = 40\nextends = \"first/result.json\""
        ),
    )
    .unwrap();
    let runs = auto["orders"]["runs"].as_array().unwrap();
    let a = &auto["orders"]["auto"];
    eprintln!("auto extension: {} orders, {a}", runs.len());
    assert!(runs.len() > 6 && runs.len() <= 40, "{}", runs.len());
    assert_eq!(runs[..6], first["orders"]["runs"].as_array().unwrap()[..]);
    let n = runs.len().min(22);
    assert_eq!(runs[..n], direct["orders"]["runs"].as_array().unwrap()[..n]);
    let widest = a["widest"].as_f64().unwrap();
    assert_eq!(a["converged"].as_bool().unwrap(), widest <= 0.15, "{a}");
    assert!(runs.len() == 40 || widest <= 0.15, "{a}");
    // Edge order studies extend the same way.
    let edge = "kind = \"edge_prune\"\ncircuit = [\"h0.1\", \"h0.5\", \"m0\", \"h1.2\", \"m1\", \"h2.3\", \"m2\"]\nthreshold = 60.0\nseed = 2\n";
    let edge_first = run("edge_first", &format!("{edge}orders = 3")).unwrap();
    let extended = run(
        "edge_extended",
        &format!("{edge}orders = 7\nextends = \"edge_first/result.json\""),
    )
    .unwrap();
    let at_once = run("edge_at_once", &format!("{edge}orders = 7")).unwrap();
    assert_eq!(extended["edge_orders"]["runs"].as_array().unwrap().len(), 7);
    assert_eq!(extended["edge_orders"], at_once["edge_orders"]);
    // `auto` goes on from it by its rule.
    let auto = run(
        "edge_auto",
        &format!(
            "{edge}orders = \"auto\"\nci_width = 0.2\nmax_orders = 12\nextends = \"edge_first/result.json\""
        ),
    )
    .unwrap();
    let runs = auto["edge_orders"]["runs"].as_array().unwrap();
    let a = &auto["edge_orders"]["auto"];
    eprintln!("edge auto extension: {} orders, {a}", runs.len());
    assert!(runs.len() > 3 && runs.len() <= 12, "{}", runs.len());
    let n = runs.len().min(7);
    assert_eq!(
        runs[..n],
        at_once["edge_orders"]["runs"].as_array().unwrap()[..n]
    );
    assert_eq!(
        runs[..3],
        edge_first["edge_orders"]["runs"].as_array().unwrap()[..]
    );
    let widest = a["widest"].as_f64().unwrap();
    assert!(runs.len() == 12 || widest <= 0.2, "{a}");
    // The edge graph itself is checked, so the node circuit may come from a file now.
    std::fs::write(
        dir.path().join("edge_circuit.json"),
        r#"["h0.1", "h0.5", "m0", "h1.2", "m1", "h2.3", "m2"]"#,
    )
    .unwrap();
    let from_file = edge.replace(
        "circuit = [\"h0.1\", \"h0.5\", \"m0\", \"h1.2\", \"m1\", \"h2.3\", \"m2\"]",
        "circuit_file = \"edge_circuit.json\"",
    );
    assert_ne!(from_file, edge);
    let moved = run(
        "edge_from_file",
        &format!("{from_file}orders = 7\nextends = \"edge_first/result.json\""),
    )
    .unwrap();
    assert_eq!(moved["edge_orders"], at_once["edge_orders"]);
    let err = format!(
        "{:#}",
        run(
            "edge_node_study",
            &format!("{edge}orders = 7\nextends = \"first/result.json\""),
        )
        .unwrap_err()
    );
    assert!(err.contains("its [sweep] differs"), "{err}");
    run("edge_single", edge).unwrap();
    let err = format!(
        "{:#}",
        run(
            "edge_of_single",
            &format!("{edge}orders = 7\nextends = \"edge_single/result.json\""),
        )
        .unwrap_err()
    );
    assert!(
        err.contains("not the result of an edge order study"),
        "{err}"
    );
    // A tampered earlier run is refused: one keeping what the model lacks, an edge run pruned
    // in another order (every edge run records its order's fingerprint).
    let tamper = |from: &str, to: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut doc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(from).join("result.json")).unwrap(),
        )
        .unwrap();
        edit(&mut doc);
        std::fs::create_dir_all(dir.path().join(to)).unwrap();
        std::fs::write(
            dir.path().join(to).join("result.json"),
            serde_json::to_string(&doc).unwrap(),
        )
        .unwrap();
    };
    tamper("first", "tampered", &|d| {
        d["orders"]["runs"][0]["heads"]
            .as_array_mut()
            .unwrap()
            .push("h9.99".into())
    });
    let prints: Vec<&str> = edge_first["edge_orders"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["order"].as_str().unwrap())
        .collect();
    assert_eq!(prints.len(), 3);
    assert!(
        prints[0] != prints[1] && prints[1] != prints[2],
        "{prints:?}"
    );
    tamper("edge_first", "edge_tampered", &|d| {
        let runs = d["edge_orders"]["runs"].as_array_mut().unwrap();
        runs.swap(1, 2);
    });
    let err = format!(
        "{:#}",
        run(
            "edge_of_tampered",
            &format!("{edge}orders = 7\nextends = \"edge_tampered/result.json\""),
        )
        .unwrap_err()
    );
    assert!(
        err.contains("its run 1 was not pruned in order 1 of seed 2 over this graph"),
        "{err}"
    );
    for (name, sweep, why) in [
        (
            "of_tampered",
            format!("{study}orders = 9\nextends = \"tampered/result.json\""),
            "its run 0 keeps h9.99, not a component of this model",
        ),
        (
            "same",
            format!("{study}orders = 6\nextends = \"first/result.json\""),
            "already has 6 orders",
        ),
        (
            "other_rule",
            "kind = \"orders\"\nseed = 5\nthreshold = 70.0\norders = 9\nextends = \"first/result.json\"".to_string(),
            "its [sweep] differs",
        ),
        (
            "not_a_study",
            format!("{study}orders = 9\nextends = \"at_once/prompts.jsonl\""),
            "extends",
        ),
    ] {
        let err = format!("{:#}", run(name, &sweep).unwrap_err());
        assert!(err.contains(why), "{name}: {err}");
    }
}

#[test]
fn refused_workers_and_malformed_streams_leave_the_job_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let spec = spec(dir.path(), "nodes", "kind = \"nodes\"");
    let clean_out = dir.path().join("clean");
    let rt = rt();
    rt.block_on(local::run(&spec, &clean_out, 1, &models, false))
        .unwrap();
    let out = dir.path().join("out");
    rt.block_on(async {
        let cluster = LocalCluster::start(LocalConfig {
            state_dir: dir.path().join("state"),
            models_dir: models.clone(),
            workers: 0,
            token: Some("right".into()),
            memory_budget: u64::MAX,
            device: "cpu".into(),
        })
        .await
        .unwrap();
        // A wrong token, and no token at all.
        for token in [Some("wrong"), None] {
            let mut bad = auth::connect(&cluster.url, token).await.unwrap();
            let e = bad.register(info(PROTOCOL_VERSION)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        }
        let mut c = cluster.client().await.unwrap();
        // Another protocol version.
        let e = c.register(info(PROTOCOL_VERSION + 1)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("protocol version"), "{e:?}");
        let sub = circuit_sweep_coordinator::client::Submission::from_file(&spec).unwrap();
        let job = circuit_sweep_coordinator::client::submit(&mut c, &sub)
            .await
            .unwrap();
        let w = register(&mut c).await;
        // Wrong length: the header promises more bytes than arrive.
        let l = lease(&mut c, &w).await;
        let mut chunks = WireTensor::f64("heads", &[2], &[1.0, 2.0]).chunks(8);
        chunks.pop();
        let e = put(&mut c, &w, &l.lease_id, chunks).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("malformed score stream"), "{e:?}");
        // NaN.
        let l = lease(&mut c, &w).await;
        assert_eq!(l.shard, 0, "the refused shard is queued again");
        let chunks = WireTensor::f64("heads", &[2], &[1.0, f64::NAN]).chunks(1 << 20);
        let e = put(&mut c, &w, &l.lease_id, chunks).await.unwrap_err();
        assert!(e.message().contains("NaN"), "{e:?}");
        // A well-formed stream that does not fit the shard (no `meta`, a shape mismatch).
        let l = lease(&mut c, &w).await;
        let chunks = WireTensor::f64("heads", &[3, 8], &[100.0; 24]).chunks(1 << 20);
        let e = put(&mut c, &w, &l.lease_id, chunks).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("meta"), "{e:?}");
        // Three refusals: the worker is dropped, and unknown from now on.
        let e = c
            .lease(LeaseRequest {
                worker_id: w.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        // Someone else's lease.
        let w = register(&mut c).await;
        let l = lease(&mut c, &w).await;
        let other = register(&mut c).await;
        let chunks = WireTensor::json("meta", "{}".into()).chunks(1 << 20);
        let e = put(&mut c, &other, &l.lease_id, chunks).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // The fake worker leaves; a real one does the job.
        c.goodbye(circuit_sweep_proto::v1::GoodbyeRequest {
            worker_id: w.clone(),
        })
        .await
        .unwrap();
        let status = circuit_sweep_coordinator::client::status(&mut c, Some(job))
            .await
            .unwrap();
        assert_eq!(status.jobs[0].state, "queued");
        let cache = std::sync::Arc::new(circuit_sweep_worker::resident::ModelCache::new(u64::MAX));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let real = tokio::spawn(circuit_sweep_worker::agent::run(
            circuit_sweep_worker::agent::AgentConfig {
                coordinator: cluster.url.clone(),
                token: Some("right".into()),
                tls: Default::default(),
                name: "real".into(),
                device: "cpu".into(),
                threads: 1,
                models_dir: models.clone(),
                models: Default::default(),
                work_dir: dir.path().join("work"),
                health: None,
                exit_when_idle: None,
            },
            cache,
            rx,
        ));
        circuit_sweep_coordinator::client::wait(&mut c, job, false)
            .await
            .unwrap();
        circuit_sweep_coordinator::client::download(&mut c, job, &out)
            .await
            .unwrap();
        stop.send(true).unwrap();
        let done = real.await.unwrap().unwrap();
        assert_eq!(done.shards_failed, 0);
        cluster.stop().await.unwrap();
    });
    assert_eq!(folder(&clean_out), folder(&out));
}

#[test]
fn a_worker_token_cannot_submit_or_read_results() {
    use circuit_sweep_coordinator::server::ServerConfig;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.client_tokens = vec!["client-secret".into()];
        cfg.worker_tokens = vec!["worker-secret".into()];
        let coordinator = Coordinator::start(cfg).await;
        let mut worker = coordinator.client(Some("worker-secret")).await;
        worker.register(info(PROTOCOL_VERSION)).await.unwrap();
        let denied = |r: Result<(), tonic::Status>| {
            let e = r.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        };
        denied(
            worker
                .status(circuit_sweep_proto::v1::StatusRequest { job_id: 0 })
                .await
                .map(|_| ()),
        );
        denied(
            worker
                .results(circuit_sweep_proto::v1::ResultsRequest { job_id: 1 })
                .await
                .map(|_| ()),
        );
        denied(
            worker
                .submit(circuit_sweep_proto::v1::SubmitRequest {
                    protocol_version: PROTOCOL_VERSION,
                    name: "x".into(),
                    spec_toml: String::new(),
                    attachments: vec![],
                })
                .await
                .map(|_| ()),
        );
        // And the client token is not a worker token.
        let mut client = coordinator.client(Some("client-secret")).await;
        denied(client.register(info(PROTOCOL_VERSION)).await.map(|_| ()));
        client
            .status(circuit_sweep_proto::v1::StatusRequest { job_id: 0 })
            .await
            .unwrap();
        coordinator.stop().await;
    });
}

/// A large edge sweep (a 24-layer, 32-head graph of about 886,000 edges) from a fake worker:
/// while its results folder is written, `status` keeps answering.
#[test]
fn status_answers_while_a_large_job_aggregates() {
    use circuit_sweep_common::shard::{JobMeta, ShardTask};
    use circuit_sweep_proto::shard_output::ShardOutput;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let cfg = LocalConfig::new(dir.path().join("state"), dir.path().join("models"), 0);
        let cluster = LocalCluster::start(cfg).await.unwrap();
        let mut c = cluster.client().await.unwrap();
        let job = c
            .submit(circuit_sweep_proto::v1::SubmitRequest {
                protocol_version: PROTOCOL_VERSION,
                name: "big".into(),
                spec_toml: "[sweep]\nkind = \"edges\"\n".into(),
                attachments: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let w = register(&mut c).await;
        let meta = JobMeta::synthetic("big", 24, 32);
        // Every shard but the last, then the last while status is polled.
        let mut last = None;
        while let Some(l) = c
            .lease(LeaseRequest {
                worker_id: w.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .lease
        {
            let out = match serde_json::from_str::<ShardTask>(&l.task_json).unwrap() {
                ShardTask::Prepare => ShardOutput::Prepared(Box::new(meta.clone())),
                ShardTask::Edges { first, count } => {
                    ShardOutput::Edges((first..first + count).map(|i| (i % 97) as f64).collect())
                }
                t => panic!("{t:?}"),
            };
            let chunks = out.encode().iter().flat_map(|t| t.chunks(1 << 20)).collect();
            if matches!(out, ShardOutput::Prepared(_)) {
                put(&mut c, &w, &l.lease_id, chunks).await.unwrap();
                // The job is planned after the ack: its shards are queued a moment later.
                while circuit_sweep_coordinator::client::status(&mut c, Some(job))
                    .await
                    .unwrap()
                    .jobs[0]
                    .state
                    == "queued"
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } else if let Some((lease, chunks)) = last.replace((l.lease_id.clone(), chunks)) {
                put(&mut c, &w, &lease, chunks).await.unwrap();
            }
        }
        let (lease, chunks) = last.unwrap();
        put(&mut c, &w, &lease, chunks).await.unwrap();
        let t0 = Instant::now();
        let (mut during, mut waits) = (0, vec![]);
        loop {
            let t = Instant::now();
            let st = circuit_sweep_coordinator::client::status(&mut c, Some(job))
                .await
                .unwrap();
            waits.push(t.elapsed());
            let j = &st.jobs[0];
            if j.state == "done" {
                break;
            }
            assert_eq!(j.state, "running", "{}", j.error);
            assert_eq!(j.shards_done, j.shards_total);
            during += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let aggregation = t0.elapsed();
        waits.sort();
        let p90 = waits[waits.len() * 9 / 10];
        eprintln!(
            "aggregation {aggregation:.2?}: {} status calls, {during} during it; median {:.2?}, 90th percentile {p90:.2?}, max {:.2?}",
            waits.len(),
            waits[waits.len() / 2],
            waits[waits.len() - 1]
        );
        assert!(during >= 5, "status answered {during} times while the job aggregated");
        assert!(p90 < Duration::from_millis(50), "{p90:?}");
        cluster.stop().await.unwrap();
    });
}
