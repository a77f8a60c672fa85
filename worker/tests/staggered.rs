//! Staggered passes of node candidates (each joins its pass where it first differs from a run
//! already computed) give every candidate the very number the plain batched path gives its
//! ablated set, bit for bit, however the calls, kept runs and pass slices fall; and the driver
//! refuses malformed staggers.

mod common;

use circuit_sweep_common::Component;
use circuit_sweep_common::rng::Rng;
use circuit_sweep_common::spec::{AblationKind, AblationSpec, Direction, Metric, Normalize};
use circuit_sweep_worker::eval::NodeCandidate;
use circuit_sweep_worker::model::{Join, JoinFrom, Stagger};
use circuit_sweep_worker::{Evaluator, Interventions, ModelError, RunRequest, Start};
use common::*;

/// Steps of a few searches as pruning makes them: each search has a circuit so far (settled)
/// that grows, and proposes chains (each candidate ablating the ones before it too) or
/// independent candidates against it.
fn steps(all: &[Component], seed: u64) -> Vec<Vec<NodeCandidate>> {
    let mut rng = Rng::derive(seed, "staggered test");
    let searches = 3;
    let mut orders: Vec<Vec<Component>> = (0..searches)
        .map(|_| {
            let mut o = all.to_vec();
            rng.shuffle(&mut o);
            o
        })
        .collect();
    let mut settled: Vec<Vec<Component>> = vec![vec![]; searches];
    let mut out = vec![];
    for step in 0..8 {
        let mut cands = vec![];
        for s in 0..searches {
            let k = 1 + (step + s) % 4;
            let chain = (step + s) % 2 == 0;
            let take = k.min(orders[s].len());
            let next: Vec<Component> = orders[s].drain(..take).collect();
            for (i, &c) in next.iter().enumerate() {
                let mut ablated = settled[s].clone();
                if chain {
                    ablated.extend_from_slice(&next[..i]);
                }
                ablated.push(c);
                cands.push(NodeCandidate {
                    ablated,
                    settled: settled[s].clone(),
                });
            }
            // Some of what was proposed is removed: the next settled set is a candidate's
            // (as when a chain's guesses held) or something else (a guess failed).
            if let Some(last) = cands.last() {
                settled[s] = if step % 3 == 2 {
                    let mut v = settled[s].clone();
                    v.push(next[0]);
                    v
                } else {
                    last.ablated.clone()
                };
            }
        }
        out.push(cands);
    }
    out
}

#[test]
fn staggered_passes_equal_the_plain_path_bit_for_bit_on_every_architecture() {
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name).model;
        let prompts = fixture_prompts_keep_last(name);
        let i = m.info().clone();
        let all = Component::all(i.n_layers, i.n_heads);
        for (metric, kind) in [
            (Metric::LogitDiff, AblationKind::Mean),
            (Metric::Kl, AblationKind::Resample),
        ] {
            let spec = AblationSpec {
                kind,
                direction: Direction::Noising,
                metric,
                normalize: Normalize::Full,
                fold_value_bias: false,
            };
            // A budget of a few variants per pass cuts steps into several passes.
            for budget in [1 << 14, 3 * prompts.clean.len() * prompts.clean[0].len()] {
                let ev = Evaluator::new(&m, &prompts, spec, budget).unwrap();
                for (s, cands) in steps(&all, 7).iter().enumerate() {
                    let staggered = ev.node_metrics(cands).unwrap();
                    let sets: Vec<Vec<Component>> =
                        cands.iter().map(|c| c.ablated.clone()).collect();
                    let plain = ev.metrics(&sets).unwrap();
                    for (j, (a, b)) in staggered.iter().zip(&plain).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits(),
                            "{name} {metric:?} budget {budget}, step {s} candidate {j}: {a} vs {b}"
                        );
                    }
                }
                // Staggered passes ran fewer blocks than passes from each lowest layer.
                let (scored, blocks) = ev.node_work();
                let plain_blocks: usize = steps(&all, 7)
                    .iter()
                    .flatten()
                    .map(|c| {
                        let low = c.ablated.iter().map(Component::layer).min().unwrap();
                        i.n_layers - low
                    })
                    .sum();
                assert!(scored > 0);
                assert!(
                    blocks - plain_blocks < plain_blocks,
                    "{name}: {blocks} blocks in all, {plain_blocks} of them the plain path's"
                );
            }
        }
    }
}

#[test]
fn a_candidate_that_settles_what_it_does_not_ablate_is_refused() {
    let m = load_fixture("gpt2").model;
    let ev = Evaluator::new(
        &m,
        &fixture_prompts_keep_last("gpt2"),
        AblationSpec::default(),
        4096,
    )
    .unwrap();
    let err = ev
        .node_metrics(&[NodeCandidate {
            ablated: vec![Component::Mlp { layer: 1 }],
            settled: vec![Component::Mlp { layer: 0 }],
        }])
        .unwrap_err();
    assert!(err.to_string().contains("settles"), "{err}");
}

/// Elements the storage under `t` holds (CPU tensors).
fn stored(t: &candle_core::Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
        candle_core::Storage::Cpu(candle_core::CpuStorage::F64(v)) => v.len(),
        _ => panic!("a CPU test in f32 or f64"),
    }
}

#[test]
fn a_kept_run_holds_its_own_rows_not_the_pass_s() {
    // A kept run outlives its pass by many passes: a stream sharing the pass's storage held
    // every variant's rows at every layer (tens of GiB in a long order study).
    let m = load_fixture("llama").model;
    let prompts = fixture_prompts_keep_last("llama");
    let spec = AblationSpec {
        kind: AblationKind::Mean,
        direction: Direction::Noising,
        metric: Metric::LogitDiff,
        normalize: Normalize::Full,
        fold_value_bias: false,
    };
    let ev = Evaluator::new(&m, &prompts, spec, 1 << 14).unwrap();
    let all = Component::all(m.info().n_layers, m.info().n_heads);
    let cands: Vec<NodeCandidate> = (1..6)
        .map(|k| NodeCandidate {
            ablated: all[..k].to_vec(),
            settled: vec![],
        })
        .collect();
    ev.node_scores(&cands).unwrap();
    let kept = ev.node_base_streams();
    assert!(!kept.is_empty(), "a chain keeps its last run");
    for t in kept {
        assert_eq!(stored(&t), t.elem_count(), "{:?}", t.shape());
    }
}

#[test]
fn the_driver_refuses_malformed_staggers() {
    let m = load_fixture("gpt2").model;
    let prompts = fixture_prompts_keep_last("gpt2");
    let ids = m.tokens(&prompts.clean).unwrap();
    let captured = m
        .run(&RunRequest {
            capture: circuit_sweep_worker::Capture {
                resid: true,
                ..Default::default()
            },
            ..RunRequest::new(Start::Tokens(ids))
        })
        .unwrap()
        .captured;
    let resid = |l: usize| captured.resid[l].clone().unwrap();
    let values = circuit_sweep_worker::Activations::from_captured(
        &m.run(&RunRequest {
            capture: circuit_sweep_worker::Capture::all(),
            ..RunRequest::new(Start::Tokens(m.tokens(&prompts.corrupt).unwrap()))
        })
        .unwrap()
        .captured,
    )
    .unwrap()
    .mean_over_prompts()
    .unwrap();
    let run = |joins: Vec<Join>, variants: Vec<Vec<Component>>| -> Result<(), ModelError> {
        m.run(&RunRequest {
            interventions: Some(Interventions::nodes(&values, variants)),
            ..RunRequest::new(Start::Staggered(Stagger {
                joins,
                keep: vec![],
            }))
        })
        .map(|_| ())
    };
    let at = |layer: usize, from: JoinFrom| Join { layer, from };
    let mlp = |layer| vec![Component::Mlp { layer }];
    // Well formed (the runs need not agree below the join for the driver to accept it).
    run(
        vec![
            at(0, JoinFrom::Resid(resid(0))),
            at(1, JoinFrom::Variant(0)),
        ],
        vec![mlp(0), mlp(1)],
    )
    .unwrap();
    for (joins, variants, why) in [
        (
            vec![
                at(1, JoinFrom::Resid(resid(1))),
                at(0, JoinFrom::Resid(resid(0))),
            ],
            vec![mlp(1), mlp(0)],
            "sorted",
        ),
        (
            vec![at(0, JoinFrom::Variant(0))],
            vec![mlp(0)],
            "earlier one",
        ),
        (
            vec![at(1, JoinFrom::Resid(resid(1)))],
            vec![mlp(0)],
            "below its join",
        ),
        (
            vec![at(0, JoinFrom::Resid(resid(0)))],
            vec![mlp(0), mlp(1)],
            "1 joins for 2 variants",
        ),
        (
            vec![
                at(0, JoinFrom::Resid(resid(0))),
                at(m.info().n_layers, JoinFrom::Variant(0)),
            ],
            vec![mlp(0), vec![]],
            "past the last block",
        ),
    ] {
        let err = run(joins, variants).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
}
