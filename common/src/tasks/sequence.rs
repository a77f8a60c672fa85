//! Sequence-continuation families: the paper's templates (`"{name} {verb} in 1. ..."`) and
//! plain sequences (`"1 2 3 4"`), increasing or decreasing, with intervals and Fibonacci.

use super::{Collector, GenSpec, TaskError, TaskKind, Tokenize, answer_in_context, vocab};
use crate::dataset::PromptPair;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `"{W} {V} in {m}. ... {W} {V} in"`.
    Template,
    /// `"{m} {m} {m} {m}"`.
    Plain,
}

/// Where the space before the answer goes. GPT-2 style tokenizers make `" 5"` one token, so
/// the space belongs to the answer; digit-splitting tokenizers make `" "` a token of its own,
/// so the prompt must end with it and the answer is `"5"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Leading,
    Trailing,
}

struct Family {
    form: Form,
    members: Vec<String>,
    stride: usize,
}

fn family(spec: &GenSpec) -> Family {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (form, members, stride) = match spec.task.kind {
        TaskKind::Numerals => (Form::Template, vocab::numerals(12), 1),
        TaskKind::NumberWords => (Form::Template, strs(&vocab::NUMBER_WORDS), 1),
        TaskKind::Months => (Form::Template, strs(&vocab::MONTHS), 1),
        TaskKind::Days => (Form::Template, strs(&vocab::DAYS), 1),
        TaskKind::Letters => (Form::Plain, vocab::letters(), 1),
        TaskKind::Digits => (Form::Plain, vocab::numerals(20), 1),
        TaskKind::Intervals => (
            Form::Plain,
            (0..=100).map(|i: u32| i.to_string()).collect(),
            spec.step,
        ),
        TaskKind::Fibonacci => (
            Form::Plain,
            vocab::FIBONACCI.iter().map(u64::to_string).collect(),
            1,
        ),
        TaskKind::GreaterThan => unreachable!("greater_than has its own generator"),
    };
    let mut members = members;
    if spec.task.decreasing {
        members.reverse();
    }
    Family {
        form,
        members,
        stride,
    }
}

fn answer_text(m: &str, p: Placement) -> String {
    match p {
        Placement::Leading => format!(" {m}"),
        Placement::Trailing => m.to_string(),
    }
}

/// The prompt for `members` (texts), with a name and verb for templates.
fn prompt_text(form: Form, members: &[&str], name: &str, verb: &str, p: Placement) -> String {
    let mut s = match form {
        Form::Plain => members.join(" "),
        Form::Template => {
            let mut s = String::new();
            for m in members {
                s.push_str(&format!("{name} {verb} in {m}. "));
            }
            s.push_str(&format!("{name} {verb} in"));
            s
        }
    };
    if p == Placement::Trailing {
        s.push(' ');
    }
    s
}

/// Whether `m` is a single, unmerged token as an answer in a representative context.
fn single_answer(
    tok: &dyn Tokenize,
    form: Form,
    first: &str,
    m: &str,
    p: Placement,
) -> Result<bool, TaskError> {
    // A one-member prompt ends like every real one ("1 " or "John done in 1. John done in").
    let ctx = prompt_text(form, &[first], "John", "done", p);
    let a = answer_in_context(tok, &ctx, &answer_text(m, p)).map_err(TaskError::Tokenizer)?;
    Ok(a.ids.len() == 1 && !a.merged)
}

/// The longest run of consecutive members that are single tokens as answers.
fn longest_run(flags: &[bool]) -> (usize, usize) {
    let (mut best, mut cur_start, mut best_start) = (0, 0, 0);
    for (i, &f) in flags.iter().enumerate() {
        if !f {
            cur_start = i + 1;
        } else if i + 1 - cur_start > best {
            best = i + 1 - cur_start;
            best_start = cur_start;
        }
    }
    (best_start, best)
}

/// Generates a sequence task.
pub(super) fn generate(spec: &GenSpec, tok: &dyn Tokenize) -> Result<Vec<PromptPair>, TaskError> {
    let task = spec.task.to_string();
    let refuse = |reason: String| TaskError::Refused {
        task: task.clone(),
        reason,
    };
    let fam = family(spec);
    if fam.stride == 0 {
        return Err(refuse("step must be at least 1".into()));
    }
    // Choose where the answer's space goes, and the members that are one token there.
    let mut best: Option<(Placement, usize, usize)> = None;
    for p in [Placement::Leading, Placement::Trailing] {
        let flags = fam
            .members
            .iter()
            .map(|m| single_answer(tok, fam.form, &fam.members[0], m, p))
            .collect::<Result<Vec<_>, _>>()?;
        let (start, len) = longest_run(&flags);
        if best.is_none_or(|(_, _, l)| len > l) {
            best = Some((p, start, len));
        }
    }
    let (placement, run_start, run_len) = best.expect("two placements tried");
    let members: Vec<&str> = fam.members[run_start..run_start + run_len]
        .iter()
        .map(String::as_str)
        .collect();
    let span = spec.length * fam.stride;
    let starts = run_len.saturating_sub(span);
    if starts < 2 {
        return Err(refuse(format!(
            "{} member(s) before the answer with step {} need a run of at least {} consecutive members that are \
             each one token as an answer; this tokenizer has {} ({}), giving {} distinct prompt(s): numbers \
             split into several tokens (digit-splitting tokenizers) cannot be single-token answers",
            spec.length,
            fam.stride,
            span + 2,
            run_len,
            if members.is_empty() {
                "none".to_string()
            } else {
                members.join(" ")
            },
            starts
        )));
    }
    let names: Vec<&str> = match fam.form {
        Form::Plain => vec![""],
        Form::Template => {
            let mut v = Vec::new();
            for n in vocab::NAMES {
                let alone = tok.encode_plain(n).map_err(TaskError::Tokenizer)?;
                let spaced = tok
                    .encode_plain(&format!(" {n}"))
                    .map_err(TaskError::Tokenizer)?;
                if alone.len() == 1 && spaced.len() == 1 {
                    v.push(n);
                }
            }
            if v.is_empty() {
                return Err(refuse(
                    "no template name is a single token for this tokenizer".into(),
                ));
            }
            v
        }
    };
    let mut rng = Rng::derive(spec.seed, &format!("{task}/{}", spec.corruption));
    let mut out = Collector::new(task.clone(), spec.n);
    let mut last_problem = String::new();
    let mut attempts = 0usize;
    while out.pairs.len() < spec.n {
        attempts += 1;
        if attempts > 50 * spec.n + 1000 {
            return Err(refuse(format!(
                "could not make {} valid prompt pairs (made {}); last problem: {last_problem}",
                spec.n,
                out.pairs.len()
            )));
        }
        let start = rng.below(starts);
        let clean_idx: Vec<usize> = (0..spec.length).map(|j| start + j * fam.stride).collect();
        let answer_idx = start + span;
        let name = *rng.pick(&names);
        let verb = *rng.pick(&vocab::VERBS);
        let Some(corrupt_idx) = spec
            .corruption
            .apply(&clean_idx, answer_idx, fam.stride, run_len, &mut rng)
        else {
            last_problem = format!("{} leaks the answer for this prompt", spec.corruption);
            continue;
        };
        let texts = |idx: &[usize]| idx.iter().map(|&i| members[i]).collect::<Vec<_>>();
        let clean = prompt_text(fam.form, &texts(&clean_idx), name, verb, placement);
        let corrupt = prompt_text(fam.form, &texts(&corrupt_idx), name, verb, placement);
        let answer = answer_text(members[answer_idx], placement);
        let wrong = answer_text(members[clean_idx[spec.length - 1]], placement);
        if let Err(problem) = out.offer(tok, clean, corrupt, answer, wrong)? {
            last_problem = problem;
        }
    }
    Ok(out.pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_run_finds_the_first_longest_block() {
        assert_eq!(longest_run(&[false, true, true, false, true]), (1, 2));
        assert_eq!(longest_run(&[true, true, true]), (0, 3));
        assert_eq!(longest_run(&[false, false]), (0, 0));
    }

    #[test]
    fn template_and_plain_prompts() {
        let p = prompt_text(
            Form::Template,
            &["1", "2"],
            "Ann",
            "born",
            Placement::Leading,
        );
        assert_eq!(p, "Ann born in 1. Ann born in 2. Ann born in");
        assert_eq!(
            prompt_text(Form::Plain, &["1", "2", "3"], "", "", Placement::Trailing),
            "1 2 3 "
        );
        assert_eq!(answer_text("5", Placement::Leading), " 5");
    }
}
