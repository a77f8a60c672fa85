//! The prompt checker: every known tokenization pitfall (answers that are not one token in
//! context, unequal lengths, leaking corruptions, ...) as a finding
//! with the prompt's line. Tokenizer rules are checked here; what the model predicts is added by
//! the caller (the worker runs the forward passes) through [`PromptCheck::add_model_view`].

use serde::Serialize;

use crate::dataset::PromptPair;
use crate::tasks::{Tokenize, answer_in_context};

/// How bad a finding is: errors make a dataset unusable, warnings deserve a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The dataset cannot be used as is.
    Error,
    /// Usable, but suspicious.
    Warning,
}

/// The pitfalls the checker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pitfall {
    /// The answer is not exactly one token in context.
    MultiTokenAnswer,
    /// The wrong token is not exactly one token in context.
    MultiTokenWrong,
    /// The answer merges with the end of the prompt (encode the answer in context).
    AnswerMergesWithPrompt,
    /// Clean and corrupt, or different prompts, have different token lengths.
    UnequalLengths,
    /// The corrupt prompt keeps the clean prompt's last member, so it still points at the
    /// answer.
    LeakingCorruption,
    /// The corrupt prompt is the clean prompt.
    IdenticalPrompts,
    /// Answer and wrong are the same token.
    AnswerIsWrong,
    /// The model's top-1 on the clean prompt is whitespace.
    WhitespaceTop1,
    /// The model's top-1 on the clean prompt is not the answer.
    ModelWrong,
    /// p(answer) is not above twice p(wrong) (the paper's selection rule).
    LowAnswerProb,
    /// The model's top-1 on the corrupt prompt is the clean answer.
    CorruptPredictsAnswer,
    /// The prompt has more tokens than the model has positions.
    LongerThanContext,
}

impl Pitfall {
    /// Errors or warnings.
    pub fn severity(self) -> Severity {
        match self {
            Pitfall::WhitespaceTop1
            | Pitfall::ModelWrong
            | Pitfall::LowAnswerProb
            | Pitfall::CorruptPredictsAnswer => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// One problem with one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What kind.
    pub pitfall: Pitfall,
    /// Error or warning.
    pub severity: Severity,
    /// A sentence for the user, with the tokens involved.
    pub message: String,
}

/// What the model says about one prompt pair.
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    /// Top-1 next token on the clean prompt.
    pub top1: u32,
    /// Its text.
    pub top1_text: String,
    /// p(answer) on the clean prompt.
    pub p_answer: f64,
    /// p(wrong) on the clean prompt.
    pub p_wrong: f64,
    /// logit(answer) - logit(wrong) on the clean prompt.
    pub logit_diff: f64,
    /// logit(answer) - logit(wrong) on the corrupt prompt.
    pub corrupt_logit_diff: f64,
    /// Top-1 next token on the corrupt prompt.
    pub corrupt_top1: u32,
}

/// Everything the checker found about one prompt pair.
#[derive(Debug, Clone, Serialize)]
pub struct PromptCheck {
    /// Line in the file.
    pub line: usize,
    /// Tokens of the clean prompt (BOS included where added).
    pub clean_tokens: usize,
    /// Tokens of the corrupt prompt.
    pub corrupt_tokens: usize,
    /// The answer's token ids in context.
    pub answer_ids: Vec<u32>,
    /// The wrong token's ids in context.
    pub wrong_ids: Vec<u32>,
    /// The model's view, when a model was run.
    pub model: Option<ModelView>,
    /// Problems found.
    pub findings: Vec<Finding>,
}

impl PromptCheck {
    fn flag(&mut self, pitfall: Pitfall, message: String) {
        self.findings.push(Finding {
            pitfall,
            severity: pitfall.severity(),
            message,
        });
    }

    /// The single answer id, when the answer is one token.
    pub fn answer_id(&self) -> Option<u32> {
        (self.answer_ids.len() == 1).then(|| self.answer_ids[0])
    }

    /// The single wrong id, when the wrong token is one token.
    pub fn wrong_id(&self) -> Option<u32> {
        (self.wrong_ids.len() == 1).then(|| self.wrong_ids[0])
    }

    /// Whether any finding is an error.
    pub fn has_error(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The paper's selection rule: the model's top-1 is the answer and p(answer) > 2 p(wrong).
    pub fn model_is_right(&self) -> bool {
        match (&self.model, self.answer_id()) {
            (Some(m), Some(a)) => m.top1 == a && m.p_answer > 2.0 * m.p_wrong,
            _ => false,
        }
    }

    /// Records what the model predicts and flags the model-side pitfalls.
    pub fn add_model_view(&mut self, view: ModelView) {
        if view.top1_text.trim().is_empty() {
            self.flag(
                Pitfall::WhitespaceTop1,
                format!(
                    "the model's top-1 next token is whitespace {:?}: with digit-splitting tokenizers end the prompt \
                     with the space (\"1 2 3 4 \" then \"5\")",
                    view.top1_text
                ),
            );
        }
        if let Some(a) = self.answer_id() {
            if view.top1 != a {
                self.flag(
                    Pitfall::ModelWrong,
                    format!("the model's top-1 is {:?}, not the answer", view.top1_text),
                );
            }
            if view.p_answer <= 2.0 * view.p_wrong {
                self.flag(
                    Pitfall::LowAnswerProb,
                    format!(
                        "p(answer) = {:.3} is not above 2 x p(wrong) = {:.3}",
                        view.p_answer,
                        2.0 * view.p_wrong
                    ),
                );
            }
            if view.corrupt_top1 == a {
                self.flag(
                    Pitfall::CorruptPredictsAnswer,
                    "the model's top-1 on the corrupt prompt is the clean answer: the corruption may not remove the signal"
                        .into(),
                );
            }
        }
        self.model = Some(view);
    }
}

fn show(tok: &dyn Tokenize, ids: &[u32]) -> String {
    let t: Vec<String> = ids
        .iter()
        .map(|&i| format!("{:?}", tok.token_text(i)))
        .collect();
    format!("[{}]", t.join(", "))
}

/// Flags prompts longer than a model's context of `context` tokens: positions it has no
/// embedding for (GPT-2) or was never trained on (rotary models).
pub fn check_context(checks: &mut [PromptCheck], context: usize) {
    for c in checks {
        if let Some(reason) = beyond_context(c.clean_tokens, c.corrupt_tokens, context) {
            c.flag(Pitfall::LongerThanContext, reason);
        }
    }
}

/// Why a prompt pair of these token lengths does not fit a context of `context`, if it does not.
pub fn beyond_context(clean: usize, corrupt: usize, context: usize) -> Option<String> {
    let n = clean.max(corrupt);
    (n > context).then(|| {
        format!("the prompt is {n} tokens, more than the model's context of {context} positions")
    })
}

/// Checks every pair against the tokenizer rules. Lengths are compared with the first pair's.
pub fn check_tokens(pairs: &[PromptPair], tok: &dyn Tokenize) -> Result<Vec<PromptCheck>, String> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut first: Option<(usize, usize)> = None;
    for p in pairs {
        let clean = tok.encode(&p.clean)?;
        let corrupt = tok.encode(&p.corrupt)?;
        let a = answer_in_context(tok, &p.clean, &p.answer)?;
        let w = answer_in_context(tok, &p.clean, &p.wrong)?;
        let mut c = PromptCheck {
            line: p.line,
            clean_tokens: clean.len(),
            corrupt_tokens: corrupt.len(),
            answer_ids: a.ids.clone(),
            wrong_ids: w.ids.clone(),
            model: None,
            findings: vec![],
        };
        for (what, field, inc, pitfall) in [
            ("answer", &p.answer, &a, Pitfall::MultiTokenAnswer),
            ("wrong", &p.wrong, &w, Pitfall::MultiTokenWrong),
        ] {
            if inc.merged {
                c.flag(
                    Pitfall::AnswerMergesWithPrompt,
                    format!("{what} {field:?} merges with the end of the prompt (the prompt's last tokens change)"),
                );
            } else if inc.ids.len() != 1 {
                c.flag(
                    pitfall,
                    format!(
                        "{what} {field:?} is {} tokens in context: {}",
                        inc.ids.len(),
                        show(tok, &inc.ids)
                    ),
                );
            }
        }
        if a.ids == w.ids {
            c.flag(
                Pitfall::AnswerIsWrong,
                format!("answer and wrong are the same token {}", show(tok, &a.ids)),
            );
        }
        if clean.len() != corrupt.len() {
            c.flag(
                Pitfall::UnequalLengths,
                format!(
                    "clean has {} tokens, corrupt has {}: per-position means need aligned positions",
                    clean.len(),
                    corrupt.len()
                ),
            );
        }
        match first {
            None => first = Some((p.line, clean.len())),
            Some((line, len)) if len != clean.len() => c.flag(
                Pitfall::UnequalLengths,
                format!(
                    "clean has {} tokens, the prompt on line {line} has {len}",
                    clean.len()
                ),
            ),
            Some(_) => {}
        }
        if p.clean == p.corrupt {
            c.flag(
                Pitfall::IdenticalPrompts,
                "corrupt is identical to clean".into(),
            );
        } else if let ([wid], false) = (w.ids.as_slice(), w.merged) {
            // The wrong token is the clean prompt's last member: a corruption that keeps it in
            // place keeps pointing at the answer.
            if let Some(pos) = clean.iter().rposition(|t| t == wid)
                && corrupt.get(pos) == Some(wid)
            {
                c.flag(
                    Pitfall::LeakingCorruption,
                    format!(
                        "corrupt keeps the clean prompt's last member {:?} at token {pos}, so it still leads to the answer",
                        tok.token_text(*wid)
                    ),
                );
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// Totals over a checked dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Prompt pairs checked.
    pub prompts: usize,
    /// Findings that are errors.
    pub errors: usize,
    /// Findings that are warnings.
    pub warnings: usize,
    /// Pairs on which the model is right (the paper's rule), when a model ran.
    pub model_right: Option<usize>,
    /// Mean clean logit difference, when a model ran.
    pub mean_logit_diff: Option<f64>,
    /// Mean corrupt logit difference, when a model ran.
    pub mean_corrupt_logit_diff: Option<f64>,
}

/// Sums up checks.
pub fn summarize(checks: &[PromptCheck]) -> Summary {
    let count = |s: Severity| {
        checks
            .iter()
            .flat_map(|c| &c.findings)
            .filter(|f| f.severity == s)
            .count()
    };
    let views: Vec<&ModelView> = checks.iter().filter_map(|c| c.model.as_ref()).collect();
    let mean = |f: fn(&ModelView) -> f64| -> Option<f64> {
        (!views.is_empty()).then(|| views.iter().map(|v| f(v)).sum::<f64>() / views.len() as f64)
    };
    Summary {
        prompts: checks.len(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        model_right: (!views.is_empty())
            .then(|| checks.iter().filter(|c| c.model_is_right()).count()),
        mean_logit_diff: mean(|v| v.logit_diff),
        mean_corrupt_logit_diff: mean(|v| v.corrupt_logit_diff),
    }
}
