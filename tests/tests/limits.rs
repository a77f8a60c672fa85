//! Inputs beyond what a model or the engine can take are refused up front, naming the line or
//! field, instead of failing later (or computing on positions the model never learned).

use circuit_sweep_coordinator::local;
use circuit_sweep_tests::tiny_model_with_data;

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
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "[model]\npath = {:?}\n[data]\nfile = {:?}\n[sweep]\nkind = \"nodes\"\n",
            model.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(local::run(
            &spec,
            &dir.path().join("out"),
            1,
            &dir.path().join("models"),
            false,
        ))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("line 1: the prompt is 40 tokens, more than the model's context of 32"),
        "{msg}"
    );
}
