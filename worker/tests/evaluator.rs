//! The batched evaluator (variants stacked in the batch, cached residual stream below the first
//! ablated layer, only the needed logits) against the naive path (one full, unbatched forward
//! per candidate), for every ablation kind, direction and metric.

mod common;

use circuit_sweep_common::Component;
use circuit_sweep_common::spec::{AblationKind, AblationSpec, Direction, Metric, Normalize};
use circuit_sweep_common::tasks::{self, GenSpec};
use circuit_sweep_worker::{Evaluator, HookedModel, PromptSet};
use common::*;

fn singles(m: &HookedModel) -> Vec<Vec<Component>> {
    let i = m.info();
    Component::all(i.n_layers, i.n_heads)
        .into_iter()
        .map(|c| vec![c])
        .collect()
}

#[test]
fn batched_equals_naive_for_every_ablation_setting_on_random_models() {
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name).model;
        let prompts = fixture_prompts_keep_last(name);
        for kind in [
            AblationKind::Mean,
            AblationKind::Zero,
            AblationKind::Resample,
        ] {
            for direction in [Direction::Noising, Direction::Denoising] {
                // Denoising lets the circuit's complement compute on the corrupt run.
                if direction == Direction::Denoising && kind != AblationKind::Resample {
                    continue;
                }
                for metric in [Metric::LogitDiff, Metric::Kl, Metric::Accuracy] {
                    let spec = AblationSpec {
                        kind,
                        direction,
                        metric,
                        normalize: Normalize::Full,
                        fold_value_bias: false,
                    };
                    // A small token budget forces several chunks per start layer.
                    let ev = Evaluator::new(&m, &prompts, spec, 50).unwrap();
                    let mut cands = singles(&m);
                    cands.push(vec![]);
                    cands.push(vec![
                        Component::Head { layer: 1, head: 0 },
                        Component::Mlp { layer: 2 },
                    ]);
                    let fast = ev.metrics(&cands).unwrap();
                    let slow = ev.metrics_naive(&cands, true).unwrap();
                    for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5,
                            "{name} {spec:?} candidate {i}: {a} vs {b}"
                        );
                    }
                    if metric == Metric::LogitDiff && direction == Direction::Noising {
                        // Nothing ablated is the full model; something ablated changes it.
                        assert!((fast[fast.len() - 2] - ev.full).abs() < 1e-5);
                        assert!(fast.iter().any(|v| (v - ev.full).abs() > 1e-3));
                    }
                    if metric == Metric::Kl && direction == Direction::Noising {
                        assert!(
                            fast[fast.len() - 2].abs() < 1e-6,
                            "KL of the full model with itself"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn default_model_node_sweep_equals_the_naive_path() {
    let loaded = default_model();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let pairs = tasks::generate(&GenSpec::new("digits".parse().unwrap(), 16, 0), tok).unwrap();
    let prompts = PromptSet::from_pairs(&pairs, tok).unwrap();
    let m = &loaded.model;
    let ev = Evaluator::new(m, &prompts, AblationSpec::default(), 16384).unwrap();
    assert!(
        ev.full > 1.0,
        "the model does the digits task: full logit diff {}",
        ev.full
    );
    // Every head of five layers spread over the model (the batched sweep runs them from five
    // different cached layers); `circuit-sweep bench sweep` compares all 300 components.
    let heads: Vec<Vec<Component>> = singles(m)
        .into_iter()
        .filter(|c| matches!(c[0], Component::Head { layer, .. } if [0, 7, 15, 22, 29].contains(&layer)))
        .collect();
    assert_eq!(heads.len(), 45);
    let fast = ev.scores(&heads).unwrap();
    let slow: Vec<f64> = ev
        .metrics_naive(&heads, true)
        .unwrap()
        .into_iter()
        .map(|x| ev.score_of(x))
        .collect();
    let worst = fast
        .iter()
        .zip(&slow)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "worst difference {worst:.2e} percentage points over {} heads",
        heads.len()
    );
    assert!(worst <= 1e-3, "{worst}");
}
