//! Prompt sets as the evaluator takes them: token ids of clean and corrupt prompts, and the
//! answer and wrong token of each.

/// A prompt set ready for evaluation: token ids and the answer / wrong ids per prompt.
#[derive(Debug, Clone)]
pub struct PromptSet {
    /// Clean prompts, all the same length.
    pub clean: Vec<Vec<u32>>,
    /// Corrupt prompts, the same length as the clean ones.
    pub corrupt: Vec<Vec<u32>>,
    /// Answer token per prompt.
    pub answer: Vec<u32>,
    /// Wrong token per prompt.
    pub wrong: Vec<u32>,
}

impl PromptSet {
    /// The first prompt pair whose clean and corrupt prompts end with different tokens: the last
    /// token's embedding reaches the logits directly, so denoising (which restores the heads' and
    /// MLPs' clean activations, not the embedding) could not reproduce the clean run there.
    pub fn last_token_mismatch(&self) -> Option<usize> {
        self.clean
            .iter()
            .zip(&self.corrupt)
            .position(|(c, k)| c.last() != k.last())
    }

    /// Token ids of checked prompt pairs, with answer and wrong ids encoded in context.
    pub fn from_pairs(
        pairs: &[circuit_sweep_common::PromptPair],
        tok: &crate::PromptTokenizer,
    ) -> Result<Self, String> {
        let mut set = PromptSet {
            clean: vec![],
            corrupt: vec![],
            answer: vec![],
            wrong: vec![],
        };
        for p in pairs {
            set.clean
                .push(tok.encode(&p.clean).map_err(|e| e.to_string())?);
            set.corrupt
                .push(tok.encode(&p.corrupt).map_err(|e| e.to_string())?);
            let one = |text: &str| -> Result<u32, String> {
                let a = circuit_sweep_common::tasks::answer_in_context(tok, &p.clean, text)?;
                match a.ids.as_slice() {
                    [id] if !a.merged => Ok(*id),
                    _ => Err(format!(
                        "line {}: {text:?} is not one token after the prompt",
                        p.line
                    )),
                }
            };
            set.answer.push(one(&p.answer)?);
            set.wrong.push(one(&p.wrong)?);
        }
        Ok(set)
    }
}
