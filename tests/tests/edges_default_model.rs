//! An edge sweep of every edge of the default model restricted to a 20-node circuit (the
//! layers 14 to 20 of the months circuit), through the coordinator: 2 workers give the numbers
//! of 1, bit for bit.

use circuit_sweep_tests::one_and_two_workers;

#[test]
fn default_model_edge_sweep_on_two_workers_equals_one() {
    let (a, dir) = one_and_two_workers(
        "[data]\ntask = \"months\"\nn = 2\nseed = 1\n\n[sweep]\nkind = \"edges\"\n\
         circuit = [\"h14.1\", \"h14.3\", \"m14\", \"h15.0\", \"h15.4\", \"h15.5\", \"h15.7\", \
         \"h16.0\", \"h16.2\", \"h16.6\", \"h16.8\", \"h17.0\", \"h17.4\", \"h17.5\", \"h18.2\", \
         \"m18\", \"h19.1\", \"h20.0\", \"h20.5\", \"h20.8\"]\n",
    );
    let one = dir.path().join("one");
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
