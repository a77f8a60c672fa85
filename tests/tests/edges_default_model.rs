//! An edge sweep of every edge of the default model restricted to a 20-node circuit (the
//! layers 14 to 20 of the months circuit), through the coordinator: 2 workers give the numbers
//! of 1, bit for bit.

use circuit_sweep_coordinator::local;
use circuit_sweep_tests::{default_model_path, results_folder};

#[test]
fn default_model_edge_sweep_on_two_workers_equals_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = default_model_path();
    let models = model.parent().unwrap().to_path_buf();
    let spec = dir.path().join("edges.toml");
    std::fs::write(
        &spec,
        "[data]\ntask = \"months\"\nn = 2\nseed = 1\n\n[sweep]\nkind = \"edges\"\n\
         circuit = [\"h14.1\", \"h14.3\", \"m14\", \"h15.0\", \"h15.4\", \"h15.5\", \"h15.7\", \
         \"h16.0\", \"h16.2\", \"h16.6\", \"h16.8\", \"h17.0\", \"h17.4\", \"h17.5\", \"h18.2\", \
         \"m18\", \"h19.1\", \"h20.0\", \"h20.5\", \"h20.8\"]\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let t0 = std::time::Instant::now();
    let a = rt
        .block_on(local::run(&spec, &one, 1, &models, false))
        .unwrap();
    let t1 = t0.elapsed();
    rt.block_on(local::run(&spec, &two, 2, &models, false))
        .unwrap();
    eprintln!(
        "1 worker {:.1} s, 2 workers {:.1} s",
        t1.as_secs_f64(),
        t0.elapsed().as_secs_f64() - t1.as_secs_f64()
    );
    assert_eq!(results_folder(&one), results_folder(&two));
    let names = a["edges"]["names"].as_array().unwrap();
    let scores = a["edges"]["scores"].as_array().unwrap();
    // The graph among 20 nodes: every edge exists in the model and has a score.
    assert_eq!(names.len(), scores.len());
    assert!(names.len() > 150, "{} edges", names.len());
    assert!(a["timing"]["shards"].as_u64().unwrap() >= 3);
    let circuit = a["edges"]["circuit_score"].as_f64().unwrap();
    assert!(circuit.is_finite());
    // Some edge matters.
    assert!(
        scores
            .iter()
            .any(|s| (s.as_f64().unwrap() - 100.0).abs() > 1.0)
    );
    assert!(one.join("edges.svg").exists() && one.join("edges.csv").exists());
}
