//! Inputs beyond what a model or the engine can take are refused up front, naming the line or
//! field, instead of failing later (or computing on positions the model never learned).

use std::path::Path;

use circuit_sweep_coordinator::local;
use circuit_sweep_tests::tiny_model_with_data;

/// Runs `model` on `data` with the spec's `rest` in-process, and returns the error it must end
/// with.
fn run_failing(dir: &Path, model: &Path, data: &Path, rest: &str) -> String {
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "[model]\npath = {:?}\n[data]\nfile = {:?}\n{rest}",
            model.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let rt = circuit_sweep_tests::grpc::rt();
    let err = rt
        .block_on(local::run(
            &spec,
            &dir.join("out"),
            1,
            &dir.join("models"),
            false,
        ))
        .unwrap_err();
    format!("{err:#}")
}

#[test]
fn a_prompt_beyond_the_models_context_is_refused_at_prepare_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_with_data(dir.path(), 2);
    // The tiny model has 32 positions; the second pair has 40 tokens.
    let words = |from: usize, n: usize| -> String {
        (from..from + n)
            .map(|i| format!("w{}", 1 + i % 90))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let line = |n: usize| {
        serde_json::json!({"clean": words(0, n), "corrupt": words(45, n), "answer": " w91", "wrong": " w92"})
            .to_string()
    };
    let data = dir.path().join("long.jsonl");
    std::fs::write(&data, format!("{}\n{}\n", line(40), line(40))).unwrap();
    let msg = run_failing(dir.path(), &model, &data, "[sweep]\nkind = \"nodes\"\n");
    assert!(
        msg.contains("line 1: the prompt is 40 tokens, more than the model's context of 32"),
        "{msg}"
    );
}

#[test]
fn accuracy_when_the_full_model_gets_nothing_right_fails_at_prepare_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model_with_data(dir.path(), 6);
    // Swap answer and wrong: the full model's top-1 is never the answer.
    let swapped: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let a = v["answer"].take();
            v["answer"] = v["wrong"].take();
            v["wrong"] = a;
            v.to_string() + "\n"
        })
        .collect();
    let data = dir.path().join("swapped.jsonl");
    std::fs::write(&data, swapped).unwrap();
    let msg = run_failing(
        dir.path(),
        &model,
        &data,
        "[ablation]\nmetric = \"accuracy\"\n",
    );
    assert!(
        msg.contains("shard 0 (prepare)")
            && msg.contains("the full model's accuracy on the clean prompts is 0.0000"),
        "{msg}"
    );
}
