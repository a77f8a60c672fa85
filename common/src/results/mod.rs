//! The results folder of a run: `result.json` (schema-versioned), the score
//! matrices as CSV and safetensors, and SVG plots.

mod charts;
mod circuit;
mod document;
mod edges;
mod grid;
mod heatmap;
mod scatter;
mod study;
mod tables;
mod upset;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use charts::{CurveLine, bars_svg, curves_svg, strip_svg};
pub use circuit::{circuit_dot, circuit_svg, frequency_svg};
pub use document::{
    AttributionScores, DownstreamSet, DownstreamStudy, EdgeScores, FaithfulnessCurve,
    FaithfulnessCurves, ModelRecord, NamedScores, PruneRuns, ReadError, ResultDoc, Timing,
};
pub use edges::{edge_dot, edge_svg, edges_csv};
pub use grid::{Grid, grid_svg};
pub use heatmap::head_heatmap_svg;
pub use scatter::{Mark, scatter_svg};
pub use study::{jaccard_svg, size_score_svg};
pub use upset::upset_svg;

/// Escapes text for SVG and DOT.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The start of an SVG drawing: white background, a title and a grey subtitle at `left`.
pub(crate) fn svg_header(
    width: f64,
    height: f64,
    left: f64,
    title: &str,
    subtitle: &str,
) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"13\">{}</text>\n\
         <text x=\"{left}\" y=\"34\" fill=\"#555\">{}</text>\n",
        esc(title),
        esc(subtitle)
    )
}

/// Version of `result.json`'s layout.
pub const SCHEMA: u32 = 1;

/// Scores of every head and every MLP ablated alone (% of the full model, or KL in nats).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeScores {
    /// `[n_layers][n_heads]`.
    pub heads: Vec<Vec<f64>>,
    /// `[n_layers]`.
    pub mlps: Vec<f64>,
}

/// A results folder could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    std::fs::write(path, bytes).map_err(|source| WriteError {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `name` into `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<(), WriteError> {
    write(&dir.join(name), text.as_bytes())
}

/// Writes `result.json` (pretty, keys in a fixed order) into `dir`, creating it.
pub fn write_result_json(dir: &Path, doc: &serde_json::Value) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut text = serde_json::to_string_pretty(doc).expect("JSON values serialise");
    text.push('\n');
    write(&dir.join("result.json"), text.as_bytes())
}

/// Writes the node-sweep tables and plots: `nodes_heads.csv`, `nodes_mlps.csv`,
/// `nodes.safetensors` (`heads` `[L, H]`, `mlps` `[L]`, f32) and `heads.svg`.
pub fn write_node_scores(
    dir: &Path,
    scores: &NodeScores,
    title: &str,
    unit: crate::metric::Unit,
) -> Result<(), WriteError> {
    write(
        &dir.join("nodes_heads.csv"),
        tables::heads_csv(scores).as_bytes(),
    )?;
    write(
        &dir.join("nodes_mlps.csv"),
        tables::mlps_csv(scores).as_bytes(),
    )?;
    write(
        &dir.join("nodes.safetensors"),
        &tables::nodes_safetensors(scores),
    )?;
    write(
        &dir.join("heads.svg"),
        head_heatmap_svg(scores, title, unit).as_bytes(),
    )
}
