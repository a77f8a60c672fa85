//! Settings that used to give confident wrong numbers, each now correct or refused: denoising
//! (the whole circuit restores the clean run exactly, the empty one is the corrupt run),
//! half-precision models (means accumulated in f32, node sweeps within a measured tolerance of
//! f32), the empty circuit as the zero of `normalize = "empty"`, and zero ablation that keeps
//! the value bias as TransformerLens does.

mod common;

use candle_core::DType;
use circuit_sweep_common::Component;
use circuit_sweep_common::metric;
use circuit_sweep_common::spec::{AblationKind, AblationSpec, Direction, Metric, Normalize};
use circuit_sweep_worker::{
    Activations, Capture, Evaluator, HookedModel, Interventions, LoadOptions, LogitSelection,
    RunRequest, Start, load_model, sweep,
};
use common::*;

const ARCHS: [&str; 4] = ["gpt2", "llama", "neox", "neox_sequential"];

fn denoising(normalize: Normalize) -> AblationSpec {
    AblationSpec {
        kind: AblationKind::Resample,
        direction: Direction::Denoising,
        metric: Metric::LogitDiff,
        normalize,
        fold_value_bias: false,
    }
}

fn all(m: &HookedModel) -> Vec<Component> {
    Component::all(m.info().n_layers, m.info().n_heads)
}

/// The mean logit difference of last-position logits `[prompts, vocab]`.
fn logit_diff(logits: &candle_core::Tensor, answer: &[u32], wrong: &[u32]) -> f64 {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.iter()
        .zip(answer.iter().zip(wrong))
        .map(|(r, (&a, &w))| (r[a as usize] - r[w as usize]) as f64)
        .sum::<f64>()
        / rows.len() as f64
}

#[test]
fn denoising_the_whole_circuit_restores_the_clean_run_and_the_empty_one_is_the_corrupt_run() {
    for name in ARCHS {
        let m = load_fixture(name).model;
        let p = fixture_prompts_keep_last(name);
        let ev = Evaluator::new(&m, &p, denoising(Normalize::CleanCorrupt), 4096).unwrap();
        // By hand: the clean and corrupt runs' logit differences.
        let run = |ids: &[Vec<u32>]| {
            m.run(&RunRequest {
                logits: LogitSelection::Last,
                ..RunRequest::new(Start::Tokens(m.tokens(ids).unwrap()))
            })
            .unwrap()
            .logits
            .unwrap()
        };
        let clean = logit_diff(&run(&p.clean), &p.answer, &p.wrong);
        let corrupt = logit_diff(&run(&p.corrupt), &p.answer, &p.wrong);
        assert!(
            (ev.full - clean).abs() < 1e-4,
            "{name}: {} vs {clean}",
            ev.full
        );
        assert!((ev.corrupt - corrupt).abs() < 1e-4, "{name}");
        let s = ev.scores(&[vec![], all(&m)]).unwrap();
        // Exactly, up to the last bits of the batched sums.
        assert!(
            (s[0] - 100.0).abs() < 1e-9 && s[1].abs() < 1e-9,
            "{name}: whole circuit {}, empty circuit {}",
            s[0],
            s[1]
        );
        // Every single-component sweep score lies between: the median is far from the 27 % the
        // clean *mean* gave when it was patched into the kept components.
        let singles: Vec<Vec<Component>> = all(&m).into_iter().map(|c| vec![c]).collect();
        let mut v = ev.scores(&singles).unwrap();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        assert!(
            median > 50.0,
            "{name}: median single-ablation score {median}"
        );
        // A circuit is its components' paired clean activations patched into the corrupt run
        // (by hand, with the hooked model's public interventions).
        let kept = vec![
            Component::Head { layer: 1, head: 0 },
            Component::Mlp { layer: 2 },
            Component::Head { layer: 2, head: 1 },
        ];
        let ablated: Vec<Component> = all(&m).into_iter().filter(|c| !kept.contains(c)).collect();
        let cap = m
            .run(&RunRequest {
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(m.tokens(&p.clean).unwrap()))
            })
            .unwrap();
        let clean_acts = Activations::from_captured(&cap.captured).unwrap();
        let by_hand = m
            .run(&RunRequest {
                interventions: Some(Interventions::nodes(&clean_acts, vec![kept.clone()])),
                logits: LogitSelection::Last,
                ..RunRequest::new(Start::Tokens(m.tokens(&p.corrupt).unwrap()))
            })
            .unwrap()
            .logits
            .unwrap();
        let want = logit_diff(&by_hand, &p.answer, &p.wrong);
        let got = ev.metrics(&[ablated]).unwrap()[0];
        assert!((got - want).abs() < 1e-4, "{name}: {got} vs {want}");
    }
}

#[test]
fn denoising_without_a_sound_meaning_is_refused() {
    let m = load_fixture("gpt2").model;
    for kind in [AblationKind::Mean, AblationKind::Zero] {
        let spec = AblationSpec {
            kind,
            ..denoising(Normalize::Full)
        };
        let e = Evaluator::new(&m, &fixture_prompts_keep_last("gpt2"), spec, 4096)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("kind = \"resample\""), "{kind:?}: {e}");
    }
    // The fixture's corrupt prompts end with other tokens than the clean ones.
    let e = Evaluator::new(
        &m,
        &fixture_prompts("gpt2"),
        denoising(Normalize::Full),
        4096,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("end with different tokens"), "{e}");
}

#[test]
fn the_empty_circuit_is_the_zero_of_normalize_empty() {
    for name in ARCHS {
        let m = load_fixture(name).model;
        let spec = AblationSpec {
            normalize: Normalize::Empty,
            ..AblationSpec::default()
        };
        let mut ev = Evaluator::new(&m, &fixture_prompts(name), spec, 4096).unwrap();
        let empty = ev.metrics(&[all(&m)]).unwrap()[0];
        ev.set_empty(empty);
        let s = ev
            .scores(&[vec![], all(&m), vec![Component::Mlp { layer: 0 }]])
            .unwrap();
        assert!(
            (s[0] - 100.0).abs() < 1e-9 && s[1].abs() < 1e-9,
            "{name}: {s:?}"
        );
        let mlp0 = ev.metrics(&[vec![Component::Mlp { layer: 0 }]]).unwrap()[0];
        let want = 100.0 * (mlp0 - empty) / (ev.full - empty);
        assert!((s[2] - want).abs() < 1e-12, "{name}");
    }
}

/// Node-sweep scores of `name` loaded in `dtype`.
fn node_sweep(name: &str, dtype: DType) -> Vec<f64> {
    let path = fixtures().join("models").join(name);
    let m = load_model(
        &path,
        &LoadOptions {
            dtype,
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .model;
    let ev = Evaluator::new(&m, &fixture_prompts(name), AblationSpec::default(), 4096).unwrap();
    let i = m.info();
    let s = sweep::node_sweep(&ev, i.n_layers, i.n_heads, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    s.heads.into_iter().flatten().chain(s.mlps).collect()
}

#[test]
fn half_precision_node_sweeps_agree_with_f32() {
    for name in ARCHS {
        let f32s = node_sweep(name, DType::F32);
        for (dtype, tol) in [(DType::BF16, HALF_TOL_BF16), (DType::F16, HALF_TOL_F16)] {
            let half = node_sweep(name, dtype);
            let worst = f32s
                .iter()
                .zip(&half)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{name} {dtype:?}: worst node score difference {worst:.3} pp");
            assert!(worst <= tol, "{name} {dtype:?}: {worst} pp > {tol}");
        }
    }
}

/// Tolerances of half-precision node sweeps on the random fixtures, in percentage points
/// (measured worst cases, with margin).
const HALF_TOL_BF16: f64 = 5.0;
const HALF_TOL_F16: f64 = 1.0;

#[test]
fn the_value_bias_is_read_from_the_value_projection() {
    let weights = |name: &str| {
        candle_core::safetensors::load(
            fixtures()
                .join("models")
                .join(name)
                .join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    // GPT-2: c_attn's bias is [q (d) | k (d) | v (d)].
    let m = load_fixture("gpt2").model;
    let (h, dh, d) = (m.info().n_heads, m.info().d_head, m.info().d_model);
    let w = weights("gpt2");
    let key = w
        .keys()
        .find(|k| k.ends_with("h.1.attn.c_attn.bias"))
        .unwrap();
    let want = w[key]
        .narrow(0, 2 * d, d)
        .unwrap()
        .reshape((h, dh))
        .unwrap();
    let got = m.value_bias(1).unwrap().unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    // GPT-NeoX: query_key_value's bias is per head [q (dh) | k (dh) | v (dh)].
    let m = load_fixture("neox").model;
    let (h, dh) = (m.info().n_heads, m.info().d_head);
    let w = weights("neox");
    let key = w
        .keys()
        .find(|k| k.ends_with("layers.2.attention.query_key_value.bias"))
        .unwrap();
    let want = w[key]
        .reshape((h, 3, dh))
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    assert_eq!(max_abs_diff(&m.value_bias(2).unwrap().unwrap(), &want), 0.0);
    // The Llama fixture has no attention biases.
    assert!(load_fixture("llama").model.value_bias(0).unwrap().is_none());
}

#[test]
fn zero_ablation_keeping_the_value_bias_replaces_z_by_it() {
    let m = load_fixture("gpt2").model;
    let p = fixture_prompts("gpt2");
    let zero = |fold| AblationSpec {
        kind: AblationKind::Zero,
        fold_value_bias: fold,
        ..AblationSpec::default()
    };
    let plain = Evaluator::new(&m, &p, zero(false), 4096).unwrap();
    let folded = Evaluator::new(&m, &p, zero(true), 4096).unwrap();
    let head = vec![Component::Head { layer: 1, head: 2 }];
    // By hand: the head's z replaced by its value bias at every position.
    let t = p.clean[0].len();
    let mut values = Activations::zeros(m.info(), t, DType::F32, m.device()).unwrap();
    let b = m.value_bias(1).unwrap().unwrap();
    values.z[1] = b
        .unsqueeze(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((1, t, m.info().n_heads, m.info().d_head))
        .unwrap()
        .contiguous()
        .unwrap();
    let logits = m
        .run(&RunRequest {
            interventions: Some(Interventions::nodes(&values, vec![head.clone()])),
            logits: LogitSelection::Last,
            ..RunRequest::new(Start::Tokens(m.tokens(&p.clean).unwrap()))
        })
        .unwrap()
        .logits
        .unwrap();
    let want = logit_diff(&logits, &p.answer, &p.wrong);
    let got = folded.metrics(std::slice::from_ref(&head)).unwrap()[0];
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    assert!(
        (got - plain.metrics(&[head]).unwrap()[0]).abs() > 1e-6,
        "the fixture's value bias is not zero, so keeping it changes the score"
    );
}

#[test]
fn degenerate_baselines_are_named() {
    // The fixture with answer and wrong swapped: the model prefers the wrong token.
    let m = load_fixture("gpt2").model;
    let mut p = fixture_prompts("gpt2");
    let ev = Evaluator::new(&m, &p, AblationSpec::default(), 4096).unwrap();
    let sign = ev.full.signum();
    if sign > 0.0 {
        std::mem::swap(&mut p.answer, &mut p.wrong);
    }
    let ev = Evaluator::new(&m, &p, AblationSpec::default(), 4096).unwrap();
    assert!(ev.full < 0.0);
    let e = metric::check_baselines(
        Metric::LogitDiff,
        Normalize::Full,
        ev.full,
        ev.corrupt,
        None,
    )
    .unwrap_err();
    assert!(e.contains("prefers `wrong` to `answer`"), "{e}");
}
