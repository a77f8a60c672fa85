//! Path patching (`edge_method = "path"`) against a by-hand implementation of the paper's
//! method on the random fixtures of every architecture: (1) run the clean prompts with the
//! sender given its paired corrupt activation and every other head frozen at its clean value
//! (MLPs recomputed), capturing what each receiver reads; (2) run the clean prompts again with
//! the receiver alone given that input (an MLP receiver: its output from run 1); the logits read
//! run 1 directly. Nodes outside a circuit stay ablated in every run.

mod common;

use candle_core::Tensor;
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, GraphShape, Receiver, Sender};
use circuit_sweep_common::spec::{AblationKind, AblationSpec};
use circuit_sweep_worker::{
    Activations, Capture, Captured, Evaluator, HookedModel, Interventions, LogitSelection,
    PromptSet, RunRequest, Start,
};
use common::*;

const ARCHS: [&str; 4] = ["gpt2", "llama", "neox", "neox_sequential"];

fn spec() -> AblationSpec {
    AblationSpec {
        kind: AblationKind::Resample,
        ..AblationSpec::default()
    }
}

fn logit_diff(logits: &Tensor, p: &PromptSet) -> f64 {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.iter()
        .zip(p.answer.iter().zip(&p.wrong))
        .map(|(r, (&a, &w))| (r[a as usize] - r[w as usize]) as f64)
        .sum::<f64>()
        / rows.len() as f64
}

/// `z` (`[P, T, H, dh]`) with head `h` taken from `other`.
fn with_head(z: &Tensor, other: &Tensor, h: usize) -> Tensor {
    let n = z.dim(2).unwrap();
    let mut parts = vec![];
    if h > 0 {
        parts.push(z.narrow(2, 0, h).unwrap());
    }
    parts.push(other.narrow(2, h, 1).unwrap());
    if h + 1 < n {
        parts.push(z.narrow(2, h + 1, n - h - 1).unwrap());
    }
    Tensor::cat(&parts, 2).unwrap()
}

struct ByHand<'a> {
    m: &'a HookedModel,
    p: &'a PromptSet,
    ids: Tensor,
    /// Paired corrupt activations (the ablated values).
    corrupt: Activations,
    outside: Vec<Component>,
    /// The clean run with the nodes outside the circuit ablated.
    base: Activations,
}

impl<'a> ByHand<'a> {
    fn new(m: &'a HookedModel, p: &'a PromptSet, outside: Vec<Component>) -> Self {
        let ids = m.tokens(&p.clean).unwrap();
        let cap = |ids: &Tensor, iv: Option<Interventions<'_>>| -> Captured {
            m.run(&RunRequest {
                interventions: iv,
                capture: Capture::all(),
                ..RunRequest::new(Start::Tokens(ids.clone()))
            })
            .unwrap()
            .captured
        };
        let corrupt =
            Activations::from_captured(&cap(&m.tokens(&p.corrupt).unwrap(), None)).unwrap();
        let base = Activations::from_captured(&cap(
            &ids,
            Some(Interventions::nodes(&corrupt, vec![outside.clone()])),
        ))
        .unwrap();
        ByHand {
            m,
            p,
            ids,
            corrupt,
            outside,
            base,
        }
    }

    fn run(&self, iv: Interventions<'_>, capture: Capture) -> (Tensor, Captured) {
        let out = self
            .m
            .run(&RunRequest {
                interventions: Some(iv),
                capture,
                logits: LogitSelection::All,
                ..RunRequest::new(Start::Tokens(self.ids.clone()))
            })
            .unwrap();
        let logits = out.logits.unwrap();
        let t = logits.dim(1).unwrap();
        (
            logits.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap(),
            out.captured,
        )
    }

    fn metric(&self, e: Edge) -> f64 {
        let info = self.m.info();
        // Run 1: every head frozen at its base value, the sender at its corrupt one.
        let mut frozen = self.base.clone();
        let mut replaced: Vec<Component> = Component::all(info.n_layers, info.n_heads)
            .into_iter()
            .filter(|c| matches!(c, Component::Head { .. }) || self.outside.contains(c))
            .collect();
        match e.sender {
            Sender::Node(Component::Head { layer, head }) => {
                frozen.z[layer] = with_head(&frozen.z[layer], &self.corrupt.z[layer], head);
            }
            Sender::Node(c @ Component::Mlp { layer }) => {
                frozen.mlp[layer] = self.corrupt.mlp[layer].clone();
                replaced.push(c);
            }
            Sender::Embed => unreachable!("no embed sender"),
        }
        let (logits1, run1) = self.run(
            Interventions::nodes(&frozen, vec![replaced]),
            Capture::all(),
        );
        // Run 2: the receiver alone reads what run 1 gave it.
        let (logits2, _) = match e.receiver {
            Receiver::Logits => return logit_diff(&logits1, self.p),
            Receiver::Attn { layer, .. } => self.run(
                Interventions {
                    inputs: vec![(e.receiver, run1.resid[layer].clone().unwrap())],
                    ..Interventions::nodes(&self.corrupt, vec![self.outside.clone()])
                },
                Capture::default(),
            ),
            Receiver::Mlp { layer } => {
                let mut values = self.corrupt.clone();
                values.mlp[layer] = run1.mlp[layer].clone().unwrap();
                let mut nodes = self.outside.clone();
                nodes.push(Component::Mlp { layer });
                self.run(
                    Interventions::nodes(&values, vec![nodes]),
                    Capture::default(),
                )
            }
        };
        logit_diff(&logits2, self.p)
    }
}

fn check(name: &str, circuit: Option<Vec<Component>>, every: usize) {
    let m = load_fixture(name).model;
    let p = fixture_prompts(name);
    let ev = Evaluator::new(&m, &p, spec(), 4096).unwrap();
    let shape = GraphShape {
        embed: false,
        ..m.info().graph_shape()
    };
    let (edges, outside) = match &circuit {
        Some(c) => (
            shape.edges_within(c),
            Component::all(m.info().n_layers, m.info().n_heads)
                .into_iter()
                .filter(|x| !c.contains(x))
                .collect(),
        ),
        None => (shape.edges(), vec![]),
    };
    let edges: Vec<Edge> = edges.into_iter().step_by(every).collect();
    assert!(edges.len() > 20, "{name}: {} edges", edges.len());
    let got = ev.edge_path_metrics(&edges, &outside).unwrap();
    let hand = ByHand::new(&m, &p, outside);
    let mut worst: f64 = 0.0;
    let mut moved = 0;
    for (e, g) in edges.iter().zip(&got) {
        let want = hand.metric(*e);
        worst = worst.max((g - want).abs());
        assert!((g - want).abs() < 1e-4, "{name}: {e}: {g} vs {want}");
        moved += usize::from((want - ev.full).abs() > 1e-3);
    }
    eprintln!(
        "{name}: {} edges, worst difference {worst:.2e}, {moved} change the metric",
        edges.len()
    );
    assert!(
        moved > 0,
        "{name}: no edge matters: the comparison is empty"
    );
}

#[test]
fn path_patching_equals_the_by_hand_method_on_every_architecture() {
    for name in ARCHS {
        check(name, None, 3);
    }
}

#[test]
fn path_patching_within_a_circuit_keeps_the_rest_ablated() {
    let circuit: Vec<Component> = ["h0.1", "h0.3", "m0", "h1.0", "h1.2", "m1", "h2.1", "m2"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    for name in ["gpt2", "llama", "neox"] {
        check(name, Some(circuit.clone()), 1);
    }
}

#[test]
fn path_patching_differs_from_direct_edges_through_mlps() {
    // h0.1 -> logits: direct ablation removes only the head's own write at the logits; path
    // patching also carries the change through the MLPs after it.
    let m = load_fixture("gpt2").model;
    let p = fixture_prompts("gpt2");
    let ev = Evaluator::new(&m, &p, spec(), 4096).unwrap();
    let e: Edge = "h0.1->logits".parse().unwrap();
    let path = ev.edge_path_metrics(&[e], &[]).unwrap()[0];
    let direct = ev.edge_metric_reference(e).unwrap();
    assert!((path - direct).abs() > 1e-4, "{path} vs {direct}");
    // An edge from the last MLP to the logits has no MLP after it: both methods agree.
    let last: Edge = format!("m{}->logits", m.info().n_layers - 1)
        .parse()
        .unwrap();
    let a = ev.edge_path_metrics(&[last], &[]).unwrap()[0];
    let b = ev.edge_metric_reference(last).unwrap();
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    // No embed sender.
    let err = ev
        .edge_path_metrics(&["embed->logits".parse().unwrap()], &[])
        .unwrap_err();
    assert!(err.to_string().contains("no `embed` sender"), "{err}");
}
