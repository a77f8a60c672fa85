//! How many variants share a forward pass: as many as a token budget allows, and fewer after a
//! pass runs out of device memory. A pass that runs out is split in halves and each half run
//! again, and the budget halves for the passes after it; scores do not depend on what shares
//! their pass, so they are the same numbers whatever the budget ends at.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::ModelError;

/// One forward pass over some items: a value per item.
pub type Pass<'a, T> = dyn FnMut(&[T]) -> Result<Vec<f64>, ModelError> + 'a;

/// The token budget of one forward pass (variants times prompts times positions).
#[derive(Debug)]
pub struct PassBudget {
    tokens: AtomicUsize,
    /// Passes split after running out of memory, for logs and tests.
    splits: AtomicUsize,
}

impl PassBudget {
    /// A budget of `tokens` per pass (at least one variant always runs).
    pub fn new(tokens: usize) -> Self {
        PassBudget {
            tokens: AtomicUsize::new(tokens.max(1)),
            splits: AtomicUsize::new(0),
        }
    }

    /// Tokens a pass may hold now.
    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Passes split so far after running out of memory.
    pub fn splits(&self) -> usize {
        self.splits.load(Ordering::Relaxed)
    }

    /// Variants of `per_variant` tokens a pass may hold now (at least 1).
    pub fn variants(&self, per_variant: usize) -> usize {
        (self.tokens() / per_variant.max(1)).max(1)
    }

    /// `pass` over `items` in slices of at most [`PassBudget::variants`], each slice through
    /// [`PassBudget::split_on_oom`]; one value per item, in order.
    pub fn run_sliced<T>(
        &self,
        items: &[T],
        per_variant: usize,
        pass: &mut Pass<'_, T>,
    ) -> Result<Vec<f64>, ModelError> {
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let end = (start + self.variants(per_variant)).min(items.len());
            out.extend(self.split_on_oom(&items[start..end], per_variant, pass)?);
            start = end;
        }
        Ok(out)
    }

    /// `pass` over `items` as one pass; if it runs out of memory, the budget drops below that
    /// pass's size and each half is run the same way. One item that does not fit is the error.
    pub fn split_on_oom<T>(
        &self,
        items: &[T],
        per_variant: usize,
        pass: &mut Pass<'_, T>,
    ) -> Result<Vec<f64>, ModelError> {
        match pass(items) {
            Err(ModelError::OutOfMemory(e)) if items.len() > 1 => {
                let half = items.len() / 2;
                let tokens = (half * per_variant.max(1)).max(1);
                self.tokens.fetch_min(tokens, Ordering::Relaxed);
                self.splits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "a pass of {} variants ran out of memory ({e}); running it in halves, \
                     {tokens} tokens per pass from now on",
                    items.len()
                );
                let mut out = self.split_on_oom(&items[..half], per_variant, pass)?;
                out.extend(self.split_on_oom(&items[half..], per_variant, pass)?);
                Ok(out)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> ModelError {
        ModelError::OutOfMemory(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()))
    }

    #[test]
    fn a_pass_that_runs_out_of_memory_is_split_and_the_budget_shrinks() {
        let budget = PassBudget::new(64 * 10);
        let items: Vec<u32> = (0..100).collect();
        let mut sizes = vec![];
        // A device that holds at most 24 variants of 10 tokens.
        let out = budget
            .run_sliced(&items, 10, &mut |part| {
                sizes.push(part.len());
                if part.len() > 24 {
                    return Err(oom());
                }
                Ok(part.iter().map(|&i| i as f64 * 0.5).collect())
            })
            .unwrap();
        assert_eq!(
            out,
            items.iter().map(|&i| i as f64 * 0.5).collect::<Vec<_>>()
        );
        // 64 fails, its halves (32) fail, their halves (16) run; then passes of 16.
        assert_eq!(&sizes[..7], &[64, 32, 16, 16, 32, 16, 16]);
        assert!(sizes[7..].iter().all(|&s| s <= 16), "{sizes:?}");
        assert_eq!(budget.tokens(), 160);
        assert_eq!(budget.splits(), 3);
    }

    #[test]
    fn one_variant_that_does_not_fit_and_other_errors_are_returned() {
        let budget = PassBudget::new(100);
        let e = budget
            .run_sliced(&[1, 2, 3], 50, &mut |_| Err(oom()))
            .unwrap_err();
        assert!(matches!(e, ModelError::OutOfMemory(_)));
        let e = budget
            .run_sliced(&[1, 2, 3], 50, &mut |_| {
                Err(ModelError::InvalidRequest("bad".into()))
            })
            .unwrap_err();
        assert!(matches!(e, ModelError::InvalidRequest(_)));
        assert_eq!(budget.splits(), 1);
    }
}
