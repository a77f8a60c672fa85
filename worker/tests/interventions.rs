//! Interventions: re-injecting captured activations is exact, a pass started from the cached
//! residual stream equals a full pass, and variants batched in one pass equal separate passes.

mod common;

use candle_core::{IndexOp, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_worker::{
    Activations, Capture, HookedModel, Interventions, LogitSelection, ModelError, RunRequest, Start,
};
use common::*;

fn ids_of(name: &str) -> Vec<Vec<u32>> {
    id_rows(&expected(name)["input_ids"])
}

fn capture(model: &HookedModel, ids: &Tensor) -> circuit_sweep_worker::RunOutput {
    model
        .run(&RunRequest {
            capture: Capture::all(),
            logits: LogitSelection::Last,
            ..RunRequest::new(Start::Tokens(ids.clone()))
        })
        .unwrap()
}

/// Last-position logits of `variants`, computed at every position like the capturing run (the
/// final block's last-position-only shortcut rounds differently, see `last_position_shortcut`).
fn run_variants(
    model: &HookedModel,
    start: Start,
    values: &Activations,
    variants: Vec<Vec<Component>>,
) -> Tensor {
    let all = run_selected(model, start, values, variants, LogitSelection::All);
    let t = all.dim(1).unwrap();
    all.i((.., t - 1, ..)).unwrap()
}

fn run_selected(
    model: &HookedModel,
    start: Start,
    values: &Activations,
    variants: Vec<Vec<Component>>,
    logits: LogitSelection,
) -> Tensor {
    model
        .run(&RunRequest {
            interventions: Some(Interventions::nodes(values, variants)),
            logits,
            ..RunRequest::new(start)
        })
        .unwrap()
        .logits
        .unwrap()
}

/// A deterministic spread of components: some heads and MLPs in several layers.
fn some_components(model: &HookedModel, from_layer: usize) -> Vec<Component> {
    let i = model.info();
    Component::all(i.n_layers, i.n_heads)
        .into_iter()
        .filter(|c| c.layer() >= from_layer)
        .enumerate()
        .filter(|(k, _)| k % 3 == 0)
        .map(|(_, c)| c)
        .collect()
}

fn reinjection_is_exact(model: &HookedModel, rows: &[Vec<u32>]) {
    let ids = model.tokens(rows).unwrap();
    let base = capture(model, &ids);
    let values = Activations::from_captured(&base.captured).unwrap();
    let i = model.info();
    let everything = Component::all(i.n_layers, i.n_heads);
    let got = run_variants(model, Start::Tokens(ids), &values, vec![everything, vec![]]);
    let n = rows.len();
    let want = base.logits.unwrap();
    assert_eq!(
        max_abs_diff(&got.i(..n).unwrap(), &want),
        0.0,
        "all components re-injected"
    );
    assert_eq!(
        max_abs_diff(&got.i(n..).unwrap(), &want),
        0.0,
        "the empty variant"
    );
}

fn cached_start_equals_full_pass(
    model: &HookedModel,
    rows: &[Vec<u32>],
    corrupt: &[Vec<u32>],
    layer: usize,
) {
    let ids = model.tokens(rows).unwrap();
    let corrupt = model.tokens(corrupt).unwrap();
    let means = Activations::from_captured(&capture(model, &corrupt).captured)
        .unwrap()
        .mean_over_prompts()
        .unwrap();
    let comps = some_components(model, layer);
    assert!(!comps.is_empty());
    let variants = vec![comps.clone(), comps[..1].to_vec(), vec![]];
    let full = run_variants(model, Start::Tokens(ids.clone()), &means, variants.clone());
    let resid = capture(model, &ids).captured.resid[layer].clone().unwrap();
    let cached = run_variants(model, Start::Resid { layer, resid }, &means, variants);
    let d = max_abs_diff(&full, &cached);
    assert!(d <= 1e-5, "start at layer {layer}: {d}");
    // And the ablation did something, so the comparison means something.
    let plain = capture(model, &ids).logits.unwrap();
    let n = rows.len();
    assert!(max_abs_diff(&full.i(..n).unwrap(), &plain) > 1e-3);
}

fn batched_variants_equal_separate_passes(model: &HookedModel, rows: &[Vec<u32>]) {
    let ids = model.tokens(rows).unwrap();
    let values = Activations::zeros(
        model.info(),
        rows[0].len(),
        model.info().dtype,
        model.device(),
    )
    .unwrap();
    let i = model.info();
    let variants: Vec<Vec<Component>> = vec![
        vec![Component::Head { layer: 0, head: 0 }],
        vec![Component::Mlp {
            layer: i.n_layers - 1,
        }],
        vec![
            Component::Head {
                layer: 1,
                head: i.n_heads - 1,
            },
            Component::Mlp { layer: 0 },
        ],
        vec![],
    ];
    let batched = run_variants(model, Start::Tokens(ids.clone()), &values, variants.clone());
    let n = rows.len();
    for (v, comps) in variants.into_iter().enumerate() {
        let alone = run_variants(
            model,
            Start::Tokens(ids.clone()),
            &values,
            vec![comps.clone()],
        );
        let d = max_abs_diff(&batched.i(v * n..(v + 1) * n).unwrap(), &alone);
        assert!(d <= 1e-5, "variant {v} ({comps:?}): {d}");
    }
}

#[test]
fn reinjection_reproduces_logits_exactly_on_every_architecture() {
    for name in ["gpt2", "llama", "llama3_sharded", "neox", "neox_sequential"] {
        let m = load_fixture(name);
        reinjection_is_exact(&m.model, &ids_of(name));
    }
}

#[test]
fn cached_residual_start_equals_full_forward_on_every_architecture() {
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name);
        let rows = ids_of(name);
        let corrupt: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.iter().map(|&t| (t * 7 + 3) % 96).collect())
            .collect();
        for layer in [0, 1, 2] {
            cached_start_equals_full_pass(&m.model, &rows, &corrupt, layer);
        }
    }
}

#[test]
fn batched_variants_equal_separate_passes_on_every_architecture() {
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name);
        batched_variants_equal_separate_passes(&m.model, &ids_of(name));
    }
}

#[test]
fn resample_values_are_per_prompt() {
    // Resample ablation: each prompt gets its own paired activation; swapping the pairing
    // must change the result, and pairing a prompt with itself must change nothing.
    let m = load_fixture("llama");
    let rows = ids_of("llama");
    let ids = m.model.tokens(&rows).unwrap();
    let base = capture(&m.model, &ids);
    let own = Activations::from_captured(&base.captured).unwrap();
    let comps = vec![
        Component::Head { layer: 1, head: 3 },
        Component::Mlp { layer: 2 },
    ];
    let same = run_variants(
        &m.model,
        Start::Tokens(ids.clone()),
        &own,
        vec![comps.clone()],
    );
    assert_eq!(max_abs_diff(&same, base.logits.as_ref().unwrap()), 0.0);
    let swapped_rows: Vec<Vec<u32>> = rows.iter().rev().cloned().collect();
    let swapped = Activations::from_captured(
        &capture(&m.model, &m.model.tokens(&swapped_rows).unwrap()).captured,
    )
    .unwrap();
    let other = run_variants(&m.model, Start::Tokens(ids), &swapped, vec![comps]);
    assert!(max_abs_diff(&other, base.logits.as_ref().unwrap()) > 1e-3);
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let m = load_fixture("gpt2");
    let rows = ids_of("gpt2");
    let ids = m.model.tokens(&rows).unwrap();
    let base = capture(&m.model, &ids);
    let values = Activations::from_captured(&base.captured).unwrap();
    let resid = base.captured.resid[2].clone().unwrap();
    let below = m.model.run(&RunRequest {
        interventions: Some(Interventions::nodes(
            &values,
            vec![vec![Component::Head { layer: 1, head: 0 }]],
        )),
        ..RunRequest::new(Start::Resid { layer: 2, resid })
    });
    assert!(
        matches!(&below, Err(ModelError::InvalidRequest(m)) if m.contains("h1.0") && m.contains("start layer 2")),
        "{below:?}"
    );
    let outside = m.model.run(&RunRequest {
        interventions: Some(Interventions::nodes(
            &values,
            vec![vec![Component::Head { layer: 40, head: 2 }]],
        )),
        ..RunRequest::new(Start::Tokens(ids.clone()))
    });
    assert!(
        matches!(&outside, Err(ModelError::InvalidRequest(m)) if m.contains("h40.2")),
        "{outside:?}"
    );
    let uneven = m.model.tokens(&[vec![1, 2, 3], vec![1, 2]]);
    assert!(
        matches!(&uneven, Err(ModelError::InvalidRequest(m)) if m.contains("prompt 1 has 2 tokens")),
        "{uneven:?}"
    );
    let vocab = m.model.run(&RunRequest {
        logits: LogitSelection::LastIds(vec![5, 96]),
        ..RunRequest::new(Start::Tokens(ids))
    });
    assert!(
        matches!(&vocab, Err(ModelError::InvalidRequest(m)) if m.contains("96")),
        "{vocab:?}"
    );
}

#[test]
fn last_position_shortcut_equals_the_full_final_block() {
    // With last-position logits the final block computes only the last position; with
    // interventions in that block too (mean values narrowed to the last position), the logits
    // equal those of the full computation up to matmul rounding.
    for name in ["gpt2", "llama", "neox", "neox_sequential"] {
        let m = load_fixture(name);
        let ids = m.model.tokens(&ids_of(name)).unwrap();
        let base = capture(&m.model, &ids);
        let values = Activations::from_captured(&base.captured)
            .unwrap()
            .mean_over_prompts()
            .unwrap();
        let i = m.model.info();
        let last = i.n_layers - 1;
        let variants = vec![
            vec![],
            vec![Component::Head {
                layer: last,
                head: 0,
            }],
            vec![Component::Mlp { layer: last }],
            some_components(&m.model, 0),
        ];
        let start = || Start::Tokens(ids.clone());
        let full = run_variants(&m.model, start(), &values, variants.clone());
        let short = run_selected(&m.model, start(), &values, variants, LogitSelection::Last);
        assert_eq!(short.dims(), full.dims(), "{name}");
        let d = max_abs_diff(&short, &full);
        assert!(d <= 1e-5, "{name}: {d}");
        // The shortcut is not a no-op: ablating the final MLP changes the logits.
        let n = ids.dim(0).unwrap();
        assert!(max_abs_diff(&short.i(2 * n..3 * n).unwrap(), &short.i(..n).unwrap()) > 1e-4);
    }
}

#[test]
fn selected_logit_ids_equal_the_full_vocabulary_columns() {
    let m = load_fixture("neox");
    let ids = m.model.tokens(&ids_of("neox")).unwrap();
    let full = capture(&m.model, &ids).logits.unwrap();
    let sel = m
        .model
        .run(&RunRequest {
            logits: LogitSelection::LastIds(vec![7, 3, 95]),
            ..RunRequest::new(Start::Tokens(ids))
        })
        .unwrap()
        .logits
        .unwrap();
    for (k, id) in [7usize, 3, 95].into_iter().enumerate() {
        assert!(max_abs_diff(&sel.i((.., k)).unwrap(), &full.i((.., id)).unwrap()) <= 1e-5);
    }
}

#[test]
fn default_model_reinjection_and_cached_start() {
    let m = default_model();
    let tok = m.tokenizer.as_ref().unwrap();
    let rows: Vec<Vec<u32>> = ["1 2 3 4 ", "5 6 7 8 "]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let corrupt: Vec<Vec<u32>> = ["3 9 2 7 ", "8 1 6 2 "]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    reinjection_is_exact(&m.model, &rows);
    cached_start_equals_full_pass(&m.model, &rows, &corrupt, 20);
}

#[test]
fn a_variant_does_not_depend_on_its_batch() {
    // Shards and lockstep order studies put a candidate in batches of any size; its numbers
    // must not change (bit for bit), also for one prompt, where matmuls have few rows.
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name);
        let rows = ids_of(name);
        for rows in [rows.clone(), rows[..1].to_vec()] {
            let ids = m.model.tokens(&rows).unwrap();
            let values = Activations::from_captured(&capture(&m.model, &ids).captured)
                .unwrap()
                .mean_over_prompts()
                .unwrap();
            let a = vec![
                Component::Head { layer: 0, head: 1 },
                Component::Mlp { layer: 1 },
            ];
            let b = vec![Component::Head { layer: 1, head: 0 }];
            let n = rows.len();
            for sel in [
                LogitSelection::Last,
                LogitSelection::LastIds(vec![3, 7]),
                LogitSelection::All,
            ] {
                let start = || Start::Tokens(ids.clone());
                let alone = run_selected(&m.model, start(), &values, vec![a.clone()], sel.clone());
                for k in [1, 5, 20] {
                    let mut vs = vec![a.clone()];
                    vs.extend(std::iter::repeat_n(b.clone(), k));
                    let together = run_selected(&m.model, start(), &values, vs, sel.clone());
                    assert_eq!(
                        max_abs_diff(&together.i(..n).unwrap(), &alone),
                        0.0,
                        "{name}, {n} prompts, {sel:?}, with {k} others"
                    );
                }
            }
        }
    }
}
