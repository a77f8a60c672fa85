//! Edge interventions on small random-weight models of every architecture: the
//! invariants (every edge out of a sender = the sender's node ablated; every edge into a
//! receiver = its whole input replaced by the ablated one), exactness where an edge cannot
//! matter, and many edges per pass equal to one edge per pass.

mod common;

use candle_core::Tensor;
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, Qkv, Receiver, Sender};
use circuit_sweep_worker::{
    Activations, Capture, HookedModel, Interventions, LogitSelection, RunRequest, Start,
};
use common::*;

const ARCHS: [&str; 4] = ["gpt2", "llama", "neox", "neox_sequential"];

struct Setup {
    ids: Tensor,
    /// Per-position means over corrupt prompts.
    means: Activations,
}

fn setup(model: &HookedModel, name: &str) -> Setup {
    let rows = id_rows(&expected(name)["input_ids"]);
    let corrupt: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| r.iter().map(|&t| (t * 7 + 3) % 96).collect())
        .collect();
    let run = |ids: &Tensor| {
        model
            .run(&RunRequest {
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(ids.clone()))
            })
            .unwrap()
    };
    let corrupt = run(&model.tokens(&corrupt).unwrap());
    Setup {
        ids: model.tokens(&rows).unwrap(),
        means: Activations::from_captured(&corrupt.captured)
            .unwrap()
            .mean_over_prompts()
            .unwrap(),
    }
}

/// Last-position logits of one pass.
fn logits(model: &HookedModel, start: Start, iv: Interventions<'_>) -> Tensor {
    model
        .run(&RunRequest {
            interventions: Some(iv),
            logits: LogitSelection::Last,
            ..RunRequest::new(start)
        })
        .unwrap()
        .logits
        .unwrap()
}

fn edges_iv<'a>(values: &'a Activations, edges: Vec<Vec<Edge>>) -> Interventions<'a> {
    Interventions {
        variants: vec![vec![]; edges.len()],
        edges,
        ..Interventions::nodes(values, vec![])
    }
}

fn rows(t: &Tensor, v: usize, n: usize) -> Tensor {
    t.narrow(0, v * n, n).unwrap()
}

#[test]
fn every_edge_out_of_a_sender_equals_ablating_the_sender() {
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let s = setup(model, name);
        for per_query in [true, false] {
            let shape = circuit_sweep_common::edge::GraphShape {
                kv_per_query: per_query,
                ..model.info().graph_shape()
            };
            let n = s.ids.dim(0).unwrap();
            let l = model.info().n_layers;
            let senders = [
                Sender::Node(Component::Head { layer: 0, head: 1 }),
                Sender::Node(Component::Mlp { layer: 0 }),
                Sender::Node(Component::Head { layer: 1, head: 0 }),
                Sender::Node(Component::Mlp { layer: l - 2 }),
                Sender::Node(Component::Head {
                    layer: l - 1,
                    head: 2,
                }),
                Sender::Node(Component::Mlp { layer: l - 1 }),
                Sender::Embed,
            ];
            // All senders' edge sets in one pass, as separate variants.
            let sets: Vec<Vec<Edge>> = senders
                .iter()
                .map(|&x| {
                    shape
                        .edges()
                        .into_iter()
                        .filter(|e| e.sender == x)
                        .collect()
                })
                .collect();
            let batched = logits(
                model,
                Start::Tokens(s.ids.clone()),
                Interventions {
                    kv_per_query: per_query,
                    ..edges_iv(&s.means, sets)
                },
            );
            let plain = logits(
                model,
                Start::Tokens(s.ids.clone()),
                Interventions::nodes(&s.means, vec![vec![]]),
            );
            for (v, sender) in senders.iter().enumerate() {
                let want = match sender {
                    Sender::Node(c) => logits(
                        model,
                        Start::Tokens(s.ids.clone()),
                        Interventions::nodes(&s.means, vec![vec![*c]]),
                    ),
                    // The embedding ablated: start from its ablated value.
                    Sender::Embed => {
                        let (_, t, d) = s.means.embed.dims3().unwrap();
                        let resid = s.means.embed.broadcast_as((n, t, d)).unwrap().contiguous();
                        logits(
                            model,
                            Start::Resid {
                                layer: 0,
                                resid: resid.unwrap(),
                            },
                            Interventions::nodes(&s.means, vec![vec![]]),
                        )
                    }
                };
                let got = rows(&batched, v, n);
                let d = max_abs_diff(&got, &want);
                assert!(
                    d <= 1e-4,
                    "{name} (kv per query: {per_query}): edges out of {sender}: {d}"
                );
                assert!(
                    max_abs_diff(&want, &plain) > 1e-4,
                    "{name}: ablating {sender} changes nothing, the comparison is empty"
                );
            }
        }
    }
}

#[test]
fn every_edge_into_a_receiver_equals_replacing_its_input() {
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let info = model.info().clone();
        let s = setup(model, name);
        let shape = info.graph_shape();
        let n = s.ids.dim(0).unwrap();
        // The ablated residual stream: the ablated embedding and every node ablated.
        let (_, t, d) = s.means.embed.dims3().unwrap();
        let everything = Component::all(info.n_layers, info.n_heads);
        let ablated = model
            .run(&RunRequest {
                interventions: Some(Interventions::nodes(&s.means, vec![everything])),
                capture: Capture::all(),
                ..RunRequest::new(Start::Resid {
                    layer: 0,
                    resid: s
                        .means
                        .embed
                        .broadcast_as((n, t, d))
                        .unwrap()
                        .contiguous()
                        .unwrap(),
                })
            })
            .unwrap()
            .captured;
        let l = info.n_layers;
        let receivers = [
            Receiver::Attn {
                layer: 1,
                index: 2,
                which: Qkv::Q,
            },
            Receiver::Attn {
                layer: 1,
                index: 1,
                which: Qkv::K,
            },
            Receiver::Attn {
                layer: l - 1,
                index: 0,
                which: Qkv::V,
            },
            Receiver::Mlp { layer: 0 },
            Receiver::Mlp { layer: l - 1 },
            Receiver::Logits,
        ];
        for (r, per_query) in receivers.into_iter().flat_map(|r| [(r, true), (r, false)]) {
            let shape = circuit_sweep_common::edge::GraphShape {
                kv_per_query: per_query,
                ..shape
            };
            let input = match r {
                Receiver::Attn { layer, .. } => ablated.resid[layer].clone().unwrap(),
                Receiver::Mlp { layer } => ablated.mlp_in[layer].clone().unwrap(),
                Receiver::Logits => ablated.final_resid_post.clone().unwrap(),
            };
            let into: Vec<Edge> = shape
                .edges()
                .into_iter()
                .filter(|e| e.receiver == r)
                .collect();
            let got = logits(
                model,
                Start::Tokens(s.ids.clone()),
                Interventions {
                    kv_per_query: per_query,
                    ..edges_iv(&s.means, vec![into])
                },
            );
            let want = logits(
                model,
                Start::Tokens(s.ids.clone()),
                Interventions {
                    inputs: vec![(r, input)],
                    kv_per_query: per_query,
                    ..Interventions::nodes(&s.means, vec![vec![]])
                },
            );
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff <= 1e-4,
                "{name} (kv per query: {per_query}): edges into {r}: {diff}"
            );
        }
    }
}

#[test]
fn an_edge_into_an_ablated_node_changes_nothing_bit_for_bit() {
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let s = setup(model, name);
        let dead = Component::Head { layer: 1, head: 1 };
        let q: Edge = "h0.0->h1.1.q".parse().unwrap();
        let mlp: Edge = "embed->m1".parse().unwrap();
        let node_only = logits(
            model,
            Start::Tokens(s.ids.clone()),
            Interventions::nodes(&s.means, vec![vec![dead]]),
        );
        let with_edge = logits(
            model,
            Start::Tokens(s.ids.clone()),
            Interventions {
                edges: vec![vec![q]],
                ..Interventions::nodes(&s.means, vec![vec![dead]])
            },
        );
        assert_eq!(max_abs_diff(&node_only, &with_edge), 0.0, "{name}: {q}");
        // And the same edge on a live node does change the logits.
        let live = logits(
            model,
            Start::Tokens(s.ids.clone()),
            edges_iv(&s.means, vec![vec![q], vec![mlp]]),
        );
        let plain = logits(
            model,
            Start::Tokens(s.ids.clone()),
            Interventions::nodes(&s.means, vec![vec![]]),
        );
        let n = s.ids.dim(0).unwrap();
        assert!(max_abs_diff(&rows(&live, 0, n), &plain) > 1e-5, "{name}");
        assert!(max_abs_diff(&rows(&live, 1, n), &plain) > 1e-5, "{name}");
    }
}

#[test]
fn variants_batched_equal_variants_alone_and_a_cached_start() {
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let s = setup(model, name);
        let n = s.ids.dim(0).unwrap();
        let sets: Vec<Vec<Edge>> = [
            vec!["h0.0->h1.1.q", "m0->h2.0.k"],
            vec!["embed->logits"],
            vec![],
            vec!["h1.3->m2", "h1.3->logits", "embed->h2.1.v", "m1->m2"],
        ]
        .iter()
        .map(|v| v.iter().map(|e| e.parse().unwrap()).collect())
        .collect();
        // Clean activations, for senders below a cached start.
        let clean = model
            .run(&RunRequest {
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(s.ids.clone()))
            })
            .unwrap();
        let cached = Activations::from_captured(&clean.captured).unwrap();
        let batched = logits(
            model,
            Start::Tokens(s.ids.clone()),
            edges_iv(&s.means, sets.clone()),
        );
        for (v, set) in sets.iter().enumerate() {
            let alone = logits(
                model,
                Start::Tokens(s.ids.clone()),
                edges_iv(&s.means, vec![set.clone()]),
            );
            let d = max_abs_diff(&rows(&batched, v, n), &alone);
            assert!(d <= 1e-5, "{name}: variant {v}: {d}");
            // From the cached residual at the first receiver's layer.
            let first = set.iter().map(|e| e.receiver.layer(3)).min().unwrap_or(2);
            let first = first.min(2);
            let resid = clean.captured.resid[first].clone().unwrap();
            let from_cache = logits(
                model,
                Start::Resid {
                    layer: first,
                    resid,
                },
                Interventions {
                    cached: Some(&cached),
                    ..edges_iv(&s.means, vec![set.clone()])
                },
            );
            let d = max_abs_diff(&from_cache, &alone);
            assert!(d <= 1e-5, "{name}: variant {v} from layer {first}: {d}");
        }
    }
}

#[test]
fn a_base_run_with_nodes_ablated_is_a_valid_cached_start() {
    // Edge sweeps restricted to a node circuit start from the run with the other nodes ablated.
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let s = setup(model, name);
        let nodes: Vec<Component> = ["h0.2", "m1", "h2.3"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let edges: Vec<Edge> = ["h0.0->h2.1.q", "m0->m2", "embed->logits"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let full = logits(
            model,
            Start::Tokens(s.ids.clone()),
            Interventions {
                edges: vec![edges.clone()],
                ..Interventions::nodes(&s.means, vec![nodes.clone()])
            },
        );
        let base = model
            .run(&RunRequest {
                interventions: Some(Interventions::nodes(&s.means, vec![nodes.clone()])),
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(s.ids.clone()))
            })
            .unwrap();
        let acts = Activations::from_captured(&base.captured).unwrap();
        let cached = logits(
            model,
            Start::Resid {
                layer: 2,
                resid: base.captured.resid[2].clone().unwrap(),
            },
            Interventions {
                edges: vec![edges.clone()],
                cached: Some(&acts),
                ..Interventions::nodes(&s.means, vec![vec![nodes[2]]])
            },
        );
        assert_eq!(max_abs_diff(&full, &cached), 0.0, "{name}");
    }
}

#[test]
fn positions_restrict_where_edges_are_ablated() {
    for name in ARCHS {
        let m = load_fixture(name);
        let model = &m.model;
        let s = setup(model, name);
        let t = s.ids.dim(1).unwrap();
        let run = |edges: Vec<Edge>, positions: Option<Vec<usize>>| {
            logits(
                model,
                Start::Tokens(s.ids.clone()),
                Interventions {
                    positions,
                    ..edges_iv(&s.means, vec![edges])
                },
            )
        };
        let mid: Vec<Edge> = vec!["h0.1->h2.0.q".parse().unwrap(), "m0->m1".parse().unwrap()];
        let every = run(mid.clone(), None);
        assert_eq!(
            max_abs_diff(&every, &run(mid.clone(), Some((0..t).collect()))),
            0.0,
            "{name}: every position"
        );
        assert!(max_abs_diff(&every, &run(mid.clone(), Some(vec![0]))) > 1e-6);
        // The logits read the last position only.
        let out: Vec<Edge> = vec!["h1.2->logits".parse().unwrap()];
        let plain = run(vec![], None);
        assert_eq!(
            max_abs_diff(
                &run(out.clone(), None),
                &run(out.clone(), Some(vec![t - 1]))
            ),
            0.0
        );
        assert_eq!(max_abs_diff(&plain, &run(out.clone(), Some(vec![0]))), 0.0);
        assert!(max_abs_diff(&plain, &run(out, None)) > 1e-6, "{name}");
    }
}

/// Grouped-query attention: a query head's own key (value) receiver changes that head alone,
/// exactly as the shared key/value head's receiver changes every head of its group.
#[test]
fn per_query_key_value_receivers_change_only_their_query_head() {
    let m = load_fixture("llama");
    let model = &m.model;
    let info = model.info().clone();
    let group = info.n_heads / info.n_kv_heads;
    assert!(group > 1, "the llama fixture groups query heads");
    let s = setup(model, "llama");
    let layer = 1;
    let z_of = |edges: Vec<Edge>, per_query: bool| {
        model
            .run(&RunRequest {
                interventions: Some(Interventions {
                    kv_per_query: per_query,
                    ..edges_iv(&s.means, vec![edges])
                }),
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(s.ids.clone()))
            })
            .unwrap()
            .captured
            .z[layer]
            .clone()
            .unwrap()
    };
    let head = |z: &Tensor, h: usize| z.narrow(2, h, 1).unwrap().contiguous().unwrap();
    let plain = z_of(vec![], true);
    for which in [Qkv::K, Qkv::V] {
        let into = |index: usize, per_query: bool| -> Vec<Edge> {
            let shape = circuit_sweep_common::edge::GraphShape {
                kv_per_query: per_query,
                ..info.graph_shape()
            };
            shape
                .edges()
                .into_iter()
                .filter(|e| {
                    e.receiver
                        == Receiver::Attn {
                            layer,
                            index,
                            which,
                        }
                })
                .collect()
        };
        // Every edge into the key/value head 0's input: all of its group changes.
        let shared = z_of(into(0, false), false);
        for q in 0..group {
            let own = z_of(into(q, true), true);
            for h in 0..info.n_heads {
                let d = max_abs_diff(&head(&own, h), &head(&plain, h));
                if h == q {
                    assert!(d > 1e-4, "{which:?}: query head {q} is not changed");
                    let same = max_abs_diff(&head(&own, h), &head(&shared, h));
                    assert!(
                        same <= 1e-5,
                        "{which:?}: head {q} differs from the shared: {same}"
                    );
                } else {
                    assert_eq!(
                        d, 0.0,
                        "{which:?}: ablating head {q}'s input changed head {h}"
                    );
                }
            }
        }
    }
}
