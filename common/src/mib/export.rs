//! A run's edge scores as a MIB file: the graph from the model `result.json` records, each
//! edge's score from the run's `attribution` section (EAP, EAP-IG) or its `edges` section
//! (every edge ablated alone), turned into MIB's metric differences ([`Scale`]). Nothing is
//! marked `in_graph` but `logits` (MIB counts it in always): MIB selects by score.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::edge::{Edge, EdgeError, GraphShape};
use crate::mib::file::MibFile;
use crate::mib::graph::MibConfig;
use crate::mib::scores::{Convention, MissingBaseline, Scale};
use crate::results::{ReadError, ResultDoc};
use crate::spec::{EdgeMethod, KvEdges};

/// Which section of `result.json` the scores come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// `attribution` when there is one, else `edges`.
    #[default]
    Auto,
    /// Single-edge ablation scores.
    Edges,
    /// Attribution scores (EAP, EAP-IG).
    Attribution,
}

/// How to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Where the scores come from.
    pub source: Source,
    /// The sign of MIB's scores.
    pub convention: Convention,
    /// Write edges the run did not score, with score 0 (as MIB's loader reads an edge a file
    /// leaves out), instead of refusing.
    pub allow_partial: bool,
}

/// What was exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The MIB file.
    pub file: MibFile,
    /// The section read, with the method where it says one (`edges`, `attribution (eap_ig,
    /// 30 steps)`).
    pub source: String,
    /// Edges the run scored.
    pub scored: usize,
}

/// A run that cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `result.json` does not read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The model record lacks a fact MIB's `cfg` needs.
    #[error(
        "result.json: `model.info.{0}` is missing or not what a model record holds; MIB's cfg needs it"
    )]
    ModelInfo(&'static str),
    /// No section holds edge scores.
    #[error("result.json has {0}")]
    NoScores(&'static str),
    /// The `attribution` section is not of its layout.
    #[error("result.json: `attribution`: {0}")]
    Attribution(String),
    /// Names and scores differ in number.
    #[error("result.json: `{section}` has {names} names and {scores} scores")]
    Lengths {
        /// The section.
        section: &'static str,
        /// Names.
        names: usize,
        /// Scores.
        scores: usize,
    },
    /// An edge name that is not ours, or not an edge of MIB's graph of the model.
    #[error("result.json: `{section}`: {source}")]
    Edge {
        /// The section.
        section: &'static str,
        /// Why.
        source: EdgeError,
    },
    /// An edge scored twice.
    #[error("result.json: `{section}` scores `{edge}` twice")]
    Twice {
        /// The section.
        section: &'static str,
        /// The edge.
        edge: String,
    },
    /// The attribution scored nodes, not edges.
    #[error(
        "result.json: `attribution` scores nodes (`{0}`, ...), not edges; MIB's circuit files need edge scores"
    )]
    NodeAttribution(String),
    /// The run's key/value receivers are not MIB's.
    #[error(
        "the run's key and value receivers are key/value heads (`kv_edges = \"kv_head\"`); MIB's graph has one per query head (`kv_edges = \"query_head\"`, the default)"
    )]
    KvHeads,
    /// Path patching scores are not direct edges.
    #[error(
        "the run scored edges by path patching (`edge_method = \"path\"`), which has no `embed` sender and does not measure MIB's direct edges; run `edge_method = \"direct\"`"
    )]
    PathPatching,
    /// Some edges of MIB's graph have no score.
    #[error(
        "`{section}` scores {scored} of the {total} edges of MIB's graph of this model (`{example}` has none; a run restricted to a node circuit scores only its edges)"
    )]
    Partial {
        /// The section.
        section: &'static str,
        /// Scored.
        scored: usize,
        /// In MIB's graph.
        total: usize,
        /// An edge without a score.
        example: String,
    },
    /// A baseline the conversion needs is absent.
    #[error(transparent)]
    Baseline(#[from] MissingBaseline),
}

#[derive(Deserialize)]
struct AttributionSection {
    method: String,
    #[serde(default)]
    steps: Option<u64>,
    names: Vec<String>,
    scores: Vec<f64>,
}

/// The edge graph and MIB `cfg` of the model a run records.
fn model_cfg(info: &serde_json::Value) -> Result<(GraphShape, MibConfig), ExportError> {
    let size = |k: &'static str| {
        info.get(k)
            .and_then(|v| v.as_u64())
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or(ExportError::ModelInfo(k))
    };
    let (n_layers, n_heads, d_model) = (size("n_layers")?, size("n_heads")?, size("d_model")?);
    let n_kv_heads = match info.get("n_kv_heads") {
        None => n_heads,
        Some(_) => size("n_kv_heads")?,
    };
    let parallel = info
        .get("parallel_residual")
        .and_then(|v| v.as_bool())
        .ok_or(ExportError::ModelInfo("parallel_residual"))?;
    let shape = GraphShape {
        n_layers,
        n_heads,
        n_kv_heads,
        parallel,
        kv_per_query: true,
        embed: true,
    };
    let mut cfg = MibConfig::for_shape(&shape, d_model);
    if n_kv_heads != n_heads {
        // TransformerLens's name; MIB's loader keeps it and reads only its own keys.
        cfg.extra
            .push(("n_key_value_heads".into(), n_kv_heads.into()));
    }
    Ok((shape, cfg))
}

/// Exports the `result.json` whose text is `text` (read from `path`).
pub fn export(text: &str, path: &Path, opts: ExportOptions) -> Result<Exported, ExportError> {
    let doc = ResultDoc::parse(text, path)?;
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| ReadError::Layout {
        path: path.to_path_buf(),
        why: format!("not JSON: {e}"),
    })?;
    if doc.spec.sweep.kv_edges == KvEdges::KvHead {
        return Err(ExportError::KvHeads);
    }
    let attribution = raw.get("attribution").filter(|v| !v.is_null());
    let use_attribution = match opts.source {
        Source::Auto => attribution.is_some(),
        Source::Edges => false,
        Source::Attribution => true,
    };
    let (section, source, names, scores) = if use_attribution {
        let a = attribution.ok_or(ExportError::NoScores("no `attribution` section"))?;
        let a: AttributionSection = serde_json::from_value(a.clone())
            .map_err(|e| ExportError::Attribution(e.to_string()))?;
        if let Some(n) = a.names.iter().find(|n| !n.contains("->")) {
            return Err(ExportError::NodeAttribution(n.clone()));
        }
        let steps = a.steps.map(|s| format!(", {s} steps")).unwrap_or_default();
        let source = format!("attribution ({}{steps})", a.method);
        ("attribution", source, a.names, a.scores)
    } else {
        if doc.spec.sweep.edge_method == EdgeMethod::Path {
            return Err(ExportError::PathPatching);
        }
        let e = doc.edges.clone().ok_or(ExportError::NoScores(
            "no `edges` section and no `attribution` section: no edge scores to export",
        ))?;
        ("edges", "edges".to_string(), e.names, e.scores)
    };
    if names.len() != scores.len() {
        return Err(ExportError::Lengths {
            section,
            names: names.len(),
            scores: scores.len(),
        });
    }

    let (shape, cfg) = model_cfg(&doc.model.info)?;
    let scale = Scale::of(&doc)?;
    let mut by_edge: HashMap<Edge, f64> = HashMap::with_capacity(names.len());
    for (name, &score) in names.iter().zip(&scores) {
        let bad = |source| ExportError::Edge { section, source };
        let edge: Edge = name.parse().map_err(bad)?;
        shape.check(&edge).map_err(bad)?;
        if by_edge
            .insert(edge, scale.to_mib(score, opts.convention))
            .is_some()
        {
            return Err(ExportError::Twice {
                section,
                edge: name.clone(),
            });
        }
    }

    let mut file = MibFile::empty(cfg);
    let total = file.edges.len();
    if let Some(e) = file.edges.iter().find(|e| !by_edge.contains_key(&e.edge))
        && !opts.allow_partial
    {
        return Err(ExportError::Partial {
            section,
            scored: by_edge.len(),
            total,
            example: e.edge.to_string(),
        });
    }
    for e in &mut file.edges {
        if let Some(&s) = by_edge.get(&e.edge) {
            e.score = s;
        }
    }
    file.listed_edges = total;
    Ok(Exported {
        file,
        source,
        scored: by_edge.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mib::select::select_top;

    fn fixture(name: &str) -> (String, std::path::PathBuf) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/results")
            .join(name);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        // The golden documents leave out the timing, the one part that differs between runs.
        let mut result = v["result"].clone();
        result["timing"] = serde_json::json!({"seconds": 1.0, "shards": 1, "shard_attempts": 1});
        (result.to_string(), p)
    }

    #[test]
    fn an_edge_sweep_exports_every_edge_as_a_metric_difference() {
        let (text, path) = fixture("edges.json");
        let doc = ResultDoc::parse(&text, &path).unwrap();
        let full = doc.full.unwrap();
        let ex = export(&text, &path, ExportOptions::default()).unwrap();
        assert_eq!((ex.source.as_str(), ex.scored), ("edges", 802));
        let f = &ex.file;
        // The fixture's tiny Llama: 3 layers of 8 query heads sharing 2 key/value heads.
        assert_eq!(f.edges.len(), 802);
        assert_eq!(f.cfg.fields().len(), 5, "with n_key_value_heads");
        assert!(f.edges.iter().all(|e| !e.in_graph));
        let first = &doc.edges.as_ref().unwrap();
        let (name, score) = (&first.names[0], first.scores[0]);
        let e = f
            .edges
            .iter()
            .find(|e| &e.edge.to_string() == name)
            .unwrap();
        assert!((e.score - (100.0 - score) * full / 100.0).abs() < 1e-12);
        // Reads back, and selects.
        let mut back = MibFile::parse(&f.to_json().unwrap(), "x").unwrap();
        assert_eq!(back.edges, f.edges);
        let s = select_top(&mut back, 80, false).unwrap();
        assert!(s.kept > 0 && s.kept <= 80, "{s:?}");

        let metric = export(
            &text,
            &path,
            ExportOptions {
                convention: Convention::Metric,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(metric.file.edges[5].score, -f.edges[5].score);
    }

    #[test]
    fn attribution_scores_are_preferred_and_checked() {
        let (text, path) = fixture("edges.json");
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names = v["edges"]["names"].clone();
        let n = names.as_array().unwrap().len();
        v["attribution"] = serde_json::json!({"method": "eap_ig", "steps": 5, "names": names.clone(),
            "scores": vec![100.0; n]});
        let text2 = v.to_string();
        let ex = export(&text2, &path, ExportOptions::default()).unwrap();
        assert_eq!(ex.source, "attribution (eap_ig, 5 steps)");
        assert!(ex.file.edges.iter().all(|e| e.score == 0.0));
        let edges = ExportOptions {
            source: Source::Edges,
            ..Default::default()
        };
        assert_eq!(export(&text2, &path, edges).unwrap().source, "edges");

        v["attribution"]["names"] = serde_json::json!(["embed", "h0.1"]);
        v["attribution"]["scores"] = serde_json::json!([1.0, 2.0]);
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("scores nodes (`embed`"), "{e}");
        v["attribution"]["names"] = names;
        v["attribution"]["scores"] = serde_json::json!([1.0]);
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("802 names and 1 scores"), "{e}");
        v["attribution"]["names"] = serde_json::json!(["h0.0->h0.1.q"]);
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("h0.0->h0.1.q"), "{e}");
        v["attribution"]["names"] = serde_json::json!(["h0.0->h1.1.q"]);
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("scores 1 of the 802 edges")
                && e.to_string().contains("`embed->h0.0.q` has none"),
            "{e}"
        );
        let partial = ExportOptions {
            allow_partial: true,
            ..Default::default()
        };
        let ex = export(&v.to_string(), &path, partial).unwrap();
        assert_eq!(ex.scored, 1);
        assert_eq!(ex.file.edges.iter().filter(|e| e.score != 0.0).count(), 1);
    }

    #[test]
    fn runs_mib_cannot_take_are_refused() {
        let (text, path) = fixture("edges_kv.json");
        let e = export(&text, &path, ExportOptions::default()).unwrap_err();
        assert!(matches!(e, ExportError::KvHeads), "{e}");
        let (text, path) = fixture("nodes.json");
        let e = export(&text, &path, ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no `edges` section"), "{e}");
        let (text, path) = fixture("edges.json");
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["model"]["info"]
            .as_object_mut()
            .unwrap()
            .remove("d_model");
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("`model.info.d_model` is missing"),
            "{e}"
        );
        v = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("full");
        let e = export(&v.to_string(), &path, ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no `full`"), "{e}");
    }
}
