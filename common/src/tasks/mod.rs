//! Task generators: the sequence-continuation families and greater-than, each with its
//! corrupted twins, made valid for one tokenizer (single-token answers, aligned lengths, the
//! trailing-space rule of digit-splitting tokenizers), or refused with a reason.

mod corruption;
pub mod downstream;
mod greater_than;
mod sequence;
pub mod vocab;

use std::fmt;
use std::str::FromStr;

pub use corruption::Corruption;

use crate::dataset::PromptPair;

/// What generators and the prompt checker need from a tokenizer.
pub trait Tokenize {
    /// Ids of `text` as a prompt (with BOS where the model's tokenizer adds one).
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Ids of `text` without special tokens.
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String>;
    /// The text of one token.
    fn token_text(&self, id: u32) -> String;
}

/// How an answer tokenizes in context, after its prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InContext {
    /// The answer's token ids.
    pub ids: Vec<u32>,
    /// True when the answer merged with the end of the prompt (the prompt's own last tokens
    /// change when the answer follows), so it is no clean next token.
    pub merged: bool,
}

/// Tokenizes `answer` as it appears right after `prompt`.
pub fn answer_in_context(
    tok: &dyn Tokenize,
    prompt: &str,
    answer: &str,
) -> Result<InContext, String> {
    let p = tok.encode_plain(prompt)?;
    let full = tok.encode_plain(&format!("{prompt}{answer}"))?;
    let common = p.iter().zip(&full).take_while(|(a, b)| a == b).count();
    Ok(InContext {
        ids: full[common..].to_vec(),
        merged: common < p.len(),
    })
}

/// The generator families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `"{name} {verb} in 1. ... {name} {verb} in"` -> `" 5"` (the paper's numerals).
    Numerals,
    /// The same template with number words.
    NumberWords,
    /// The same template with months.
    Months,
    /// The same template with days of the week.
    Days,
    /// Plain `"A B C D"` -> `" E"`.
    Letters,
    /// Plain `"1 2 3 4"` -> `" 5"` (`"1 2 3 4 "` -> `"5"` on digit-splitting tokenizers).
    Digits,
    /// Plain arithmetic sequences with a step (`"2 4 6 8"` -> `" 10"`).
    Intervals,
    /// Plain Fibonacci runs (`"2 3 5 8"` -> `" 13"`).
    Fibonacci,
    /// `"The war lasted from the year 1732 to the year 17"` -> `"33"`.
    GreaterThan,
}

/// A task name as given on the command line or in a spec: a family, and whether the sequence
/// runs backwards (`months_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// The family.
    pub kind: TaskKind,
    /// Decreasing order.
    pub decreasing: bool,
}

const KINDS: [(&str, TaskKind); 9] = [
    ("numerals", TaskKind::Numerals),
    ("number_words", TaskKind::NumberWords),
    ("months", TaskKind::Months),
    ("days", TaskKind::Days),
    ("letters", TaskKind::Letters),
    ("digits", TaskKind::Digits),
    ("intervals", TaskKind::Intervals),
    ("fibonacci", TaskKind::Fibonacci),
    ("greater_than", TaskKind::GreaterThan),
];

/// Every accepted task name.
pub fn task_names() -> Vec<String> {
    let mut v = Vec::new();
    for (name, kind) in KINDS {
        v.push(name.to_string());
        if kind != TaskKind::GreaterThan {
            v.push(format!("{name}_desc"));
        }
    }
    v
}

impl FromStr for Task {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (base, decreasing) = match s.strip_suffix("_desc") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let kind = KINDS
            .iter()
            .find(|(n, _)| *n == base)
            .map(|(_, k)| *k)
            .filter(|k| !(decreasing && *k == TaskKind::GreaterThan))
            .ok_or_else(|| TaskError::Unknown(s.to_string()))?;
        Ok(Task { kind, decreasing })
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = KINDS
            .iter()
            .find(|(_, k)| *k == self.kind)
            .map_or("?", |(n, _)| n);
        write!(f, "{name}{}", if self.decreasing { "_desc" } else { "" })
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// The task.
    pub task: Task,
    /// Number of prompt pairs.
    pub n: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// How the corrupted twins are made.
    pub corruption: Corruption,
    /// Members shown in each prompt before the answer (the paper: 4).
    pub length: usize,
    /// Step of `intervals` (2 gives 2 4 6 8).
    pub step: usize,
}

impl GenSpec {
    /// A spec with the paper's defaults: 4 members, `rand_all`, step 2.
    pub fn new(task: Task, n: usize, seed: u64) -> Self {
        GenSpec {
            task,
            n,
            seed,
            corruption: Corruption::RandAll,
            length: 4,
            step: 2,
        }
    }
}

/// Why a dataset could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No such task.
    #[error("unknown task `{0}` (tasks: {names})", names = task_names().join(", "))]
    Unknown(String),
    /// The task cannot be made valid for this tokenizer or these settings.
    #[error("cannot generate `{task}`: {reason}")]
    Refused {
        /// The task name.
        task: String,
        /// Why.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Accepts a candidate pair when it passes the checker's tokenizer rules (single-token answer
/// and wrong in context, clean and corrupt of equal length, every prompt as long as the first),
/// or says why not.
struct Collector {
    task: String,
    pairs: Vec<PromptPair>,
    len: Option<usize>,
}

impl Collector {
    fn new(task: String, n: usize) -> Self {
        Collector {
            task,
            pairs: Vec::with_capacity(n),
            len: None,
        }
    }

    fn offer(
        &mut self,
        tok: &dyn Tokenize,
        clean: String,
        corrupt: String,
        answer: String,
        wrong: String,
    ) -> Result<Result<(), String>, TaskError> {
        let c = tok.encode(&clean).map_err(TaskError::Tokenizer)?;
        let k = tok.encode(&corrupt).map_err(TaskError::Tokenizer)?;
        let a = answer_in_context(tok, &clean, &answer).map_err(TaskError::Tokenizer)?;
        let w = answer_in_context(tok, &clean, &wrong).map_err(TaskError::Tokenizer)?;
        if c.len() != k.len() {
            return Ok(Err(format!(
                "clean {clean:?} has {} tokens, corrupt {corrupt:?} has {}",
                c.len(),
                k.len()
            )));
        }
        if a.ids.len() != 1 || a.merged || w.ids.len() != 1 || w.merged {
            return Ok(Err(format!(
                "answer {answer:?} or wrong {wrong:?} is not one token after {clean:?}"
            )));
        }
        if let Some(l) = self.len.filter(|&l| l != c.len()) {
            return Ok(Err(format!(
                "{clean:?} has {} tokens, earlier prompts {l}",
                c.len()
            )));
        }
        self.len = Some(c.len());
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "task".to_string(),
            serde_json::Value::from(self.task.clone()),
        );
        extra.insert("id".to_string(), serde_json::Value::from(self.pairs.len()));
        let line = self.pairs.len() + 1;
        self.pairs.push(PromptPair {
            clean,
            corrupt,
            answer,
            wrong,
            extra,
            line,
        });
        Ok(Ok(()))
    }
}

/// Generates `spec.n` prompt pairs valid for `tok`, deterministically from `spec.seed`.
pub fn generate(spec: &GenSpec, tok: &dyn Tokenize) -> Result<Vec<PromptPair>, TaskError> {
    let refuse = |reason: String| TaskError::Refused {
        task: spec.task.to_string(),
        reason,
    };
    if spec.n == 0 {
        return Err(refuse("n must be at least 1".into()));
    }
    if spec.length < 2 {
        return Err(refuse(
            "prompts need at least 2 members before the answer".into(),
        ));
    }
    match spec.task.kind {
        TaskKind::GreaterThan => greater_than::generate(spec, tok),
        _ => sequence::generate(spec, tok),
    }
}
