//! The workspace integration tests' helpers: the shared ones (`support.rs`, also included by
//! the worker's and coordinator's tests), in-process cluster runs, and a coordinator driven by
//! hand over gRPC (`grpc`).

pub mod grpc;
mod support;

pub use support::*;

/// Runs the spec `text` through an in-process coordinator with 1 worker, then with 2, and
/// checks that the two results folders are identical; returns the first run's `result.json`
/// and the folder it wrote (kept while the returned `TempDir` lives).
pub fn one_and_two_workers(text: &str) -> (serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = default_model_path();
    let models = model.parent().unwrap().to_path_buf();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, text).unwrap();
    let rt = grpc::rt();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let t0 = std::time::Instant::now();
    let doc = rt
        .block_on(circuit_sweep_coordinator::local::run(
            &spec, &one, 1, &models, false,
        ))
        .unwrap();
    let t1 = t0.elapsed();
    rt.block_on(circuit_sweep_coordinator::local::run(
        &spec, &two, 2, &models, false,
    ))
    .unwrap();
    eprintln!(
        "1 worker {:.1} s, 2 workers {:.1} s",
        t1.as_secs_f64(),
        t0.elapsed().as_secs_f64() - t1.as_secs_f64()
    );
    assert_eq!(results_folder(&one), results_folder(&two));
    // Who computed it: this machine's one numeric profile.
    let profile = circuit_sweep_worker::profile::numeric_profile("cpu");
    assert_eq!(doc["timing"]["profiles"], serde_json::json!([profile]));
    (doc, dir)
}
