//! `circuit-sweep mib select|import|export`: MIB's circuit files, no model needed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use circuit_sweep_common::mib::export::{self, ExportError, ExportOptions, Source};
use circuit_sweep_common::mib::scores::Convention;
use circuit_sweep_common::mib::{MibFile, import, select};
use clap::{Subcommand, ValueEnum};

/// MIB commands.
#[derive(Debug, Subcommand)]
pub enum MibCommand {
    /// Take a circuit from a MIB file's edge scores by MIB's rule.
    ///
    /// The top N edges by score, then only those on a path from `input` to `logits` through
    /// them. Writes the file with `in_graph` set on those edges and their nodes.
    Select {
        /// The MIB file (`cfg`, `nodes`, `edges` with scores).
        file: PathBuf,
        /// Edges to take by score, before those off every path are dropped.
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_EDGES")]
        edges: usize,
        /// Rank by absolute score (MIB's CMD) instead of signed score (MIB's CPR).
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_ABSOLUTE")]
        absolute: bool,
        /// The MIB file to write.
        #[arg(short, long, env = "CIRCUIT_SWEEP_OUT")]
        out: PathBuf,
    },
    /// A MIB file's circuit (its `in_graph` edges) as ours.
    ///
    /// `--out` gets the heads and MLPs the edges touch, a JSON list of component names that an
    /// edge sweep takes as `circuit_file`; `--edges-out` gets the edges, a JSON list of our edge
    /// names (`h4.4->h9.1.q`).
    Import {
        /// The MIB file.
        file: PathBuf,
        /// The node circuit to write.
        #[arg(short, long, env = "CIRCUIT_SWEEP_OUT")]
        out: PathBuf,
        /// The edge list to write (default: `--out` with `-edges` before its extension).
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_EDGES_OUT")]
        edges_out: Option<PathBuf>,
    },
    /// A run's edge scores as a MIB file, every edge out of the graph (MIB selects by score).
    ///
    /// Our scores (the metric with the edge ablated alone, in % of the full model; KL in nats)
    /// are turned back into raw metric differences with the full model's metric (and the
    /// corrupt run's or empty circuit's, for scores normalised by them) from result.json: with
    /// the default `--convention loss`, score = m(full) - m(edge ablated) for logit difference
    /// and accuracy (= (100 - our score) x (full - zero) / 100) and the KL itself for KL, so
    /// that an edge the behaviour needs scores high, as MIB's attribution scores and signed
    /// selection have it. The graph comes from result.json's model record.
    Export {
        /// The results folder (its `result.json`).
        results: PathBuf,
        /// The MIB file to write.
        #[arg(short, long, env = "CIRCUIT_SWEEP_OUT")]
        out: PathBuf,
        /// The section the scores come from: `attribution` (EAP, EAP-IG) if there is one,
        /// else `edges` (every edge ablated alone).
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_SOURCE", default_value = "auto")]
        source: SourceArg,
        /// `loss`: how much ablating an edge raises the loss (MIB's attribution); `metric`: how
        /// much it changes the metric (the sign of MIB's published example file).
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_CONVENTION", default_value = "loss")]
        convention: ConventionArg,
        /// Write edges the run did not score (a run restricted to a node circuit) with score 0,
        /// as MIB's loader reads an edge a file leaves out, instead of refusing.
        #[arg(long, env = "CIRCUIT_SWEEP_MIB_ALLOW_PARTIAL")]
        allow_partial: bool,
    },
}

/// `--source`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceArg {
    /// `attribution` if present, else `edges`.
    Auto,
    /// Single-edge ablation scores.
    Edges,
    /// Attribution scores.
    Attribution,
}

/// `--convention`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConventionArg {
    /// Loss increase when the edge is ablated.
    Loss,
    /// Metric change when the edge is ablated.
    Metric,
}

/// Runs a MIB command.
pub fn run(cmd: MibCommand) -> anyhow::Result<()> {
    match cmd {
        MibCommand::Select {
            file,
            edges,
            absolute,
            out,
        } => run_select(&file, edges, absolute, &out),
        MibCommand::Import {
            file,
            out,
            edges_out,
        } => run_import(&file, &out, edges_out),
        MibCommand::Export {
            results,
            out,
            source,
            convention,
            allow_partial,
        } => {
            let opts = ExportOptions {
                source: match source {
                    SourceArg::Auto => Source::Auto,
                    SourceArg::Edges => Source::Edges,
                    SourceArg::Attribution => Source::Attribution,
                },
                convention: match convention {
                    ConventionArg::Loss => Convention::Loss,
                    ConventionArg::Metric => Convention::Metric,
                },
                allow_partial,
            };
            run_export(&results, &out, opts)
        }
    }
}

/// Says so when a file leaves edges out: MIB's loader gives them score 0.
fn note_left_out(f: &MibFile, path: &Path) {
    if f.listed_edges < f.edges.len() {
        eprintln!(
            "note: {} lists {} of the {} edges of its graph; the others score 0, as MIB reads them",
            path.display(),
            f.listed_edges,
            f.edges.len()
        );
    }
}

fn run_select(file: &Path, n: usize, absolute: bool, out: &Path) -> anyhow::Result<()> {
    let mut f = MibFile::read(file)?;
    note_left_out(&f, file);
    let s = select::select_top(&mut f, n, absolute)?;
    f.write(out)?;
    println!(
        "selected the top {} of {} edges by {} score; {} lie on a path from input to logits; {} nodes in the graph; written to {}",
        s.selected,
        f.edges.len(),
        if absolute { "absolute" } else { "signed" },
        s.kept,
        s.nodes,
        out.display()
    );
    Ok(())
}

/// `circuit.json` -> `circuit-edges.json`.
fn default_edges_out(out: &Path) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let name = match out.extension() {
        Some(ext) => format!("{stem}-edges.{}", ext.to_string_lossy()),
        None => format!("{stem}-edges"),
    };
    out.with_file_name(name)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn run_import(file: &Path, out: &Path, edges_out: Option<PathBuf>) -> anyhow::Result<()> {
    let f = MibFile::read(file)?;
    let c = import::import(&f).with_context(|| file.display().to_string())?;
    if !c.disagreeing_nodes.is_empty() {
        let names: Vec<String> = c.disagreeing_nodes.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "note: the in_graph of {} nodes disagrees with the edges ({}); the edges decide",
            names.len(),
            names.join(", ")
        );
    }
    let edges_out = edges_out.unwrap_or_else(|| default_edges_out(out));
    write_json(out, &c.components)?;
    write_json(&edges_out, &c.edges)?;
    println!(
        "{} heads and MLPs written to {} (a node circuit, usable as `circuit_file`); {} edges written to {}",
        c.components.len(),
        out.display(),
        c.edges.len(),
        edges_out.display()
    );
    Ok(())
}

fn run_export(results: &Path, out: &Path, opts: ExportOptions) -> anyhow::Result<()> {
    let path = results.join("result.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let ex = match export::export(&text, &path, opts) {
        Err(e @ ExportError::Partial { .. }) => {
            return Err(anyhow::anyhow!(
                "{}: {e}; pass --allow-partial to write the others with score 0",
                path.display()
            ));
        }
        r => r.with_context(|| path.display().to_string())?,
    };
    ex.file.write(out)?;
    println!(
        "{} edges from `{}` ({} scored) written to {} as {} differences; nothing in_graph",
        ex.file.edges.len(),
        ex.source,
        ex.scored,
        out.display(),
        match opts.convention {
            Convention::Loss => "loss",
            Convention::Metric => "metric",
        }
    );
    Ok(())
}
