//! A MIB circuit as ours: its `in_graph` edges in our names and graph order, and the heads and
//! MLPs they touch, the node circuit an edge sweep's `circuit_file` takes (a JSON list of
//! component names).

use std::collections::HashSet;

use crate::component::Component;
use crate::edge::{Edge, Sender};
use crate::mib::file::MibFile;
use crate::mib::names::MibNode;

/// A MIB circuit in our terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The heads and MLPs that the circuit's edges leave or enter, layer by layer.
    pub components: Vec<Component>,
    /// The circuit's edges in our graph order.
    pub edges: Vec<Edge>,
    /// Nodes whose `in_graph` in the file disagrees with the edges (`logits` aside).
    pub disagreeing_nodes: Vec<MibNode>,
}

/// A MIB file with nothing to import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no edge is in_graph: the file holds scores only; select a circuit from them first (the top N edges)"
)]
pub struct EmptyCircuit;

/// The circuit of `file`: its `in_graph` edges.
pub fn import(file: &MibFile) -> Result<Imported, EmptyCircuit> {
    let kept: HashSet<Edge> = file
        .edges
        .iter()
        .filter(|e| e.in_graph)
        .map(|e| e.edge)
        .collect();
    if kept.is_empty() {
        return Err(EmptyCircuit);
    }
    let shape = file.shape();
    let touched: HashSet<MibNode> = kept
        .iter()
        .flat_map(|e| {
            [
                MibNode::of_sender(e.sender),
                MibNode::of_receiver(e.receiver),
            ]
        })
        .collect();
    let components = Component::all(shape.n_layers, shape.n_heads)
        .into_iter()
        .filter(|c| touched.contains(&MibNode::Node(*c)))
        .collect();
    let edges = shape
        .edges()
        .into_iter()
        .filter(|e| kept.contains(e))
        .collect();
    let disagreeing_nodes = file
        .nodes
        .iter()
        .filter(|n| n.node != MibNode::Logits && n.in_graph != touched.contains(&n.node))
        .map(|n| n.node)
        .collect();
    Ok(Imported {
        components,
        edges,
        disagreeing_nodes,
    })
}

impl Imported {
    /// Whether the circuit reads the embedding.
    pub fn uses_embed(&self) -> bool {
        self.edges.iter().any(|e| e.sender == Sender::Embed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::parse_circuit;
    use crate::mib::example_fixture;
    use crate::mib::select::select_top;
    use crate::mib::testing::{gpt2_small, synthetic};

    #[test]
    #[ignore = "needs MIB's ioi-eap-ig.json, not redistributed here: see tests/fixtures/mib/README.md"]
    fn mibs_example_imports_as_79_components_and_756_edges() {
        let f = MibFile::read(&example_fixture()).unwrap();
        let c = import(&f).unwrap();
        assert_eq!(c.edges.len(), 756);
        // 81 nodes in the graph: input, logits and 79 heads and MLPs.
        assert_eq!(c.components.len(), 79);
        assert!(c.disagreeing_nodes.is_empty(), "{:?}", c.disagreeing_nodes);
        assert!(c.uses_embed());
        // Usable as `circuit_file`, and every edge lies within that node circuit.
        let json = serde_json::to_string(&c.components).unwrap();
        let parsed = parse_circuit(&json, "c.json", 12, 12).unwrap();
        let within: HashSet<Edge> = f.shape().edges_within(&parsed).into_iter().collect();
        assert!(c.edges.iter().all(|e| within.contains(e)));
        // The edge list reads back as our edges.
        let names = serde_json::to_string(&c.edges).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Edge>>(&names).unwrap(), c.edges);
    }

    #[test]
    fn a_selected_synthetic_circuit_imports_as_its_nodes_and_edges() {
        let mut f = synthetic(gpt2_small(), 3);
        let s = select_top(&mut f, 1624, true).unwrap();
        assert!(s.kept > 100, "{s:?}");
        let c = import(&f).unwrap();
        // The heads and MLPs are the file's nodes in the graph but input and logits, in order.
        let nodes: Vec<String> = f
            .nodes
            .iter()
            .filter(|n| n.in_graph && n.node != MibNode::Input && n.node != MibNode::Logits)
            .map(|n| n.node.to_string())
            .collect();
        let components: Vec<String> = c
            .components
            .iter()
            .map(|c| MibNode::Node(*c).to_string())
            .collect();
        assert_eq!((components, c.components.len() + 2), (nodes, s.nodes));
        assert!(c.disagreeing_nodes.is_empty(), "{:?}", c.disagreeing_nodes);
        // The edges are the file's in_graph ones, in our graph order.
        let kept: HashSet<Edge> = f
            .edges
            .iter()
            .filter(|e| e.in_graph)
            .map(|e| e.edge)
            .collect();
        assert_eq!(c.edges.len(), s.kept);
        assert_eq!(c.edges.iter().copied().collect::<HashSet<_>>(), kept);
        let order: Vec<Edge> = f
            .shape()
            .edges()
            .into_iter()
            .filter(|e| kept.contains(e))
            .collect();
        assert_eq!(c.edges, order);
        assert!(c.uses_embed(), "every path starts at the embedding");
        let json = serde_json::to_string(&c.components).unwrap();
        let parsed = parse_circuit(&json, "c.json", 12, 12).unwrap();
        let within: HashSet<Edge> = f.shape().edges_within(&parsed).into_iter().collect();
        assert!(c.edges.iter().all(|e| within.contains(e)));
        let names = serde_json::to_string(&c.edges).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Edge>>(&names).unwrap(), c.edges);

        // A node whose in_graph disagrees with the edges is named; the edges decide.
        let off = f.nodes.iter().position(|n| !n.in_graph).unwrap();
        f.nodes[off].in_graph = true;
        let d = import(&f).unwrap();
        assert_eq!(d.disagreeing_nodes, [f.nodes[off].node]);
        assert_eq!((d.components, d.edges), (c.components, c.edges));
    }

    #[test]
    fn a_file_of_scores_only_has_no_circuit() {
        // Scores on every edge, nothing in the graph but the logits.
        let f = synthetic(gpt2_small(), 4);
        assert_eq!(import(&f), Err(EmptyCircuit));
    }
}
