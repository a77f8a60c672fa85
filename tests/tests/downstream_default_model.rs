//! Downstream ablation on the default model through the coordinator: 20 random sets of 10
//! heads zero-ablated while the model answers 1-digit additions by greedy generation; 2
//! workers give the numbers of 1, bit for bit.

use circuit_sweep_tests::one_and_two_workers;

#[test]
fn downstream_ablation_on_two_workers_equals_one() {
    let (a, dir) = one_and_two_workers(
        "[ablation]\nkind = \"zero\"\n\n[sweep]\nkind = \"downstream\"\nrandom_sets = 20\n\
         set_size = 10\nseed = 0\n\n[downstream]\ntasks = [\"add1\"]\nn = 8\nshots = 2\n",
    );
    let one = dir.path().join("one");
    let d = &a["downstream"];
    let sets = d["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 21, "the full model and 20 random sets");
    assert_eq!(sets[0]["name"], "full model");
    // The full model adds most 1-digit numbers right; accuracies are shares of 8 prompts.
    let full = sets[0]["accuracy"]["add1"].as_f64().unwrap();
    assert!(full >= 50.0, "full model accuracy {full}");
    for s in &sets[1..] {
        assert_eq!(s["components"].as_array().unwrap().len(), 10);
        let acc = s["accuracy"]["add1"].as_f64().unwrap();
        assert_eq!((acc * 8.0 / 100.0).fract(), 0.0, "{acc}");
    }
    let r = &d["random"]["add1"];
    assert!(r["min"].as_f64().unwrap() <= r["mean"].as_f64().unwrap());
    assert!(a.get("full").is_none() && a.get("corrupt").is_none());
    assert!(one.join("downstream.svg").exists() && one.join("downstream.csv").exists());
    assert_eq!(
        std::fs::read_to_string(one.join("prompts.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
}
