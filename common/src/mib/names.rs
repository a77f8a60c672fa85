//! MIB's node and edge names, to and from ours. MIB's `input` is our `embed`, its head
//! `a{l}.h{h}` our `h{l}.{h}` and a head's input `a{l}.h{h}<q>` our `h{l}.{h}.q`; `m{l}` and
//! `logits` are spelled alike. MIB gives every query head its own key and value input, so a
//! `<k>` or `<v>` index is a query head (our graphs with `kv_per_query`).

use std::fmt;
use std::str::FromStr;

use crate::component::Component;
use crate::edge::{Edge, Qkv, Receiver, Sender};

/// A node of MIB's graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MibNode {
    /// The embedding (`input`).
    Input,
    /// A head (`a{l}.h{h}`) or an MLP (`m{l}`).
    Node(Component),
    /// The unembedding (`logits`).
    Logits,
}

/// A MIB name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a node name.
    #[error(
        "`{0}` is not a MIB node name (expected `input`, `a{{layer}}.h{{head}}`, `m{{layer}}` or `logits`)"
    )]
    Node(String),
    /// Not something that writes into the residual stream.
    #[error("`{0}` is not a MIB sender (expected `input`, `a{{layer}}.h{{head}}` or `m{{layer}}`)")]
    Sender(String),
    /// Not something that reads the residual stream.
    #[error(
        "`{0}` is not a MIB receiver (expected `a{{layer}}.h{{head}}<q>`, `<k>` or `<v>`, `m{{layer}}` or `logits`)"
    )]
    Receiver(String),
    /// Not of the form `SENDER->RECEIVER`.
    #[error(
        "`{0}` is not a MIB edge name (expected `SENDER->RECEIVER` such as `a3.h2->a5.h1<q>`, `input->m0`, `m11->logits`)"
    )]
    Edge(String),
    /// One side of an edge does not parse.
    #[error("MIB edge `{edge}`: {part}")]
    EdgePart {
        /// The edge name.
        edge: String,
        /// What is wrong with it.
        part: Box<NameError>,
    },
}

/// A decimal number without sign or leading zeros, so that a name reads back as written.
fn number(t: &str) -> Option<usize> {
    let canonical =
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0'));
    canonical.then(|| t.parse().ok()).flatten()
}

/// A head (`a3.h2`) or an MLP (`m5`).
fn component(t: &str) -> Option<Component> {
    if let Some(rest) = t.strip_prefix('a') {
        let (l, h) = rest.split_once(".h")?;
        Some(Component::Head {
            layer: number(l)?,
            head: number(h)?,
        })
    } else {
        Some(Component::Mlp {
            layer: number(t.strip_prefix('m')?)?,
        })
    }
}

fn component_name(c: Component) -> String {
    match c {
        Component::Head { layer, head } => format!("a{layer}.h{head}"),
        Component::Mlp { layer } => format!("m{layer}"),
    }
}

impl MibNode {
    /// The node an edge leaves.
    pub fn of_sender(s: Sender) -> Self {
        match s {
            Sender::Embed => MibNode::Input,
            Sender::Node(c) => MibNode::Node(c),
        }
    }

    /// The node a receiver belongs to: a head's query, key and value inputs are the head's.
    pub fn of_receiver(r: Receiver) -> Self {
        match r {
            Receiver::Attn { layer, index, .. } => {
                MibNode::Node(Component::Head { layer, head: index })
            }
            Receiver::Mlp { layer } => MibNode::Node(Component::Mlp { layer }),
            Receiver::Logits => MibNode::Logits,
        }
    }
}

impl fmt::Display for MibNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MibNode::Input => f.write_str("input"),
            MibNode::Node(c) => f.write_str(&component_name(c)),
            MibNode::Logits => f.write_str("logits"),
        }
    }
}

impl FromStr for MibNode {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "input" => Ok(MibNode::Input),
            "logits" => Ok(MibNode::Logits),
            _ => component(s)
                .map(MibNode::Node)
                .ok_or_else(|| NameError::Node(s.to_string())),
        }
    }
}

/// MIB's name of a sender (`input`, `a3.h2`, `m5`).
pub fn sender_name(s: Sender) -> String {
    MibNode::of_sender(s).to_string()
}

/// A sender from its MIB name.
pub fn parse_sender(name: &str) -> Result<Sender, NameError> {
    match name.parse() {
        Ok(MibNode::Input) => Ok(Sender::Embed),
        Ok(MibNode::Node(c)) => Ok(Sender::Node(c)),
        _ => Err(NameError::Sender(name.to_string())),
    }
}

/// MIB's name of a receiver (`a5.h1<q>`, `m5`, `logits`).
pub fn receiver_name(r: Receiver) -> String {
    match r {
        Receiver::Attn {
            layer,
            index,
            which,
        } => format!("a{layer}.h{index}<{}>", which.letter()),
        Receiver::Mlp { layer } => format!("m{layer}"),
        Receiver::Logits => "logits".into(),
    }
}

/// A receiver from its MIB name.
pub fn parse_receiver(name: &str) -> Result<Receiver, NameError> {
    let bad = || NameError::Receiver(name.to_string());
    if name == "logits" {
        return Ok(Receiver::Logits);
    }
    if let Some(head) = name.strip_suffix('>') {
        let (head, w) = head.rsplit_once('<').ok_or_else(bad)?;
        let which = Qkv::from_letter(w).ok_or_else(bad)?;
        return match component(head) {
            Some(Component::Head { layer, head }) => Ok(Receiver::Attn {
                layer,
                index: head,
                which,
            }),
            _ => Err(bad()),
        };
    }
    match component(name) {
        Some(Component::Mlp { layer }) => Ok(Receiver::Mlp { layer }),
        // A head's input must say which.
        _ => Err(bad()),
    }
}

/// MIB's name of an edge (`a3.h2->a5.h1<q>`).
pub fn edge_name(e: &Edge) -> String {
    format!("{}->{}", sender_name(e.sender), receiver_name(e.receiver))
}

/// An edge from its MIB name.
pub fn parse_edge(name: &str) -> Result<Edge, NameError> {
    let (s, r) = name
        .split_once("->")
        .ok_or_else(|| NameError::Edge(name.to_string()))?;
    let part = |e: NameError| NameError::EdgePart {
        edge: name.to_string(),
        part: Box::new(e),
    };
    Ok(Edge {
        sender: parse_sender(s).map_err(part)?,
        receiver: parse_receiver(r).map_err(part)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::GraphShape;

    fn round_trip(shape: GraphShape) {
        for e in shape.edges() {
            let name = edge_name(&e);
            assert_eq!(parse_edge(&name).unwrap(), e, "{name}");
        }
        for c in Component::all(shape.n_layers, shape.n_heads) {
            let n = MibNode::Node(c);
            assert_eq!(n.to_string().parse::<MibNode>().unwrap(), n);
        }
    }

    #[test]
    fn every_edge_round_trips() {
        let gpt2 = GraphShape {
            n_layers: 12,
            n_heads: 12,
            n_kv_heads: 12,
            parallel: false,
            kv_per_query: true,
            embed: true,
        };
        round_trip(gpt2);
        // Grouped-query attention (SmolLM2's heads), and GPT-NeoX's parallel residual.
        round_trip(GraphShape {
            n_layers: 3,
            n_heads: 9,
            n_kv_heads: 3,
            ..gpt2
        });
        round_trip(GraphShape {
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            parallel: true,
            ..gpt2
        });
    }

    #[test]
    fn names_map_to_ours() {
        for (mib, ours) in [
            ("input->a0.h1<q>", "embed->h0.1.q"),
            ("a3.h2->m5", "h3.2->m5"),
            ("m11->logits", "m11->logits"),
            ("a4.h4->a9.h1<v>", "h4.4->h9.1.v"),
            ("input->logits", "embed->logits"),
        ] {
            let e = parse_edge(mib).unwrap();
            assert_eq!(e.to_string(), ours);
            assert_eq!(edge_name(&ours.parse().unwrap()), mib);
        }
        // A head's key input belongs to the head.
        let e: Edge = "h4.4->h9.1.k".parse().unwrap();
        assert_eq!(MibNode::of_receiver(e.receiver), "a9.h1".parse().unwrap());
        assert_eq!(MibNode::of_sender(e.sender).to_string(), "a4.h4");
    }

    #[test]
    fn bad_names_are_named() {
        for (bad, needle) in [
            ("a1.h0", "not a MIB edge name"),
            ("a1.h0->a2.h1", "`a2.h1` is not a MIB receiver"),
            ("a1.h0->a2.h1<x>", "`a2.h1<x>` is not a MIB receiver"),
            ("embed->m1", "`embed` is not a MIB sender"),
            ("a1.h0->m1<q>", "`m1<q>` is not a MIB receiver"),
            ("logits->m1", "`logits` is not a MIB sender"),
            ("a01.h0->m1", "`a01.h0` is not a MIB sender"),
            ("a1.h-1->m2", "`a1.h-1` is not a MIB sender"),
            ("h1.0->m2", "`h1.0` is not a MIB sender"),
        ] {
            let e = parse_edge(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = "a1".parse::<MibNode>().unwrap_err().to_string();
        assert!(e.contains("`a1` is not a MIB node name"), "{e}");
    }
}
