//! Circuits scored on another task's data: every component outside the circuit ablated as the
//! data's own spec says (its ablation kind, metric and normalisation), all circuits of one
//! dataset in one batched evaluation.

use circuit_sweep_common::Component;
use circuit_sweep_common::spec::AblationSpec;

use crate::eval::{Evaluator, PromptSet};
use crate::model::{HookedModel, ModelError};

/// Scores (% of the full model on `prompts`) of `circuits`, each with every other component of
/// the model ablated.
pub fn score_circuits(
    model: &HookedModel,
    prompts: &PromptSet,
    ablation: AblationSpec,
    circuits: &[Vec<Component>],
    batch_tokens: usize,
) -> Result<Vec<f64>, ModelError> {
    let info = model.info();
    let all = Component::all(info.n_layers, info.n_heads);
    let complements: Vec<Vec<Component>> = circuits
        .iter()
        .map(|c| all.iter().filter(|x| !c.contains(x)).copied().collect())
        .collect();
    let ev = Evaluator::new(model, prompts, ablation, batch_tokens)?;
    ev.scores(&complements)
}
