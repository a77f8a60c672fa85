//! MIB's edge selection: the top `n` edges by score (signed, or by absolute value), then only
//! those on a path from `input` to `logits` through selected edges. An edge stays when its
//! sender is reachable from `input` and its receiver's node reaches `logits` (a head's q, k and
//! v inputs are the head's node, whose out-edges are the head's). MIB gets there by removing,
//! until nothing changes, nodes without an in-edge (but `input`) or an out-edge and edges
//! whose ends were removed; in a graph without cycles both keep the same edges. Nodes are in
//! the graph when they keep an edge; `logits` always is.
//!
//! Ties: MIB sorts its score matrix (senders in forward order by receivers in forward order)
//! with an unstable sort, so which of equal scores makes the cut is not fixed there; here the
//! earlier edge in that matrix order wins, as a stable sort would have it.

use std::collections::{HashMap, HashSet};

use crate::edge::{Edge, GraphShape, Receiver, Sender};
use crate::mib::file::MibFile;
use crate::mib::names::MibNode;

/// What a selection kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// Edges taken by score.
    pub selected: usize,
    /// Of those, the edges on a path from `input` to `logits`.
    pub kept: usize,
    /// Nodes in the graph (`logits` included).
    pub nodes: usize,
}

/// A selection that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// More edges than the graph has.
    #[error("asked for the top {n} edges of a graph of {total}")]
    TooMany {
        /// Asked.
        n: usize,
        /// In the graph.
        total: usize,
    },
}

/// An edge's place in MIB's score matrix: its sender's forward index, then its receiver's.
fn matrix_index(shape: &GraphShape, e: &Edge) -> (usize, usize) {
    let h = shape.n_heads;
    let sender = match e.sender {
        Sender::Embed => 0,
        Sender::Node(c) => match c {
            crate::Component::Head { layer, head } => 1 + layer * (h + 1) + head,
            crate::Component::Mlp { layer } => 1 + layer * (h + 1) + h,
        },
    };
    // A layer's query inputs, then its key inputs, then its value inputs (`Qkv` declares them
    // in that order), then its MLP; the logits last.
    let receiver = match e.receiver {
        Receiver::Attn {
            layer,
            index,
            which,
        } => layer * (3 * h + 1) + which as usize * h + index,
        Receiver::Mlp { layer } => layer * (3 * h + 1) + 3 * h,
        Receiver::Logits => shape.n_layers * (3 * h + 1),
    };
    (sender, receiver)
}

/// Indices of `edges`, best first: by score (or its absolute value), highest first; equal
/// scores in MIB's matrix order.
pub fn ranking(shape: &GraphShape, edges: &[Edge], scores: &[f64], absolute: bool) -> Vec<usize> {
    let key = |i: usize| {
        if absolute { scores[i].abs() } else { scores[i] }
    };
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.sort_by(|&a, &b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| matrix_index(shape, &edges[a]).cmp(&matrix_index(shape, &edges[b])))
    });
    order
}

/// Of the `selected` edges, those on a path from `input` to `logits` through selected edges,
/// and the nodes that such paths pass (`logits` always counted in).
pub fn on_paths(edges: &[Edge], selected: &[bool]) -> (Vec<bool>, HashSet<MibNode>) {
    let ends = |e: &Edge| {
        (
            MibNode::of_sender(e.sender),
            MibNode::of_receiver(e.receiver),
        )
    };
    let mut out_of: HashMap<MibNode, Vec<MibNode>> = HashMap::new();
    let mut into: HashMap<MibNode, Vec<MibNode>> = HashMap::new();
    for (e, _) in edges.iter().zip(selected).filter(|(_, s)| **s) {
        let (s, r) = ends(e);
        out_of.entry(s).or_default().push(r);
        into.entry(r).or_default().push(s);
    }
    let reach = |start: MibNode, next: &HashMap<MibNode, Vec<MibNode>>| {
        let mut seen = HashSet::from([start]);
        let mut todo = vec![start];
        while let Some(n) = todo.pop() {
            for &m in next.get(&n).into_iter().flatten() {
                if seen.insert(m) {
                    todo.push(m);
                }
            }
        }
        seen
    };
    let from_input = reach(MibNode::Input, &out_of);
    let to_logits = reach(MibNode::Logits, &into);
    let kept: Vec<bool> = edges
        .iter()
        .zip(selected)
        .map(|(e, &s)| {
            let (a, b) = ends(e);
            s && from_input.contains(&a) && to_logits.contains(&b)
        })
        .collect();
    let mut nodes: HashSet<MibNode> = edges
        .iter()
        .zip(&kept)
        .filter(|(_, k)| **k)
        .flat_map(|(e, _)| {
            let (a, b) = ends(e);
            [a, b]
        })
        .collect();
    nodes.insert(MibNode::Logits);
    (kept, nodes)
}

/// Sets `file`'s circuit to MIB's selection of its top `n` edges: `in_graph` of every edge and
/// node, as MIB's loader followed by its top-n would leave them.
pub fn select_top(file: &mut MibFile, n: usize, absolute: bool) -> Result<Selection, SelectError> {
    let total = file.edges.len();
    if n > total {
        return Err(SelectError::TooMany { n, total });
    }
    let shape = file.shape();
    let edges: Vec<Edge> = file.edges.iter().map(|e| e.edge).collect();
    let scores: Vec<f64> = file.edges.iter().map(|e| e.score).collect();
    let mut selected = vec![false; total];
    for i in ranking(&shape, &edges, &scores, absolute)
        .into_iter()
        .take(n)
    {
        selected[i] = true;
    }
    let (kept, nodes) = on_paths(&edges, &selected);
    for (e, k) in file.edges.iter_mut().zip(&kept) {
        e.in_graph = *k;
    }
    for node in &mut file.nodes {
        node.in_graph = nodes.contains(&node.node);
    }
    Ok(Selection {
        selected: n,
        kept: kept.iter().filter(|k| **k).count(),
        nodes: nodes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mib::example_fixture;
    use crate::mib::graph::MibConfig;
    use crate::mib::names::edge_name;
    use crate::mib::testing::{gpt2_small, synthetic};

    #[test]
    #[ignore = "needs MIB's ioi-eap-ig.json, not redistributed here: see tests/fixtures/mib/README.md"]
    fn the_top_800_of_mibs_example_are_its_756_edges() {
        let stored = MibFile::read(&example_fixture()).unwrap();
        let mut mine = stored.clone();
        let s = select_top(&mut mine, 800, true).unwrap();
        assert_eq!(
            s,
            Selection {
                selected: 800,
                kept: 756,
                nodes: 81
            }
        );
        assert_eq!(mine, stored, "every edge's and node's in_graph as stored");
        // Signed scores rank otherwise; the selection is still connected.
        let s = select_top(&mut mine, 800, false).unwrap();
        assert!(s.kept < 800 && s.kept > 0, "{s:?}");
        let e = select_top(&mut mine, 32_492, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "asked for the top 32492 edges of a graph of 32491"
        );
    }

    #[test]
    #[ignore = "needs MIB's ioi-eap-ig.json, not redistributed here: see tests/fixtures/mib/README.md"]
    fn mibs_ten_circuit_sizes_of_its_example() {
        // Edges kept at MIB's ten sizes (0.1 % ... 100 % of 32,491), as a transcription of
        // MIB's repeated node-and-edge removal gives them on this file.
        let mut f = MibFile::read(&example_fixture()).unwrap();
        let total = f.edges.len();
        for (absolute, want) in [
            (
                true,
                [21, 45, 145, 276, 608, 1573, 3212, 6498, 16245, 32491],
            ),
            (
                false,
                [0, 25, 122, 230, 524, 1439, 3019, 5963, 14280, 32491],
            ),
        ] {
            let kept: Vec<usize> = crate::faithfulness::FRACTIONS
                .iter()
                .map(|&x| {
                    let n = crate::faithfulness::edges_at(x, total);
                    select_top(&mut f, n, absolute).unwrap().kept
                })
                .collect();
            assert_eq!(kept, want, "absolute: {absolute}");
        }
    }

    /// MIB's selection written out as MIB does it, on names alone: the top `n` edges by score
    /// (no two alike), then nodes without an in-edge (but `input`) or an out-edge (but
    /// `logits`) removed, with their edges, until nothing changes. The edges left, and the
    /// nodes left with `logits`.
    fn mib_selection(f: &MibFile, n: usize, absolute: bool) -> (Vec<bool>, HashSet<String>) {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut id = |name: &str| {
            let next = ids.len();
            *ids.entry(name.to_string()).or_insert(next)
        };
        let (input, logits) = (id("input"), id("logits"));
        let ends: Vec<(usize, usize)> = f
            .edges
            .iter()
            .map(|e| {
                let name = edge_name(&e.edge);
                let (sender, receiver) = name.split_once("->").unwrap();
                // A head's q, k and v inputs are the head: `a3.h1<q>` is `a3.h1`.
                (id(sender), id(receiver.split('<').next().unwrap()))
            })
            .collect();
        let key = |i: usize| {
            let s = f.edges[i].score;
            if absolute { s.abs() } else { s }
        };
        let mut order: Vec<usize> = (0..f.edges.len()).collect();
        order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap());
        assert!(
            order.windows(2).all(|w| key(w[0]) != key(w[1])),
            "scores alike"
        );
        let mut edge_in = vec![false; f.edges.len()];
        for &i in &order[..n] {
            edge_in[i] = true;
        }
        let mut node_in = vec![true; ids.len()];
        loop {
            let (mut has_in, mut has_out) = (vec![false; ids.len()], vec![false; ids.len()]);
            for (&(a, b), _) in ends.iter().zip(&edge_in).filter(|(_, k)| **k) {
                has_out[a] = true;
                has_in[b] = true;
            }
            let mut changed = false;
            for v in 0..ids.len() {
                if node_in[v] && ((v != input && !has_in[v]) || (v != logits && !has_out[v])) {
                    node_in[v] = false;
                    changed = true;
                }
            }
            for (k, &(a, b)) in edge_in.iter_mut().zip(&ends) {
                if *k && !(node_in[a] && node_in[b]) {
                    *k = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        node_in[logits] = true;
        let nodes = ids
            .into_iter()
            .filter(|&(_, v)| node_in[v])
            .map(|(name, _)| name)
            .collect();
        (edge_in, nodes)
    }

    /// Checks `select_top` against [`mib_selection`] at `sizes`; the edges kept at each.
    fn agrees_with_mib(f: &mut MibFile, sizes: &[usize], absolute: bool) -> Vec<usize> {
        let mut kept = vec![];
        for &n in sizes {
            let s = select_top(f, n, absolute).unwrap();
            let (edges, nodes) = mib_selection(f, n, absolute);
            let got: Vec<bool> = f.edges.iter().map(|e| e.in_graph).collect();
            assert!(got == edges, "top {n}, absolute {absolute}: edges differ");
            let got: HashSet<String> = f
                .nodes
                .iter()
                .filter(|x| x.in_graph)
                .map(|x| x.node.to_string())
                .collect();
            assert_eq!(got, nodes, "top {n}, absolute {absolute}");
            let want = Selection {
                selected: n,
                kept: edges.iter().filter(|k| **k).count(),
                nodes: nodes.len(),
            };
            assert_eq!(s, want);
            kept.push(s.kept);
        }
        kept
    }

    #[test]
    fn mibs_ten_circuit_sizes_of_a_synthetic_gpt2_small_file() {
        let mut f = synthetic(gpt2_small(), 1);
        let total = f.edges.len();
        let sizes: Vec<usize> = crate::faithfulness::FRACTIONS
            .iter()
            .map(|&x| crate::faithfulness::edges_at(x, total))
            .collect();
        for absolute in [true, false] {
            let kept = agrees_with_mib(&mut f, &sizes, absolute);
            // Not vacuous: some sizes keep a circuit, and some leave edges off every path.
            assert!(
                kept.iter().zip(&sizes).any(|(&k, &n)| 0 < k && k < n),
                "absolute {absolute}: {kept:?} of {sizes:?}"
            );
            assert_eq!(kept[9], total, "all edges lie on a path");
        }
        let e = select_top(&mut f, total + 1, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "asked for the top 32492 edges of a graph of 32491"
        );
    }

    #[test]
    fn selections_of_synthetic_files_agree_with_mibs_removal() {
        for (n_layers, n_heads, parallel, seed) in [
            (4, 3, false, 2),
            (3, 4, true, 3),
            (1, 1, false, 4),
            (6, 2, true, 5),
        ] {
            let mut f = synthetic(
                MibConfig {
                    n_layers,
                    n_heads,
                    parallel_attn_mlp: parallel,
                    d_model: 16,
                    extra: vec![],
                },
                seed,
            );
            let sizes: Vec<usize> = (0..=f.edges.len()).collect();
            agrees_with_mib(&mut f, &sizes, true);
            agrees_with_mib(&mut f, &sizes, false);
        }
    }

    fn tiny() -> MibFile {
        MibFile::empty(MibConfig {
            n_layers: 2,
            n_heads: 1,
            parallel_attn_mlp: false,
            d_model: 4,
            extra: vec![],
        })
    }

    fn set(f: &mut MibFile, scores: &[(&str, f64)]) {
        for (name, s) in scores {
            let e: Edge = name.parse().unwrap();
            f.edges.iter_mut().find(|x| x.edge == e).unwrap().score = *s;
        }
    }

    fn kept(f: &MibFile) -> Vec<String> {
        f.edges
            .iter()
            .filter(|e| e.in_graph)
            .map(|e| e.edge.to_string())
            .collect()
    }

    #[test]
    fn dangling_edges_are_pruned_through_a_heads_inputs() {
        let mut f = tiny();
        // A path input -> h0.0 (via its key input) -> m1 -> logits, a dead end into h1.0 (it
        // reaches nothing), and m0 -> logits whose sender nothing feeds.
        set(
            &mut f,
            &[
                ("embed->h0.0.k", 5.0),
                ("h0.0->m1", -4.0),
                ("m1->logits", 3.0),
                ("h0.0->h1.0.q", 2.5),
                ("m0->logits", 2.0),
            ],
        );
        let s = select_top(&mut f, 5, true).unwrap();
        assert_eq!(
            kept(&f),
            ["embed->h0.0.k", "h0.0->m1", "m1->logits"],
            "{s:?}"
        );
        assert_eq!(s.nodes, 4, "input, h0.0, m1, logits");
        let in_graph: Vec<String> = f
            .nodes
            .iter()
            .filter(|n| n.in_graph)
            .map(|n| n.node.to_string())
            .collect();
        assert_eq!(in_graph, ["input", "a0.h0", "m1", "logits"]);
        // Signed: h0.0 -> m1 (-4) drops out of the top 4, and with it the path.
        let s = select_top(&mut f, 4, false).unwrap();
        assert_eq!((s.kept, s.nodes), (0, 1));
        assert!(
            f.nodes
                .iter()
                .all(|n| n.in_graph == (n.node == MibNode::Logits))
        );
    }

    #[test]
    fn ties_go_to_the_earlier_edge_of_mibs_matrix() {
        let mut f = tiny();
        // Equal scores: senders in forward order first (embed before h0.0), then receivers.
        set(
            &mut f,
            &[
                ("h0.0->logits", 1.0),
                ("embed->logits", 1.0),
                ("embed->m1", 1.0),
            ],
        );
        // Taken: embed->m1 (matrix row 0, m1's column), then embed->logits (row 0, the last
        // column), then h0.0->logits (row 1); m1 reaches nothing and nothing feeds h0.0.
        for (n, want) in [
            (1, vec![]),
            (2, vec!["embed->logits"]),
            (3, vec!["embed->logits"]),
        ] {
            let s = select_top(&mut f, n, true).unwrap();
            assert_eq!(kept(&f), want, "top {n}: {s:?}");
        }
        let edges: Vec<Edge> = f.edges.iter().map(|e| e.edge).collect();
        let scores: Vec<f64> = f.edges.iter().map(|e| e.score).collect();
        let top3: Vec<String> = ranking(&f.shape(), &edges, &scores, true)[..3]
            .iter()
            .map(|&i| edges[i].to_string())
            .collect();
        assert_eq!(top3, ["embed->m1", "embed->logits", "h0.0->logits"]);
    }
}
