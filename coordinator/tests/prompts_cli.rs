//! `circuit-sweep prompts gen|check` end to end with the default model: datasets the model
//! gets right, every pitfall reported with its line, byte-identical output for a seed.

mod support;

use std::path::Path;

use support::{ok, with_model};

fn write(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Runs `prompts check`, returning (success, stdout, stderr).
fn check(file: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = with_model()
        .args(["prompts", "check"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"{"clean":"1 2 3 4 ","corrupt":"7 3 9 2 ","answer":"5","wrong":"4"}"#;

#[test]
fn months_and_numerals_give_at_least_32_prompts_the_model_gets_right() {
    let dir = tempfile::tempdir().unwrap();
    for task in ["months", "numerals"] {
        let gen_file = dir.path().join(format!("{task}.jsonl"));
        let filtered = dir.path().join(format!("{task}-right.jsonl"));
        ok(with_model()
            .args(["prompts", "gen", task, "--n", "48", "--seed", "0", "-o"])
            .arg(&gen_file)
            .output()
            .unwrap());
        let out = with_model()
            .args(["prompts", "check", "--filter", "-o"])
            .arg(&filtered)
            .arg(&gen_file)
            .output()
            .unwrap();
        let stdout = ok(out);
        assert!(stdout.contains("mean logit diff"), "{stdout}");
        let kept = std::fs::read_to_string(&filtered).unwrap().lines().count();
        assert!(kept >= 32, "{task}: only {kept} right\n{stdout}");
        // The filtered file is itself clean and the model is right on every line of it.
        let (success, stdout, _) = check(&filtered, &[]);
        assert!(success);
        assert!(
            stdout.contains(&format!("the model is right on {kept}/{kept}")),
            "{stdout}"
        );
    }
}

#[test]
fn same_seed_same_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: &str, name: &str| -> Vec<u8> {
        let f = dir.path().join(name);
        ok(with_model()
            .args([
                "prompts",
                "gen",
                "number_words",
                "--n",
                "40",
                "--seed",
                seed,
                "-o",
            ])
            .arg(&f)
            .output()
            .unwrap());
        std::fs::read(f).unwrap()
    };
    let (a, b, c) = (run("3", "a"), run("3", "b"), run("4", "c"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Standard output carries the same bytes as the file.
    let stdout = ok(with_model()
        .args(["prompts", "gen", "number_words", "--n", "40", "--seed", "3"])
        .output()
        .unwrap());
    assert_eq!(stdout.as_bytes(), a.as_slice());
}

#[test]
fn a_two_token_answer_is_an_error_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.jsonl",
        &[
            GOOD,
            r#"{"clean":"1 2 3 4 ","corrupt":"7 3 9 2 ","answer":"13","wrong":"4"}"#,
        ],
    );
    let (success, stdout, stderr) = check(&f, &[]);
    assert!(!success, "errors exit non-zero");
    assert!(
        stdout.contains(&format!(
            "error: {}:2: answer \"13\" is 2 tokens",
            f.display()
        )),
        "{stdout}"
    );
    assert!(stderr.contains("1 error(s)"), "{stderr}");
}

#[test]
fn unequal_lengths_are_an_error_naming_the_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.jsonl",
        &[
            GOOD,
            r#"{"clean":"2 3 4 5 ","corrupt":"7 13 9 2 ","answer":"6","wrong":"5"}"#,
        ],
    );
    let (success, stdout, _) = check(&f, &[]);
    assert!(!success);
    assert!(
        stdout.contains(&format!(
            "error: {}:2: clean has 8 tokens, corrupt has 9",
            f.display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_whitespace_top1_is_a_warning_only() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.jsonl",
        &[r#"{"clean":"1 2 3 4","corrupt":"7 3 9 2","answer":"5","wrong":"4"}"#],
    );
    let (success, stdout, _) = check(&f, &[]);
    assert!(success, "warnings alone exit 0: {stdout}");
    assert!(
        stdout.contains(&format!(
            "warning: {}:1: the model's top-1 next token is whitespace",
            f.display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_leaking_corruption_is_an_error_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.jsonl",
        &[
            GOOD,
            GOOD,
            r#"{"clean":"1 2 3 4 ","corrupt":"8 2 3 4 ","answer":"5","wrong":"4"}"#,
        ],
    );
    let (success, stdout, _) = check(&f, &[]);
    assert!(!success);
    assert!(
        stdout.contains(&format!(
            "error: {}:3: corrupt keeps the clean prompt's last member \"4\"",
            f.display()
        )),
        "{stdout}"
    );
}

#[test]
fn an_unreadable_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.jsonl",
        &[
            GOOD,
            r#"{"clean":"1 2 3 4 ","corrupt":"7 3 9 2 ","answer":"5"}"#,
        ],
    );
    let (success, _, stderr) = check(&f, &[]);
    assert!(!success);
    assert!(
        stderr.contains(&format!("{}:2: missing field `wrong`", f.display())),
        "{stderr}"
    );
}

#[test]
fn filter_drops_what_the_model_gets_wrong_and_json_reports_everything() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = r#"{"clean":"5 6 7 8 ","corrupt":"3 1 4 2 ","answer":"3","wrong":"8"}"#;
    let f = write(dir.path(), "p.jsonl", &[GOOD, wrong]);
    let out_file = dir.path().join("kept.jsonl");
    let out = with_model()
        .args(["prompts", "check", "--filter", "-o"])
        .arg(&out_file)
        .arg(&f)
        .output()
        .unwrap();
    ok(out.clone());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept 1 of 2 prompts (dropped 1)"));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap().trim(),
        format!("{GOOD}")
    );
    let v: serde_json::Value = serde_json::from_str(&ok(with_model()
        .args(["prompts", "check", "--json"])
        .arg(&f)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(v["summary"]["prompts"], 2);
    assert_eq!(v["summary"]["model_right"], 1);
    assert_eq!(v["prompts"][1]["findings"][0]["pitfall"], "model_wrong");
    let p5 = v["prompts"][0]["model"]["p_answer"].as_f64().unwrap();
    assert!((p5 - 0.919).abs() < 0.01, "{p5}");
}

#[test]
fn refusals_and_unknown_tasks_say_why() {
    let out = with_model()
        .args(["prompts", "gen", "fibonacci", "--n", "8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot generate `fibonacci`") && err.contains("1 2 3 5 8"),
        "{err}"
    );
    let out = with_model()
        .args(["prompts", "gen", "primes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown task `primes`"));
}

#[test]
fn the_gpt2_tokenizer_folder_checks_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let tok = support::fixtures().join("gpt2-tokenizer");
    let f = dir.path().join("g.jsonl");
    ok(with_model()
        .args(["prompts", "gen", "greater_than", "--n", "16", "--model"])
        .arg(&tok)
        .arg("-o")
        .arg(&f)
        .output()
        .unwrap());
    let stdout = ok(with_model()
        .args(["prompts", "check", "--model"])
        .arg(&tok)
        .arg(&f)
        .output()
        .unwrap());
    assert!(
        stdout.contains("tokens only") && stdout.contains("16 prompts, 0 errors"),
        "{stdout}"
    );
}

#[test]
fn prompts_beyond_the_models_context_are_errors_naming_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = support::tiny_model_with_data(dir.path(), 2);
    let (ok_out, _, _) = check(&data, &["--model", &model.display().to_string()]);
    assert!(ok_out, "the tiny dataset fits the context");
    // The tiny model has 32 positions.
    let long: Vec<String> = (0..40).map(|i| format!("w{}", 1 + i)).collect();
    let other: Vec<String> = (0..40).map(|i| format!("w{}", 45 + i)).collect();
    let line = serde_json::json!({"clean": long.join(" "), "corrupt": other.join(" "), "answer": " w91", "wrong": " w92"}).to_string();
    let f = write(dir.path(), "long.jsonl", &[&line]);
    let (success, stdout, stderr) = check(&f, &["--model", &model.display().to_string()]);
    assert!(!success, "{stdout}");
    assert!(
        stdout.contains("the prompt is 40 tokens, more than the model's context of 32")
            && stderr.contains("1 error(s)"),
        "{stdout}\n{stderr}"
    );
}
