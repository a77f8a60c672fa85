//! The edge graph of a model: senders (`embed`, heads, MLPs) write into the residual stream,
//! receivers (each head's query, key and value input, each MLP's input, the logits) read from
//! it. An edge `s -> r` exists when `r` reads what `s` wrote: `s` is computed before `r` in the
//! forward pass.
//!
//! Names: `h4.4->h9.1.q`, `m0->m1`, `embed->h0.2.k`, `h9.1->logits`. With grouped-query
//! attention every query head has its own key and value input by default (`h9.1.k` is what query
//! head 1 reads its keys from, as auto-circuit, EAP-IG and MIB count them); with
//! `kv_per_query = false` the key and value receivers are the key/value heads instead (`h9.0.k`
//! is the key input of key/value head 0, which query heads `0..n_heads/n_kv_heads` share).

use std::fmt;
use std::str::FromStr;

use crate::component::{Component, ComponentError};

/// Something that writes into the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// The token (and learned position) embedding.
    Embed,
    /// A head or an MLP.
    Node(Component),
}

/// Which input of an attention head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qkv {
    /// Query (per query head).
    Q,
    /// Key (per key/value head).
    K,
    /// Value (per key/value head).
    V,
}

/// Something that reads the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Receiver {
    /// The query, key or value input of a head of `layer`: `index` is the query head for `Q`,
    /// and for `K` and `V` the query head (the default) or the key/value head (a graph with
    /// `kv_per_query = false`).
    Attn {
        /// Layer.
        layer: usize,
        /// Query head, or key/value head (`K`, `V` in a graph without `kv_per_query`).
        index: usize,
        /// Which input.
        which: Qkv,
    },
    /// The input of the MLP of `layer`.
    Mlp {
        /// Layer.
        layer: usize,
    },
    /// The final norm and unembedding.
    Logits,
}

/// One edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    /// Who writes.
    pub sender: Sender,
    /// Who reads.
    pub receiver: Receiver,
}

/// The shape of a model as far as edges are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphShape {
    /// Layers.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer.
    pub n_kv_heads: usize,
    /// Attention and MLP read the same residual stream (GPT-NeoX's parallel residual): no edge
    /// from a layer's heads to its own MLP.
    pub parallel: bool,
    /// Each query head has its own key and value receivers (else one per key/value head).
    pub kv_per_query: bool,
    /// The embedding is a sender (path patching has none: it patches heads and MLPs).
    pub embed: bool,
}

/// An edge name that does not parse or does not exist in the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// Not of the form `SENDER->RECEIVER`.
    #[error(
        "`{0}` is not an edge name (expected `SENDER->RECEIVER` such as `h4.4->h9.1.q`, `m0->m1`, `embed->h0.2.k`, `h9.1->logits`)"
    )]
    Syntax(String),
    /// A part names no component of the model.
    #[error("edge `{edge}`: {source}")]
    Component {
        /// The edge name.
        edge: String,
        /// Why.
        source: ComponentError,
    },
    /// Well formed, but the model has no such edge.
    #[error("edge `{edge}` does not exist: {why}")]
    NoSuchEdge {
        /// The edge name.
        edge: String,
        /// Why.
        why: String,
    },
}

impl Qkv {
    /// The three inputs in the order the model (and the edge graph) reads them.
    pub const ALL: [Qkv; 3] = [Qkv::Q, Qkv::K, Qkv::V];

    /// The input's letter in edge names (`q`, `k`, `v`).
    pub fn letter(self) -> char {
        match self {
            Qkv::Q => 'q',
            Qkv::K => 'k',
            Qkv::V => 'v',
        }
    }

    /// The input a letter names.
    pub fn from_letter(s: &str) -> Option<Self> {
        Qkv::ALL
            .into_iter()
            .find(|w| s.len() == 1 && s.starts_with(w.letter()))
    }
}

impl Sender {
    /// The layer the sender writes in (`embed` before layer 0: `None`).
    pub fn layer(&self) -> Option<usize> {
        match self {
            Sender::Embed => None,
            Sender::Node(c) => Some(c.layer()),
        }
    }
}

impl Receiver {
    /// The layer the receiver reads in (`logits`: after the last layer, `n_layers`).
    pub fn layer(&self, n_layers: usize) -> usize {
        match *self {
            Receiver::Attn { layer, .. } | Receiver::Mlp { layer } => layer,
            Receiver::Logits => n_layers,
        }
    }
}

impl GraphShape {
    /// Whether `s` is computed before `r` reads (the edge exists).
    pub fn connects(&self, s: Sender, r: Receiver) -> bool {
        let Some(c) = (match s {
            Sender::Embed => None,
            Sender::Node(c) => Some(c),
        }) else {
            return true;
        };
        let rl = r.layer(self.n_layers);
        match (c, r) {
            (_, Receiver::Logits) => true,
            (Component::Head { layer, .. }, Receiver::Mlp { .. }) if layer == rl => !self.parallel,
            _ => c.layer() < rl,
        }
    }

    /// Key and value receivers per layer.
    pub fn kv_receivers(&self) -> usize {
        if self.kv_per_query {
            self.n_heads
        } else {
            self.n_kv_heads
        }
    }

    /// Every sender, in the order the model computes them.
    pub fn senders(&self) -> Vec<Sender> {
        self.embed
            .then_some(Sender::Embed)
            .into_iter()
            .chain(
                Component::all(self.n_layers, self.n_heads)
                    .into_iter()
                    .map(Sender::Node),
            )
            .collect()
    }

    /// Every receiver, in the order the model reads them (a layer's q, k, v, then its MLP; the
    /// logits last).
    pub fn receivers(&self) -> Vec<Receiver> {
        let mut out = vec![];
        for layer in 0..self.n_layers {
            for (which, n) in [
                (Qkv::Q, self.n_heads),
                (Qkv::K, self.kv_receivers()),
                (Qkv::V, self.kv_receivers()),
            ] {
                out.extend((0..n).map(|index| Receiver::Attn {
                    layer,
                    index,
                    which,
                }));
            }
            out.push(Receiver::Mlp { layer });
        }
        out.push(Receiver::Logits);
        out
    }

    /// Every edge: by receiver in the order the model reads them, senders in order within.
    pub fn edges(&self) -> Vec<Edge> {
        self.each_edge().collect()
    }

    /// How many edges [`edges`](Self::edges) or, with a circuit,
    /// [`edges_within`](Self::edges_within) gives, without building them.
    pub fn edge_count(&self, circuit: Option<&[Component]>) -> usize {
        match circuit {
            None => self.each_edge().count(),
            Some(c) => self.each_edge_within(c).count(),
        }
    }

    /// The edges among the nodes of `circuit` (plus `embed` and the logits): the graph the paper
    /// studies once a node circuit is known. Key/value receivers of key/value heads are kept
    /// when any query head of the circuit reads them.
    pub fn edges_within(&self, circuit: &[Component]) -> Vec<Edge> {
        self.each_edge_within(circuit).collect()
    }

    fn each_edge(&self) -> impl Iterator<Item = Edge> + '_ {
        let senders = self.senders();
        self.receivers().into_iter().flat_map(move |receiver| {
            senders
                .clone()
                .into_iter()
                .filter(move |&s| self.connects(s, receiver))
                .map(move |sender| Edge { sender, receiver })
        })
    }

    fn each_edge_within<'a>(&'a self, circuit: &'a [Component]) -> impl Iterator<Item = Edge> + 'a {
        let group = if self.kv_per_query {
            1
        } else {
            self.n_heads / self.n_kv_heads.max(1)
        };
        let sender_in = |s: &Sender| match s {
            Sender::Embed => true,
            Sender::Node(c) => circuit.contains(c),
        };
        let receiver_in = move |r: &Receiver| match *r {
            Receiver::Logits => true,
            Receiver::Mlp { layer } => circuit.contains(&Component::Mlp { layer }),
            Receiver::Attn {
                layer,
                index,
                which: Qkv::Q,
            } => circuit.contains(&Component::Head { layer, head: index }),
            Receiver::Attn { layer, index, .. } => (index * group..(index + 1) * group)
                .any(|head| circuit.contains(&Component::Head { layer, head })),
        };
        self.each_edge()
            .filter(move |e| sender_in(&e.sender) && receiver_in(&e.receiver))
    }

    /// Checks that an edge exists in a model of this shape.
    pub fn check(&self, e: &Edge) -> Result<(), EdgeError> {
        let name = e.to_string();
        let comp = |c: Component| {
            c.check(self.n_layers, self.n_heads)
                .map_err(|source| EdgeError::Component {
                    edge: name.clone(),
                    source,
                })
        };
        match e.sender {
            Sender::Node(c) => comp(c)?,
            Sender::Embed if !self.embed => {
                return Err(EdgeError::NoSuchEdge {
                    edge: name,
                    why: "path patching has no `embed` sender (it patches heads and MLPs)".into(),
                });
            }
            Sender::Embed => {}
        }
        match e.receiver {
            Receiver::Mlp { layer } => comp(Component::Mlp { layer })?,
            Receiver::Attn {
                layer,
                index,
                which,
            } => {
                let (n, what) = match which {
                    Qkv::Q => (self.n_heads, "query"),
                    _ if self.kv_per_query => (self.n_heads, "query"),
                    _ => (self.n_kv_heads, "key/value"),
                };
                comp(Component::Mlp { layer })?;
                if index >= n {
                    return Err(EdgeError::NoSuchEdge {
                        edge: name,
                        why: format!("layer {layer} has {n} {what} heads"),
                    });
                }
            }
            Receiver::Logits => {}
        }
        if !self.connects(e.sender, e.receiver) {
            return Err(EdgeError::NoSuchEdge {
                edge: name,
                why: "the receiver reads the residual stream before the sender writes it".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Embed => f.write_str("embed"),
            Sender::Node(c) => c.fmt(f),
        }
    }
}

impl fmt::Display for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Receiver::Attn {
                layer,
                index,
                which,
            } => write!(f, "h{layer}.{index}.{}", which.letter()),
            Receiver::Mlp { layer } => write!(f, "m{layer}"),
            Receiver::Logits => f.write_str("logits"),
        }
    }
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.sender, self.receiver)
    }
}

impl FromStr for Edge {
    type Err = EdgeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || EdgeError::Syntax(s.to_string());
        let (a, b) = s.split_once("->").ok_or_else(syntax)?;
        let component = |t: &str| {
            t.parse::<Component>()
                .map_err(|source| EdgeError::Component {
                    edge: s.to_string(),
                    source,
                })
        };
        let sender = match a.trim() {
            "embed" => Sender::Embed,
            t => Sender::Node(component(t)?),
        };
        let b = b.trim();
        let receiver = if b == "logits" {
            Receiver::Logits
        } else if let Some((head, w)) = b.rsplit_once('.').filter(|(h, _)| h.starts_with('h')) {
            let which = Qkv::from_letter(w).ok_or_else(syntax)?;
            match component(head)? {
                Component::Head { layer, head } => Receiver::Attn {
                    layer,
                    index: head,
                    which,
                },
                Component::Mlp { .. } => return Err(syntax()),
            }
        } else {
            match component(b)? {
                Component::Mlp { layer } => Receiver::Mlp { layer },
                // A head receiver must say which input.
                Component::Head { .. } => return Err(syntax()),
            }
        };
        Ok(Edge { sender, receiver })
    }
}

/// Serialized by name (`"h4.4->h9.1.q"`).
impl serde::Serialize for Edge {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Edge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grouped-query attention with the key/value receivers of key/value heads.
    fn shape(parallel: bool) -> GraphShape {
        GraphShape {
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            parallel,
            kv_per_query: false,
            embed: true,
        }
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "h4.4->h9.1.q",
            "m0->m1",
            "embed->h0.2.k",
            "h9.1->logits",
            "h3.0->m3",
            "embed->logits",
        ] {
            let e: Edge = name.parse().unwrap();
            assert_eq!(e.to_string(), name);
        }
        for bad in [
            "h1.0",
            "h1.0->h2.1",
            "h1.0->h2.1.x",
            "x->m1",
            "h1.0->m1.q",
            "->",
        ] {
            assert!(bad.parse::<Edge>().is_err(), "{bad}");
        }
    }

    #[test]
    fn edges_go_forward_only() {
        let g = shape(false);
        let edges = g.edges();
        // Receivers per layer: 4 q + 2 k + 2 v + 1 mlp = 9; senders before layer 0: embed.
        // Layer 0: 8 attention receivers x 1 sender + mlp x (embed + 4 heads) = 13.
        // Layer 1: 8 x 6 (embed, h0.*, m0) + mlp x 10 = 58. Logits: 11 senders.
        assert_eq!(edges.len(), 13 + 58 + 11);
        for e in &edges {
            g.check(e).unwrap();
        }
        assert!(g.check(&"m1->h1.0.q".parse().unwrap()).is_err());
        assert!(g.check(&"h0.0->h0.1.q".parse().unwrap()).is_err());
        let e = g.check(&"h0.0->h1.2.k".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("2 key/value heads"), "{e}");
        // Parallel attention and MLP: no edge from a layer's heads to its MLP.
        let p = shape(true);
        assert!(p.check(&"h0.1->m0".parse().unwrap()).is_err());
        assert_eq!(p.edges().len(), 82 - 8);
        let names: Vec<String> = edges.iter().take(3).map(|e| e.to_string()).collect();
        assert_eq!(names, ["embed->h0.0.q", "embed->h0.1.q", "embed->h0.2.q"]);
    }

    #[test]
    fn a_circuit_restricts_the_graph() {
        let g = shape(false);
        let circuit: Vec<Component> = ["h0.1", "h1.3", "m1"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let names: Vec<String> = g
            .edges_within(&circuit)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "embed->h0.1.q",
                "embed->h0.0.k",
                "embed->h0.0.v",
                "embed->h1.3.q",
                "h0.1->h1.3.q",
                "embed->h1.1.k",
                "h0.1->h1.1.k",
                "embed->h1.1.v",
                "h0.1->h1.1.v",
                "embed->m1",
                "h0.1->m1",
                "h1.3->m1",
                "embed->logits",
                "h0.1->logits",
                "h1.3->logits",
                "m1->logits",
            ]
        );
    }

    #[test]
    fn every_query_head_has_its_own_key_and_value_inputs_by_default() {
        // SmolLM2's shape: 9 query heads sharing 3 key/value heads.
        let g = GraphShape {
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            parallel: false,
            kv_per_query: true,
            embed: true,
        };
        let layers01: Vec<Component> = Component::all(2, 9);
        assert_eq!(layers01.len(), 20);
        assert_eq!(g.edges_within(&layers01).len(), 375);
        let grouped = GraphShape {
            kv_per_query: false,
            ..g
        };
        assert_eq!(grouped.edges_within(&layers01).len(), 231);
        // h9.8.k is query head 8's key input; with grouping only key/value heads 0..2 exist.
        g.check(&"h1.8->h9.8.k".parse().unwrap()).unwrap();
        let e = grouped.check(&"h1.8->h9.8.k".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("3 key/value heads"), "{e}");
        // Circuit restriction: only the circuit's query heads' k/v receivers.
        let names: Vec<String> = g
            .edges_within(&["h1.4".parse().unwrap()])
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "embed->h1.4.q",
                "embed->h1.4.k",
                "embed->h1.4.v",
                "embed->logits",
                "h1.4->logits"
            ]
        );
    }

    #[test]
    fn a_path_graph_has_no_embed_sender() {
        let g = GraphShape {
            embed: false,
            ..shape(false)
        };
        assert!(g.edges().iter().all(|e| e.sender != Sender::Embed));
        let e = g.check(&"embed->m1".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("no `embed` sender"), "{e}");
    }
}
