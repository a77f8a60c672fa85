//! Greater-than: `"The war lasted from the year 1732 to the year 17"`; the answer is the
//! smallest later year (`"33"`), the wrong token the largest earlier one (`"31"`).

use super::{Collector, Corruption, GenSpec, TaskError, Tokenize, answer_in_context, vocab};
use crate::dataset::PromptPair;
use crate::rng::Rng;

fn prompt(noun: &str, century: usize, yy: usize) -> String {
    format!("The {noun} lasted from the year {century}{yy:02} to the year {century}")
}

/// Generates greater-than prompts (years 1102..1797); the corruption replaces the start year.
pub(super) fn generate(spec: &GenSpec, tok: &dyn Tokenize) -> Result<Vec<PromptPair>, TaskError> {
    let task = spec.task.to_string();
    let refuse = |reason: String| TaskError::Refused {
        task: task.clone(),
        reason,
    };
    if spec.corruption != Corruption::RandAll {
        return Err(refuse(format!(
            "only the rand_all corruption (a random other start year) applies, not {}",
            spec.corruption
        )));
    }
    // The answer must be one two-digit token after the century: tokenizers that split digits
    // cannot express a year as one next token.
    let probe =
        answer_in_context(tok, &prompt("war", 17, 32), "33").map_err(TaskError::Tokenizer)?;
    if probe.ids.len() != 1 || probe.merged {
        return Err(refuse(format!(
            "this tokenizer splits the two-digit year \"33\" after \"17\" into {} tokens, so no year is a single next \
             token (digit-splitting tokenizers such as Llama-2's and SmolLM2's)",
            probe.ids.len()
        )));
    }
    let mut nouns = Vec::new();
    for n in vocab::NOUNS {
        if tok
            .encode_plain(&format!(" {n}"))
            .map_err(TaskError::Tokenizer)?
            .len()
            == 1
        {
            nouns.push(n);
        }
    }
    if nouns.is_empty() {
        return Err(refuse("no noun of the template is a single token".into()));
    }
    let mut rng = Rng::derive(spec.seed, &format!("{task}/{}", spec.corruption));
    let mut out = Collector::new(task.clone(), spec.n);
    let mut attempts = 0;
    let mut last_problem = String::new();
    while out.pairs.len() < spec.n {
        attempts += 1;
        if attempts > 50 * spec.n + 1000 {
            return Err(refuse(format!(
                "could not make {} valid prompts; last problem: {last_problem}",
                spec.n
            )));
        }
        let noun = *rng.pick(&nouns);
        let century = rng.range(11, 17);
        let yy = rng.range(2, 97);
        let other = rng.range(2, 97);
        if other == yy {
            continue;
        }
        let clean = prompt(noun, century, yy);
        let corrupt = prompt(noun, century, other);
        let answer = format!("{:02}", yy + 1);
        let wrong = format!("{:02}", yy - 1);
        if let Err(problem) = out.offer(tok, clean, corrupt, answer, wrong)? {
            last_problem = problem;
        }
    }
    Ok(out.pairs)
}
