//! The circuits of faithfulness curves: for each file of edge scores (a results folder's
//! `result.json`, attribution or single-edge ablation, or a MIB circuit file), MIB's selection
//! of the top edges at each share of the graph, by signed and by absolute score. Coordinator and
//! worker both build them from the same files, so a shard names circuits by index.

use std::collections::HashMap;

use crate::edge::{Edge, GraphShape};
use crate::faithfulness;
use crate::mib::file::MibFile;
use crate::mib::scores::{Convention, Scale};
use crate::mib::select;
use crate::results::ResultDoc;
use crate::spec::{AttributionOver, EdgeMethod, KvEdges, SweepKind};

/// One curve: a method's edge scores, selected signed or by absolute value.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The method (`eap_ig (5 steps)`, `exact`, a MIB file's name).
    pub label: String,
    /// The file the scores came from, as the spec names it.
    pub file: String,
    /// Selected by absolute score (else signed: the edges the behaviour needs most).
    pub absolute: bool,
    /// Per share, the kept edges (indices into the graph's edges, ascending).
    pub circuits: Vec<Vec<u32>>,
}

/// Every curve of a faithfulness run over one graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// Shares of the graph's edges, as fractions, increasing.
    pub fractions: Vec<f64>,
    /// Edges in the graph.
    pub total: usize,
    /// Curves, two per file (signed, then absolute), in the spec's file order.
    pub curves: Vec<Curve>,
}

impl Curves {
    /// Circuits to evaluate, in shard order: the empty circuit, the full graph, then every
    /// curve's circuits in share order. Each is its kept edges.
    pub fn circuits(&self) -> Vec<&[u32]> {
        const NONE: &[u32] = &[];
        let mut out: Vec<&[u32]> = vec![NONE, NONE];
        for c in &self.curves {
            out.extend(c.circuits.iter().map(Vec::as_slice));
        }
        out
    }

    /// How many circuits [`Curves::circuits`] lists.
    pub fn len(&self) -> usize {
        2 + self.curves.iter().map(|c| c.circuits.len()).sum::<usize>()
    }

    /// Whether there are no curves.
    pub fn is_empty(&self) -> bool {
        self.curves.is_empty()
    }
}

/// A file of edge scores that cannot draw a curve on this graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurveError {
    /// Not a MIB file or a `result.json` with edge scores.
    #[error("{file}: {why}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        why: String,
    },
    /// Scores of another graph (another model, key/value receivers, edge method).
    #[error("{file}: {why}")]
    OtherGraph {
        /// The file.
        file: String,
        /// How the graphs differ.
        why: String,
    },
    /// An edge of the graph has no score.
    #[error(
        "{file}: no score for edge {edge} of this model's graph ({total} edges; a graph restricted to a circuit cannot draw a curve over the whole graph)"
    )]
    Missing {
        /// The file.
        file: String,
        /// The edge.
        edge: String,
        /// Edges in the graph.
        total: usize,
    },
}

/// Refuses a `result.json` whose edge graph is not `graph`: another model's shape, the other
/// key/value receivers (their names are the same, their edges are not), path patching's (no
/// `embed`), node attribution.
fn same_graph(doc: &ResultDoc, file: &str, graph: &GraphShape) -> Result<(), CurveError> {
    let other = |why: String| CurveError::OtherGraph {
        file: file.to_string(),
        why,
    };
    let sweep = &doc.spec.sweep;
    if sweep.kind == SweepKind::Attribution
        && sweep.over.unwrap_or_default() == AttributionOver::Nodes
    {
        return Err(other("scores nodes (over = \"nodes\"), not edges".into()));
    }
    if sweep.edge_method == EdgeMethod::Path {
        return Err(other(
            "path patching scores another graph (no `embed`, paths through MLPs inside each edge)"
                .into(),
        ));
    }
    if (sweep.kv_edges == KvEdges::QueryHead) != graph.kv_per_query {
        return Err(other(format!(
            "its key/value receivers are per {} and this run's per {} (set the same kv_edges)",
            if graph.kv_per_query {
                "key/value head"
            } else {
                "query head"
            },
            if graph.kv_per_query {
                "query head"
            } else {
                "key/value head"
            },
        )));
    }
    let info = &doc.model.info;
    for (field, want) in [("n_layers", graph.n_layers), ("n_heads", graph.n_heads)] {
        if let Some(have) = info.get(field).and_then(|v| v.as_u64())
            && have as usize != want
        {
            return Err(other(format!(
                "its model has {field} = {have}, this one {want}"
            )));
        }
    }
    Ok(())
}

/// A method's label and its edges' importance (higher: the behaviour needs the edge more) in
/// graph order, from the text of `file`.
fn importance(
    text: &str,
    file: &str,
    graph: &GraphShape,
) -> Result<(String, Vec<f64>), CurveError> {
    let unreadable = |why: String| CurveError::Unreadable {
        file: file.to_string(),
        why,
    };
    let edges = graph.edges();
    let index: HashMap<Edge, usize> = edges.iter().enumerate().map(|(i, e)| (*e, i)).collect();
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| unreadable(format!("not JSON: {e}")))?;
    let mut out = vec![f64::NAN; edges.len()];
    let label;
    if value.get("cfg").is_some() {
        let mib = MibFile::parse(text, file).map_err(|e| unreadable(e.to_string()))?;
        let s = mib.shape();
        if (s.n_layers, s.n_heads, s.parallel) != (graph.n_layers, graph.n_heads, graph.parallel)
            || !graph.kv_per_query
        {
            return Err(CurveError::OtherGraph {
                file: file.to_string(),
                why: format!(
                    "a MIB graph of {} layers x {} heads{} does not fit this model's graph of {} x {}{}",
                    s.n_layers,
                    s.n_heads,
                    if s.parallel { " (parallel)" } else { "" },
                    graph.n_layers,
                    graph.n_heads,
                    if graph.kv_per_query {
                        ""
                    } else {
                        " with key/value-head receivers (MIB's are per query head)"
                    }
                ),
            });
        }
        for e in &mib.edges {
            if let Some(&i) = index.get(&e.edge) {
                out[i] = e.score;
            }
        }
        label = std::path::Path::new(file)
            .file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
    } else {
        let doc: ResultDoc = serde_json::from_value(value)
            .map_err(|e| unreadable(format!("not a MIB file or a result.json: {e}")))?;
        same_graph(&doc, file, graph)?;
        let scale = Scale::of(&doc).map_err(|e| unreadable(e.to_string()))?;
        let (names, scores, name) = match (&doc.attribution, &doc.edges) {
            (Some(a), _) => (
                &a.names,
                &a.scores,
                match a.method {
                    crate::spec::AttributionMethod::Eap => "EAP".to_string(),
                    crate::spec::AttributionMethod::EapIg => format!("EAP-IG ({} steps)", a.steps),
                },
            ),
            (None, Some(e)) => (&e.names, &e.scores, "exact".to_string()),
            _ => {
                return Err(unreadable(
                    "has no edge scores (`attribution` of edges, or `edges`)".into(),
                ));
            }
        };
        for (n, s) in names.iter().zip(scores) {
            let e: Edge = n
                .parse()
                .map_err(|x: crate::edge::EdgeError| unreadable(x.to_string()))?;
            if let Some(&i) = index.get(&e) {
                out[i] = scale.to_mib(*s, Convention::Loss);
            }
        }
        label = name;
    }
    if let Some(i) = out.iter().position(|x| x.is_nan()) {
        return Err(CurveError::Missing {
            file: file.to_string(),
            edge: edges[i].to_string(),
            total: edges.len(),
        });
    }
    Ok((label, out))
}

/// The curves of the files `(name, text)` on `graph` at `fractions` (increasing, in (0, 1]).
pub fn build(
    files: &[(String, String)],
    graph: &GraphShape,
    fractions: &[f64],
) -> Result<Curves, CurveError> {
    let edges = graph.edges();
    let total = edges.len();
    let mut curves = vec![];
    for (file, text) in files {
        let (label, scores) = importance(text, file, graph)?;
        for absolute in [false, true] {
            let order = select::ranking(graph, &edges, &scores, absolute);
            let circuits = fractions
                .iter()
                .map(|&f| {
                    let n = faithfulness::edges_at(f, total);
                    let mut chosen = vec![false; total];
                    for &i in &order[..n] {
                        chosen[i] = true;
                    }
                    let (kept, _) = select::on_paths(&edges, &chosen);
                    kept.iter()
                        .enumerate()
                        .filter(|(_, k)| **k)
                        .map(|(i, _)| i as u32)
                        .collect()
                })
                .collect();
            curves.push(Curve {
                label: label.clone(),
                file: file.clone(),
                absolute,
                circuits,
            });
        }
    }
    Ok(Curves {
        fractions: fractions.to_vec(),
        total,
        curves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> GraphShape {
        GraphShape {
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 2,
            parallel: false,
            kv_per_query: true,
            embed: true,
        }
    }

    /// A `result.json` of attribution scores (% of full, full metric 2) over `shape()`.
    fn doc(scores: &[f64]) -> String {
        let names: Vec<String> = shape().edges().iter().map(Edge::to_string).collect();
        serde_json::json!({
            "schema": 1,
            "spec": {"sweep": {"kind": "attribution"}},
            "model": {"path": "m", "info": {}},
            "dataset": {},
            "full": 2.0,
            "corrupt": 0.0,
            "attribution": {"method": "eap", "steps": 1, "names": names, "scores": scores},
            "timing": {"seconds": 0.0, "shards": 1, "shard_attempts": 1, "profiles": []}
        })
        .to_string()
    }

    #[test]
    fn the_edges_the_behaviour_needs_come_first_and_paths_are_kept() {
        let g = shape();
        let n = g.edges().len();
        // Every edge scores 100 (no change) but three: embed->h0.0.q loses most, then
        // h0.0->logits, then embed->m1 raises the metric.
        let mut s = vec![100.0; n];
        let at = |name: &str| {
            g.edges()
                .iter()
                .position(|e| e.to_string() == name)
                .unwrap()
        };
        s[at("embed->h0.0.q")] = 10.0;
        s[at("h0.0->logits")] = 50.0;
        s[at("embed->m1")] = 190.0;
        let files = vec![("r.json".to_string(), doc(&s))];
        let c = build(&files, &g, &[1.0 / n as f64 * 2.0, 1.0]).unwrap();
        assert_eq!(c.curves.len(), 2);
        assert_eq!(c.curves[0].label, "EAP");
        // Signed: the two edges losing most form a path input -> h0.0 -> logits.
        let signed: Vec<String> = c.curves[0].circuits[0]
            .iter()
            .map(|&i| g.edges()[i as usize].to_string())
            .collect();
        assert_eq!(signed, ["embed->h0.0.q", "h0.0->logits"]);
        // Absolute: the two largest changes are embed->h0.0.q and embed->m1; neither alone
        // reaches the logits, so nothing is kept.
        assert!(c.curves[1].circuits[0].is_empty());
        // The whole graph keeps every edge.
        assert_eq!(c.curves[0].circuits[1].len(), n);
        assert_eq!(c.len(), 2 + 4);
    }

    #[test]
    fn a_file_missing_edges_is_refused_by_name() {
        let g = shape();
        let mut s: Vec<f64> = vec![100.0; g.edges().len()];
        s.pop();
        let text = doc(&s);
        // Names and scores zip short: the last edge has no score.
        let err = build(&[("r.json".into(), text)], &g, &[1.0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.json: no score for edge"), "{err}");
    }

    #[test]
    fn scores_of_another_graph_are_refused() {
        let g = shape();
        let s = vec![100.0; g.edges().len()];
        let kv = GraphShape {
            kv_per_query: false,
            ..g
        };
        let err = build(&[("r.json".into(), doc(&s))], &kv, &[1.0])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key/value receivers are per query head"),
            "{err}"
        );
    }
}
