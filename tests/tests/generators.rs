//! Every task generator, with the default model's tokenizer (SmolLM2: digit-splitting) and the
//! real GPT-2 tokenizer: each yields datasets that pass the checker's tokenizer rules with no
//! error, deterministically, or refuses with a reason.

use circuit_sweep_common::check::{self, Pitfall};
use circuit_sweep_common::dataset;
use circuit_sweep_common::tasks::{self, Corruption, GenSpec, Task, TaskError};
use circuit_sweep_tests::{gpt2_tokenizer, smollm2_tokenizer};
use circuit_sweep_worker::PromptTokenizer;

/// Generates, checks and regenerates; returns the pairs, or the refusal.
fn generate_checked(
    tok: &PromptTokenizer,
    task: &str,
    corruption: Corruption,
) -> Result<Vec<dataset::PromptPair>, TaskError> {
    let mut spec = GenSpec::new(task.parse().unwrap(), 24, 7);
    spec.corruption = corruption;
    let pairs = tasks::generate(&spec, tok)?;
    assert_eq!(pairs.len(), 24, "{task}");
    let checks = check::check_tokens(&pairs, tok).unwrap();
    for c in &checks {
        assert!(
            !c.has_error(),
            "{task}/{corruption} line {}: {:?}",
            c.line,
            c.findings
        );
        assert_eq!(c.answer_ids.len(), 1);
    }
    let again = tasks::generate(&spec, tok).unwrap();
    assert_eq!(
        dataset::to_jsonl(&pairs),
        dataset::to_jsonl(&again),
        "{task}: same seed, same bytes"
    );
    spec.seed += 1;
    let other = tasks::generate(&spec, tok).unwrap();
    assert_ne!(
        dataset::to_jsonl(&pairs),
        dataset::to_jsonl(&other),
        "{task}: another seed, other prompts"
    );
    Ok(pairs)
}

/// Asserts the task works for a tokenizer (or refuses when `refuses` says so, with a reason).
fn expect(tok: &PromptTokenizer, task: &str, refuses: bool, reason_has: &str) {
    match generate_checked(tok, task, Corruption::RandAll) {
        Ok(pairs) => {
            assert!(!refuses, "{task} should have been refused");
            assert!(pairs.iter().all(|p| p.extra["task"] == task));
        }
        Err(TaskError::Refused { reason, .. }) => {
            assert!(refuses, "{task} refused unexpectedly: {reason}");
            assert!(reason.contains(reason_has), "{task}: {reason}");
        }
        Err(e) => panic!("{task}: {e}"),
    }
}

macro_rules! generator_tests {
    ($($name:ident: $task:literal, smollm2 refuses: $sr:literal $why:literal;)*) => {$(
        #[test]
        fn $name() {
            expect(&smollm2_tokenizer(), $task, $sr, $why);
            expect(&gpt2_tokenizer(), $task, false, "");
        }
    )*};
}

generator_tests! {
    numerals: "numerals", smollm2 refuses: false "";
    numerals_desc: "numerals_desc", smollm2 refuses: false "";
    number_words: "number_words", smollm2 refuses: false "";
    number_words_desc: "number_words_desc", smollm2 refuses: false "";
    months: "months", smollm2 refuses: false "";
    months_desc: "months_desc", smollm2 refuses: false "";
    days: "days", smollm2 refuses: false "";
    days_desc: "days_desc", smollm2 refuses: false "";
    letters: "letters", smollm2 refuses: false "";
    letters_desc: "letters_desc", smollm2 refuses: false "";
    digits: "digits", smollm2 refuses: false "";
    digits_desc: "digits_desc", smollm2 refuses: false "";
    intervals: "intervals", smollm2 refuses: false "";
    intervals_desc: "intervals_desc", smollm2 refuses: false "";
    fibonacci: "fibonacci", smollm2 refuses: true "single-token answers";
    fibonacci_desc: "fibonacci_desc", smollm2 refuses: true "single-token answers";
    greater_than: "greater_than", smollm2 refuses: true "splits the two-digit year";
}

#[test]
fn every_task_name_has_a_test_above() {
    // Keeps the lists above complete when a task or a corruption is added.
    assert_eq!(tasks::task_names().len(), 17);
    assert_eq!(Corruption::all().len(), 6);
}

#[test]
fn digit_splitting_tokenizers_get_a_trailing_space_and_bare_answers() {
    let smol = generate_checked(&smollm2_tokenizer(), "digits", Corruption::RandAll).unwrap();
    assert!(
        smol.iter()
            .all(|p| p.clean.ends_with(' ') && !p.answer.starts_with(' ')),
        "{:?}",
        smol[0]
    );
    assert!(
        smol.iter().all(|p| p.answer.len() == 1),
        "single digits only"
    );
    let gpt2 = generate_checked(&gpt2_tokenizer(), "digits", Corruption::RandAll).unwrap();
    assert!(
        gpt2.iter()
            .all(|p| !p.clean.ends_with(' ') && p.answer.starts_with(' ')),
        "{:?}",
        gpt2[0]
    );
    // Months are single tokens with their space in both.
    let months = generate_checked(&smollm2_tokenizer(), "months", Corruption::RandAll).unwrap();
    assert!(months.iter().all(|p| p.answer.starts_with(' ')));
}

#[test]
fn larger_intervals_are_refused_on_digit_splitting_tokenizers() {
    let mut spec = GenSpec::new("intervals".parse::<Task>().unwrap(), 8, 0);
    spec.step = 5;
    let err = tasks::generate(&spec, &smollm2_tokenizer()).unwrap_err();
    assert!(err.to_string().contains("step 5"), "{err}");
    assert!(tasks::generate(&spec, &gpt2_tokenizer()).is_ok());
}

/// Members of a generated prompt (`"1 2 3 4 "` or the template's `"... in 4. ..."`).
fn members(prompt: &str) -> Vec<String> {
    if prompt.contains(" in ") {
        prompt
            .split(". ")
            .filter_map(|s| s.rsplit_once(" in ").map(|(_, m)| m.to_string()))
            .collect()
    } else {
        prompt.split_whitespace().map(str::to_string).collect()
    }
}

/// Generates months and digits with corruption `c` on both tokenizers and checks that each
/// corrupt prompt is what the corruption's name says and keeps no clean last member.
fn corruption_does_what_its_name_says(c: Corruption) {
    for tok in [smollm2_tokenizer(), gpt2_tokenizer()] {
        for task in ["months", "digits"] {
            let pairs =
                generate_checked(&tok, task, c).unwrap_or_else(|e| panic!("{task}/{c}: {e}"));
            for p in &pairs {
                let (cl, co) = (members(&p.clean), members(&p.corrupt));
                assert_eq!(cl.len(), 4, "{:?}", p.clean);
                assert_eq!(co.len(), 4, "{:?}", p.corrupt);
                assert_ne!(co[3], cl[3], "{task}/{c}: the last member stays: {p:?}");
                match c {
                    Corruption::SwitchLastTwo => assert_eq!((&co[2], &co[3]), (&cl[3], &cl[2])),
                    Corruption::RepeatLastTwo => assert_eq!(co[3], cl[2]),
                    Corruption::RepeatFirstAll => assert!(co.iter().all(|m| *m == cl[0])),
                    Corruption::RepeatRand => assert!(co.iter().all(|m| *m == co[0])),
                    Corruption::Permutation => {
                        let (mut a, mut b) = (cl.clone(), co.clone());
                        a.sort();
                        b.sort();
                        assert_eq!(a, b);
                    }
                    Corruption::RandAll => {}
                }
            }
        }
    }
}

macro_rules! corruption_tests {
    ($($name:ident: $c:expr;)*) => {$(
        #[test]
        fn $name() {
            corruption_does_what_its_name_says($c);
        }
    )*};
}

corruption_tests! {
    corruption_rand_all: Corruption::RandAll;
    corruption_switch_last_two: Corruption::SwitchLastTwo;
    corruption_repeat_last_two: Corruption::RepeatLastTwo;
    corruption_repeat_first_all: Corruption::RepeatFirstAll;
    corruption_repeat_rand: Corruption::RepeatRand;
    corruption_permutation: Corruption::Permutation;
}

#[test]
fn greater_than_on_gpt2_asks_for_a_later_year() {
    let pairs = generate_checked(&gpt2_tokenizer(), "greater_than", Corruption::RandAll).unwrap();
    for p in pairs {
        // "... from the year 1732 to the year 17": the start year's last two digits.
        let year = p.clean.split("year ").nth(1).unwrap();
        let start: u32 = year[2..4].parse().unwrap();
        assert_eq!(p.answer.parse::<u32>().unwrap(), start + 1, "{p:?}");
        assert_eq!(p.wrong.parse::<u32>().unwrap(), start - 1, "{p:?}");
    }
    let err =
        generate_checked(&gpt2_tokenizer(), "greater_than", Corruption::Permutation).unwrap_err();
    assert!(err.to_string().contains("rand_all"), "{err}");
}

#[test]
fn the_checker_flags_each_tokenizer_pitfall_with_its_line() {
    let tok = smollm2_tokenizer();
    let text = [
        r#"{"clean":"1 2 3 4 ","corrupt":"7 3 9 2 ","answer":"5","wrong":"4"}"#,
        r#"{"clean":"9 10 11 12 ","corrupt":"3 7 14 16 ","answer":"13","wrong":"12"}"#,
        r#"{"clean":"1 2 3 4 ","corrupt":"8 2 3 4 ","answer":"5","wrong":"4"}"#,
        r#"{"clean":"1 2 3 ","corrupt":"5 1 7 ","answer":"4","wrong":"3"}"#,
    ]
    .join("\n");
    let pairs = dataset::parse_jsonl(&text, std::path::Path::new("p.jsonl")).unwrap();
    let checks = check::check_tokens(&pairs, &tok).unwrap();
    let kinds = |line: usize| -> Vec<Pitfall> {
        checks
            .iter()
            .find(|c| c.line == line)
            .unwrap()
            .findings
            .iter()
            .map(|f| f.pitfall)
            .collect()
    };
    assert!(kinds(1).is_empty(), "{:?}", checks[0].findings);
    assert!(
        kinds(2).contains(&Pitfall::MultiTokenAnswer)
            && kinds(2).contains(&Pitfall::MultiTokenWrong)
    );
    assert!(
        kinds(2).contains(&Pitfall::UnequalLengths),
        "12 tokens vs 8 on line 1"
    );
    assert_eq!(kinds(3), vec![Pitfall::LeakingCorruption]);
    assert_eq!(kinds(4), vec![Pitfall::UnequalLengths]);
    let msg = &checks[1]
        .findings
        .iter()
        .find(|f| f.pitfall == Pitfall::MultiTokenAnswer)
        .unwrap()
        .message;
    assert!(msg.contains(r#"["1", "3"]"#), "shows the tokens: {msg}");
    // The answer is encoded in context: GPT-2's " 5" after "1 2 3 4" is one token, "5" is too.
    let g = gpt2_tokenizer();
    let in_ctx = tasks::answer_in_context(&g, "1 2 3 4", " 5").unwrap();
    assert_eq!(
        (in_ctx.ids.clone(), in_ctx.merged),
        (g.encode_plain(" 5").unwrap(), false)
    );
}
