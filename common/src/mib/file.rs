//! MIB's circuit files: `{"cfg": {...}, "nodes": {NAME: {"in_graph": bool, "score"?: float}},
//! "edges": {NAME: {"score": float, "in_graph": bool}}}`. Read as MIB's loader reads them (an
//! edge the file leaves out scores 0 and is not in the graph; `logits` is always in the graph),
//! and written as MIB's writer writes them: its key order, every node and edge in its graph
//! order, Python's `json.dump` spacing and float spelling, so that MIB reads ours and a MIB file
//! read and written back is unchanged byte for byte.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::edge::{Edge, GraphShape};
use crate::mib::graph::{self, ConfigError, MibConfig};
use crate::mib::names::{self, MibNode, NameError};

/// One node of a MIB file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeEntry {
    /// The node.
    pub node: MibNode,
    /// Whether it is in the circuit.
    pub in_graph: bool,
    /// Its score, in files of node-level methods.
    pub score: Option<f64>,
}

/// One edge of a MIB file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeEntry {
    /// The edge.
    pub edge: Edge,
    /// Its score (a metric difference, as the method that scored it gives it).
    pub score: f64,
    /// Whether it is in the circuit.
    pub in_graph: bool,
}

/// A MIB circuit file: every node and edge of the graph its `cfg` describes, in MIB's order.
#[derive(Debug, Clone, PartialEq)]
pub struct MibFile {
    /// The model's shape as MIB records it.
    pub cfg: MibConfig,
    /// Every node.
    pub nodes: Vec<NodeEntry>,
    /// Every edge.
    pub edges: Vec<EdgeEntry>,
    /// How many edges the file listed (the others score 0 and are out of the graph).
    pub listed_edges: usize,
}

/// A MIB file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON, or not MIB's layout.
    #[error("{file}: not a MIB circuit file: {why}")]
    Layout {
        /// The file.
        file: String,
        /// What did not fit.
        why: String,
    },
    /// The `cfg` cannot be read.
    #[error("{file}: {source}")]
    Config {
        /// The file.
        file: String,
        /// Why.
        source: ConfigError,
    },
    /// A node or edge name does not parse.
    #[error("{file}: {source}")]
    Name {
        /// The file.
        file: String,
        /// Why.
        source: NameError,
    },
    /// A name parses but is not part of the graph `cfg` describes.
    #[error(
        "{file}: `{name}` is not in the graph of {n_layers} layers and {n_heads} heads its cfg describes{why}"
    )]
    NotInGraph {
        /// The file.
        file: String,
        /// The MIB name.
        name: String,
        /// Layers.
        n_layers: usize,
        /// Heads per layer.
        n_heads: usize,
        /// More, when known.
        why: String,
    },
    /// A node or edge lacks a field MIB's loader needs.
    #[error("{file}: {what} `{name}` has no `{field}`")]
    MissingField {
        /// The file.
        file: String,
        /// `node` or `edge`.
        what: &'static str,
        /// Its MIB name.
        name: String,
        /// The field.
        field: &'static str,
    },
    /// Neuron-level circuits are not supported.
    #[error(
        "{file}: node `{node}` lists neurons; neuron-level circuits are not supported (edges and nodes only)"
    )]
    NeuronLevel {
        /// The file.
        file: String,
        /// The MIB node name.
        node: String,
    },
    /// JSON (and MIB's own reader through Python's) cannot hold a score that is not finite.
    #[error("{what} `{name}` has the score {score}, which a MIB file cannot hold")]
    NotFinite {
        /// `node` or `edge`.
        what: &'static str,
        /// Its MIB name.
        name: String,
        /// The score.
        score: f64,
    },
}

/// A JSON object read as its entries in file order.
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct RawNode {
    in_graph: Option<bool>,
    score: Option<f64>,
    neurons: Option<IgnoredAny>,
    neurons_scores: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawEdge {
    score: Option<f64>,
    in_graph: Option<bool>,
}

#[derive(Deserialize)]
struct RawFile {
    cfg: Option<Ordered<Value>>,
    nodes: Option<Ordered<RawNode>>,
    edges: Option<Ordered<RawEdge>>,
}

impl MibFile {
    /// A file of the graph `cfg` describes with every score 0 and nothing in the graph but
    /// `logits` (which MIB always counts in).
    pub fn empty(cfg: MibConfig) -> Self {
        let shape = cfg.shape();
        let nodes = graph::nodes(&shape)
            .into_iter()
            .map(|node| NodeEntry {
                node,
                in_graph: node == MibNode::Logits,
                score: None,
            })
            .collect();
        let edges = graph::edges(&shape)
            .into_iter()
            .map(|edge| EdgeEntry {
                edge,
                score: 0.0,
                in_graph: false,
            })
            .collect();
        MibFile {
            cfg,
            nodes,
            edges,
            listed_edges: 0,
        }
    }

    /// The edge graph.
    pub fn shape(&self) -> GraphShape {
        self.cfg.shape()
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a MIB file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, FileError> {
        let layout = |why: String| FileError::Layout {
            file: file.to_string(),
            why,
        };
        let raw: RawFile = serde_json::from_str(text).map_err(|e| layout(e.to_string()))?;
        let missing = |k: &str| layout(format!("no `{k}`"));
        let cfg =
            MibConfig::from_fields(raw.cfg.ok_or_else(|| missing("cfg"))?.0).map_err(|source| {
                FileError::Config {
                    file: file.to_string(),
                    source,
                }
            })?;
        let (raw_nodes, raw_edges) = (
            raw.nodes.ok_or_else(|| missing("nodes"))?.0,
            raw.edges.ok_or_else(|| missing("edges"))?.0,
        );
        let mut out = MibFile::empty(cfg);
        let shape = out.shape();
        let name_err = |source| FileError::Name {
            file: file.to_string(),
            source,
        };
        let not_in_graph = |name: &str, why: String| FileError::NotInGraph {
            file: file.to_string(),
            name: name.to_string(),
            n_layers: shape.n_layers,
            n_heads: shape.n_heads,
            why,
        };
        let lacks = |what, name: &str, field| FileError::MissingField {
            file: file.to_string(),
            what,
            name: name.to_string(),
            field,
        };

        let node_at = positions(out.nodes.iter().map(|n| n.node));
        for (name, n) in raw_nodes {
            let node: MibNode = name.parse().map_err(name_err)?;
            let &i = node_at
                .get(&node)
                .ok_or_else(|| not_in_graph(&name, String::new()))?;
            if n.neurons.is_some() || n.neurons_scores.is_some() {
                return Err(FileError::NeuronLevel {
                    file: file.to_string(),
                    node: name,
                });
            }
            let in_graph = n.in_graph.ok_or_else(|| lacks("node", &name, "in_graph"))?;
            // MIB's loader skips `logits`: it is always in the graph.
            if node != MibNode::Logits {
                out.nodes[i].in_graph = in_graph;
                out.nodes[i].score = n.score;
            }
        }

        let edge_at = positions(out.edges.iter().map(|e| e.edge));
        for (name, e) in raw_edges {
            let edge = names::parse_edge(&name).map_err(name_err)?;
            let &i = edge_at.get(&edge).ok_or_else(|| {
                let why = shape.check(&edge).err().map(|e| format!(" ({e})"));
                not_in_graph(&name, why.unwrap_or_default())
            })?;
            out.edges[i].score = e.score.ok_or_else(|| lacks("edge", &name, "score"))?;
            out.edges[i].in_graph = e.in_graph.ok_or_else(|| lacks("edge", &name, "in_graph"))?;
            out.listed_edges += 1;
        }
        Ok(out)
    }

    /// The file's text, as MIB's writer spells it (no final newline, as `json.dump` writes).
    pub fn to_json(&self) -> Result<String, FileError> {
        let mut out = String::with_capacity(80 * self.edges.len() + 64 * self.nodes.len());
        out.push_str("{\"cfg\": {");
        for (i, (k, v)) in self.cfg.fields().iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            py_str(&mut out, k);
            out.push_str(": ");
            py_value(&mut out, v);
        }
        out.push_str("}, \"nodes\": {");
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let name = n.node.to_string();
            py_str(&mut out, &name);
            let _ = write!(out, ": {{\"in_graph\": {}", n.in_graph);
            if let Some(s) = n.score {
                out.push_str(", \"score\": ");
                out.push_str(&finite("node", &name, s)?);
            }
            out.push('}');
        }
        out.push_str("}, \"edges\": {");
        for (i, e) in self.edges.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let name = names::edge_name(&e.edge);
            py_str(&mut out, &name);
            let _ = write!(
                out,
                ": {{\"score\": {}, \"in_graph\": {}}}",
                finite("edge", &name, e.score)?,
                e.in_graph
            );
        }
        out.push_str("}}");
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        std::fs::write(path, self.to_json()?).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Where each key stands in a list.
fn positions<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, usize> {
    keys.enumerate().map(|(i, k)| (k, i)).collect()
}

fn finite(what: &'static str, name: &str, score: f64) -> Result<String, FileError> {
    if score.is_finite() {
        Ok(py_float(score))
    } else {
        Err(FileError::NotFinite {
            what,
            name: name.to_string(),
            score,
        })
    }
}

/// A float as Python's `repr` spells it: the shortest digits that read back to the same value,
/// positional for decimal exponents from -4 to 15 (`0.0001`, `12.0`), else `1.5e-05`, `1e+16`.
pub fn py_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: `-1.25e-5`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` has an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    if (-4..16).contains(&exp) {
        if exp < 0 {
            let zeros = "0".repeat((-exp - 1) as usize);
            return format!("{sign}0.{zeros}{digits}");
        }
        let point = exp as usize + 1;
        return if digits.len() <= point {
            format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..point], &digits[point..])
        };
    }
    let (first, rest) = digits.split_at(1);
    let dot = if rest.is_empty() { "" } else { "." };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs())
}

/// A string as `json.dump` writes it (`ensure_ascii`: anything outside ASCII as `\uXXXX`).
fn py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Any JSON value with `json.dump`'s separators (`, ` and `: `).
fn py_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => out.push_str(&py_float(f)),
            None => out.push_str(&n.to_string()),
        },
        Value::String(s) => py_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_value(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_str(out, k);
                out.push_str(": ");
                py_value(out, x);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mib::example_fixture;
    use crate::mib::testing::{Rng, gpt2_small, synthetic};

    #[test]
    fn floats_are_spelled_as_python_spells_them() {
        for (x, py) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (12.5, "12.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-3.661245955299819e-06, "-3.661245955299819e-06"),
            (1.9380599042051472e-05, "1.9380599042051472e-05"),
            (-0.0002955848758574575, "-0.0002955848758574575"),
            (123456789012345.0, "123456789012345.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py_float(x), py, "{x:e}");
        }
        let mut s = String::new();
        py_str(&mut s, "a\"b\\é\u{1F600}");
        assert_eq!(s, r#""a\"b\\\u00e9\ud83d\ude00""#);
    }

    #[test]
    #[ignore = "needs MIB's ioi-eap-ig.json, not redistributed here: see tests/fixtures/mib/README.md"]
    fn mibs_example_reads_and_writes_back_byte_for_byte() {
        let text = std::fs::read_to_string(example_fixture()).unwrap();
        let f = MibFile::parse(&text, "ioi-eap-ig.json").unwrap();
        assert_eq!(
            (f.nodes.len(), f.edges.len(), f.listed_edges),
            (158, 32_491, 32_491)
        );
        assert_eq!(f.edges.iter().filter(|e| e.in_graph).count(), 756);
        assert_eq!(f.nodes.iter().filter(|n| n.in_graph).count(), 81);
        let e = f
            .edges
            .iter()
            .find(|e| e.edge.to_string() == "h9.9->logits")
            .unwrap();
        assert!(e.in_graph && e.score < -0.28);
        assert_eq!(f.to_json().unwrap(), text);
    }

    #[test]
    fn a_file_we_write_reads_and_writes_back_byte_for_byte() {
        // GPT-2 small's graph, every edge scored, a circuit selected, a few node scores, and
        // `cfg` keys of every JSON kind beyond the four MIB's loader needs.
        let mut cfg = gpt2_small();
        cfg.extra = vec![
            ("n_key_value_heads".into(), 12.into()),
            ("model".into(), "gpt2 \"small\" \u{e9}".into()),
            ("dropout".into(), 1e-5.into()),
            (
                "scale".into(),
                serde_json::json!([0.1, 2.0, -3, true, null]),
            ),
        ];
        let mut f = synthetic(cfg, 7);
        let s = crate::mib::select::select_top(&mut f, 800, true).unwrap();
        assert!(s.kept > 0, "{s:?}");
        let mut rng = Rng(11);
        for n in f.nodes.iter_mut().step_by(5) {
            n.score = Some(rng.score());
        }
        // Written as it stands, even where it disagrees with the edges.
        f.nodes[2].in_graph = !f.nodes[2].in_graph;
        f.listed_edges = f.edges.len();

        let text = f.to_json().unwrap();
        assert!(text.starts_with(
            r#"{"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768, "n_key_value_heads": 12, "model": "gpt2 \"small\" \u00e9", "dropout": 1e-05, "scale": [0.1, 2.0, -3, true, null]}, "nodes": {"input": {"in_graph": true, "score": "#
        ));
        let g = MibFile::parse(&text, "synthetic.json").unwrap();
        assert_eq!(g, f);
        assert_eq!(g.to_json().unwrap(), text);

        // Through a file, and every score as an ordinary JSON reader reads it.
        let path = std::env::temp_dir().join(format!("mib-round-trip-{}.json", std::process::id()));
        f.write(&path).unwrap();
        let (bytes, read) = (std::fs::read(&path), MibFile::read(&path));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.unwrap(), text.as_bytes());
        assert_eq!(read.unwrap(), f);
        let v: Value = serde_json::from_str(&text).unwrap();
        let edges = v["edges"].as_object().unwrap();
        assert_eq!(
            (v["nodes"].as_object().unwrap().len(), edges.len()),
            (158, 32_491)
        );
        for e in &f.edges {
            let got = &edges[&names::edge_name(&e.edge)];
            assert_eq!(got["score"].as_f64(), Some(e.score));
            assert_eq!(got["in_graph"].as_bool(), Some(e.in_graph));
        }
        assert!(
            text.contains("e-0"),
            "scores small enough to take an exponent"
        );
    }

    #[test]
    fn left_out_edges_score_zero_and_bad_files_are_named() {
        let cfg =
            r#""cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}"#;
        let text = format!(
            r#"{{{cfg}, "nodes": {{"a0.h0": {{"in_graph": true, "score": 0.5}}, "logits": {{"in_graph": false}}}}, "edges": {{"input->a0.h0<v>": {{"score": 2.0, "in_graph": true}}}}}}"#
        );
        let f = MibFile::parse(&text, "t.json").unwrap();
        assert_eq!((f.edges.len(), f.listed_edges), (8, 1));
        assert_eq!(f.edges.iter().map(|e| e.score).sum::<f64>(), 2.0);
        let logits = f.nodes.iter().find(|n| n.node == MibNode::Logits).unwrap();
        assert!(logits.in_graph, "MIB always counts the logits in");
        let written = f.to_json().unwrap();
        assert!(
            written.contains(r#""a0.h0": {"in_graph": true, "score": 0.5}"#),
            "{written}"
        );
        assert!(written.contains(r#""a0.h0->logits": {"score": 0.0, "in_graph": false}"#));
        assert_eq!(MibFile::parse(&written, "w").unwrap().edges, f.edges);

        for (body, needle) in [
            (
                r#""nodes": {}, "edges": {"input->a0.h1<q>": {"score": 1.0, "in_graph": true}}"#,
                "`input->a0.h1<q>` is not in the graph of 1 layers and 1 heads",
            ),
            (
                r#""nodes": {}, "edges": {"m0->a0.h0<q>": {"score": 1.0, "in_graph": true}}"#,
                "`m0->a0.h0<q>` is not in the graph",
            ),
            (
                r#""nodes": {}, "edges": {"input->a0.h0": {"score": 1.0, "in_graph": true}}"#,
                "`a0.h0` is not a MIB receiver",
            ),
            (
                r#""nodes": {}, "edges": {"input->m0": {"in_graph": true}}"#,
                "edge `input->m0` has no `score`",
            ),
            (
                r#""nodes": {"m0": {"score": 1.0}}, "edges": {}"#,
                "node `m0` has no `in_graph`",
            ),
            (
                r#""nodes": {"m0": {"in_graph": true, "neurons": [true]}}, "edges": {}"#,
                "node `m0` lists neurons",
            ),
            (r#""nodes": {}"#, "no `edges`"),
        ] {
            let e = MibFile::parse(&format!("{{{cfg}, {body}}}"), "t.json")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.json: ") && e.contains(needle), "{e}");
        }
        let e = MibFile::parse("[]", "t.json").unwrap_err().to_string();
        assert!(e.contains("not a MIB circuit file"), "{e}");

        let mut nan = f.clone();
        nan.edges[0].score = f64::NAN;
        let e = nan.to_json().unwrap_err().to_string();
        assert!(
            e.contains("edge `input->a0.h0<q>` has the score NaN"),
            "{e}"
        );
    }
}
