//! The graph a MIB file describes, from its `cfg`: `n_layers`, `n_heads`, `parallel_attn_mlp`
//! (GPT-NeoX's parallel residual) and `d_model`, the keys MIB's loader needs. MIB gives every
//! query head its own key and value input, so the shape has `kv_per_query`. Also the order in
//! which MIB lists nodes and edges, which its files keep.

use serde_json::Value;

use crate::component::Component;
use crate::edge::{Edge, GraphShape, Qkv, Receiver, Sender};
use crate::limits;
use crate::mib::names::MibNode;

/// A MIB file's `cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct MibConfig {
    /// Layers.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Attention and MLP of a layer read the same residual stream.
    pub parallel_attn_mlp: bool,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Any other keys, in file order, so that a file is written back as it was read.
    pub extra: Vec<(String, Value)>,
}

/// A `cfg` that does not describe a graph we can build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key MIB's loader needs is absent.
    #[error("MIB cfg: `{0}` is missing")]
    Missing(&'static str),
    /// A key holds something else than expected.
    #[error("MIB cfg: `{field}` is {value}; expected {expected}")]
    Invalid {
        /// The key.
        field: String,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: String,
    },
    /// The graph would be larger than any sweep handles.
    #[error("MIB cfg: a graph of {0} edges, more than the cap of {max}", max = limits::MAX_EDGES)]
    TooLarge(u128),
}

/// TransformerLens's name for key/value heads: not needed for MIB's graph (every query head has
/// its own key and value inputs), but kept in the shape when a file gives it.
const KV_HEADS: &str = "n_key_value_heads";

fn count(fields: &[(String, Value)], key: &'static str, max: usize) -> Result<usize, ConfigError> {
    let v = &fields
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .ok_or(ConfigError::Missing(key))?
        .1;
    v.as_u64()
        .map(|n| n as usize)
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ConfigError::Invalid {
            field: key.into(),
            value: v.to_string(),
            expected: format!("an integer from 1 to {max}"),
        })
}

impl MibConfig {
    /// Reads `cfg` from its keys in file order.
    pub fn from_fields(fields: Vec<(String, Value)>) -> Result<Self, ConfigError> {
        let n_layers = count(&fields, "n_layers", limits::MAX_LAYERS)?;
        let n_heads = count(&fields, "n_heads", limits::MAX_HEADS)?;
        let d_model = count(&fields, "d_model", usize::MAX)?;
        let parallel = &fields
            .iter()
            .rev()
            .find(|(k, _)| k == "parallel_attn_mlp")
            .ok_or(ConfigError::Missing("parallel_attn_mlp"))?
            .1;
        let parallel_attn_mlp = parallel.as_bool().ok_or_else(|| ConfigError::Invalid {
            field: "parallel_attn_mlp".into(),
            value: parallel.to_string(),
            expected: "true or false".into(),
        })?;
        if fields.iter().any(|(k, _)| k == KV_HEADS) {
            let kv = count(&fields, KV_HEADS, n_heads)?;
            if n_heads % kv != 0 {
                return Err(ConfigError::Invalid {
                    field: KV_HEADS.into(),
                    value: kv.to_string(),
                    expected: format!("a divisor of n_heads ({n_heads})"),
                });
            }
        }
        let cfg = MibConfig {
            n_layers,
            n_heads,
            parallel_attn_mlp,
            d_model,
            extra: fields
                .into_iter()
                .filter(|(k, _)| {
                    !["n_layers", "n_heads", "parallel_attn_mlp", "d_model"].contains(&k.as_str())
                })
                .collect(),
        };
        let n = cfg.edge_count();
        if n > limits::MAX_EDGES as u128 {
            return Err(ConfigError::TooLarge(n));
        }
        Ok(cfg)
    }

    /// The `cfg` of a model of this shape (`d_model` wide).
    pub fn for_shape(shape: &GraphShape, d_model: usize) -> Self {
        MibConfig {
            n_layers: shape.n_layers,
            n_heads: shape.n_heads,
            parallel_attn_mlp: shape.parallel,
            d_model,
            extra: vec![],
        }
    }

    /// The keys as MIB writes them, then the others in file order.
    pub fn fields(&self) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = vec![
            ("n_layers".into(), self.n_layers.into()),
            ("n_heads".into(), self.n_heads.into()),
            ("parallel_attn_mlp".into(), self.parallel_attn_mlp.into()),
            ("d_model".into(), self.d_model.into()),
        ];
        out.extend(self.extra.iter().cloned());
        out
    }

    /// The edge graph.
    pub fn shape(&self) -> GraphShape {
        let kv = self
            .extra
            .iter()
            .rev()
            .find(|(k, _)| k == KV_HEADS)
            .and_then(|(_, v)| v.as_u64())
            .map_or(self.n_heads, |n| n as usize);
        GraphShape {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: kv,
            parallel: self.parallel_attn_mlp,
            kv_per_query: true,
            embed: true,
        }
    }

    /// Edges of the graph, counted without building it: before layer `l` the residual stream
    /// holds `1 + l (n_heads + 1)` senders; each reaches the layer's `3 n_heads` head inputs and
    /// its MLP, which also reads the layer's heads unless attention and MLP run in parallel.
    pub fn edge_count(&self) -> u128 {
        let (l, h) = (self.n_layers as u128, self.n_heads as u128);
        let before: u128 = (0..l).map(|i| 1 + i * (h + 1)).sum();
        let own_heads = if self.parallel_attn_mlp { 0 } else { h };
        before * (3 * h + 1) + l * own_heads + (1 + l * (h + 1))
    }
}

/// Every node in MIB's order: `input`, each layer's heads then its MLP, `logits` last.
pub fn nodes(shape: &GraphShape) -> Vec<MibNode> {
    std::iter::once(MibNode::Input)
        .chain(
            Component::all(shape.n_layers, shape.n_heads)
                .into_iter()
                .map(MibNode::Node),
        )
        .chain(std::iter::once(MibNode::Logits))
        .collect()
}

/// Every edge in the order MIB lists them: layer by layer, each sender already in the residual
/// stream to each head's q, k and v input, then the MLP's inputs (in a parallel layer each
/// sender's MLP edge follows its head edges), the logits' last.
pub fn edges(shape: &GraphShape) -> Vec<Edge> {
    let mut out = vec![];
    let mut stream = vec![Sender::Embed];
    for layer in 0..shape.n_layers {
        let to_heads = |s: Sender| {
            (0..shape.n_heads).flat_map(move |index| {
                Qkv::ALL.map(|which| Edge {
                    sender: s,
                    receiver: Receiver::Attn {
                        layer,
                        index,
                        which,
                    },
                })
            })
        };
        let to_mlp = |s: Sender| Edge {
            sender: s,
            receiver: Receiver::Mlp { layer },
        };
        let heads = (0..shape.n_heads).map(|head| Sender::Node(Component::Head { layer, head }));
        if shape.parallel {
            for &s in &stream {
                out.extend(to_heads(s));
                out.push(to_mlp(s));
            }
            stream.extend(heads);
        } else {
            for &s in &stream {
                out.extend(to_heads(s));
            }
            stream.extend(heads);
            out.extend(stream.iter().map(|&s| to_mlp(s)));
        }
        stream.push(Sender::Node(Component::Mlp { layer }));
    }
    out.extend(stream.into_iter().map(|sender| Edge {
        sender,
        receiver: Receiver::Logits,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n_layers: usize, n_heads: usize, parallel: bool) -> MibConfig {
        MibConfig {
            n_layers,
            n_heads,
            parallel_attn_mlp: parallel,
            d_model: 64,
            extra: vec![],
        }
    }

    #[test]
    fn gpt2_small_has_mibs_32491_edges_and_158_nodes() {
        let c = cfg(12, 12, false);
        let shape = c.shape();
        assert_eq!(shape.edges().len(), 32_491);
        assert_eq!(edges(&shape).len(), 32_491);
        assert_eq!(c.edge_count(), 32_491);
        assert_eq!(nodes(&shape).len(), 158);
        let first: Vec<String> = edges(&shape)
            .iter()
            .take(4)
            .map(crate::mib::names::edge_name)
            .collect();
        assert_eq!(
            first,
            [
                "input->a0.h0<q>",
                "input->a0.h0<k>",
                "input->a0.h0<v>",
                "input->a0.h1<q>"
            ]
        );
    }

    #[test]
    fn mibs_order_lists_our_graph_once() {
        for (l, h, parallel) in [(2, 3, false), (3, 2, true), (1, 1, false), (4, 4, true)] {
            let c = cfg(l, h, parallel);
            let shape = c.shape();
            let mut mib = edges(&shape);
            assert_eq!(mib.len() as u128, c.edge_count(), "{l} {h} {parallel}");
            mib.sort();
            let mut ours = shape.edges();
            ours.sort();
            assert_eq!(mib, ours);
        }
        // Parallel: the MLP edge of a sender right after its head edges.
        let p = edges(&cfg(1, 1, true).shape());
        let names: Vec<String> = p.iter().map(crate::mib::names::edge_name).collect();
        assert_eq!(
            names,
            [
                "input->a0.h0<q>",
                "input->a0.h0<k>",
                "input->a0.h0<v>",
                "input->m0",
                "input->logits",
                "a0.h0->logits",
                "m0->logits"
            ]
        );
    }

    #[test]
    fn a_cfg_we_cannot_read_is_refused_by_field() {
        let fields = |v: Value| -> Vec<(String, Value)> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let good = serde_json::json!({"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": true,
            "d_model": 8, "n_key_value_heads": 2, "act_fn": "gelu"});
        let c = MibConfig::from_fields(fields(good)).unwrap();
        let s = c.shape();
        assert!(s.parallel && s.kv_per_query && s.embed);
        assert_eq!((s.n_layers, s.n_heads, s.n_kv_heads), (2, 4, 2));
        assert_eq!(c.fields().len(), 6);
        for (bad, needle) in [
            (
                serde_json::json!({"n_heads": 4, "parallel_attn_mlp": false, "d_model": 8}),
                "`n_layers` is missing",
            ),
            (
                serde_json::json!({"n_layers": 2, "n_heads": 4, "d_model": 8}),
                "`parallel_attn_mlp` is missing",
            ),
            (
                serde_json::json!({"n_layers": 2, "n_heads": "4", "parallel_attn_mlp": false, "d_model": 8}),
                "`n_heads` is \"4\"",
            ),
            (
                serde_json::json!({"n_layers": 0, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 8}),
                "`n_layers` is 0",
            ),
            (
                serde_json::json!({"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": 1, "d_model": 8}),
                "`parallel_attn_mlp` is 1",
            ),
            (
                serde_json::json!({"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 8, "n_key_value_heads": 3}),
                "a divisor of n_heads",
            ),
            (
                serde_json::json!({"n_layers": 1000, "n_heads": 1000, "parallel_attn_mlp": false, "d_model": 8}),
                "more than the cap",
            ),
        ] {
            let e = MibConfig::from_fields(fields(bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
