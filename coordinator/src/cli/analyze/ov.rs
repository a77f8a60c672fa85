//! `analyze ov`: successor and copy scores of every head on token sets.

use std::path::{Path, PathBuf};

use circuit_sweep_common::analysis::token_sets::{OvProbe, TokenSet};
use circuit_sweep_common::results::{Grid, grid_svg};
use circuit_sweep_worker::analysis::ov::ov_scores;
use clap::Args;

use super::{ModelArgs, load, model_name, write};

/// Arguments of `analyze ov`.
#[derive(Debug, Args)]
pub struct OvArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token sets (numerals, number_words, months, days, letters).
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_SETS",
        value_delimiter = ',',
        default_value = "numerals,number_words,months"
    )]
    sets: Vec<TokenSet>,
    /// A member counts when its successor (or itself, for the copy score) is in the top k.
    #[arg(long, env = "CIRCUIT_SWEEP_K", default_value_t = 5)]
    k: usize,
    /// Read the members at the input of this block (1: after the embedding and block 0, the
    /// paper's choice).
    #[arg(long, env = "CIRCUIT_SWEEP_FROM_LAYER", default_value_t = 1)]
    from_layer: usize,
    /// Members per window prompt (the paper: 4).
    #[arg(long, env = "CIRCUIT_SWEEP_WINDOW", default_value_t = 4)]
    window: usize,
    /// Output folder.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT", default_value = "analysis/ov")]
    out: PathBuf,
}

fn heatmap(which: &[Vec<f64>], title: &str, sub: &str) -> String {
    let rows: Vec<String> = (0..which.len()).map(|l| format!("layer {l}")).collect();
    let cols: Vec<String> = (0..which.first().map_or(0, Vec::len))
        .map(|h| format!("h{h}"))
        .collect();
    grid_svg(&Grid {
        rows: &rows,
        cols: &cols,
        values: which,
        lo: 0.0,
        hi: 100.0,
        title,
        sub,
        decimals: Some(0),
        cell: 30.0,
        vertical_cols: false,
    })
}

/// The `n` best heads of a `[layers][heads]` table.
fn best(t: &[Vec<f64>], n: usize) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = t
        .iter()
        .enumerate()
        .flat_map(|(l, r)| {
            r.iter()
                .enumerate()
                .map(move |(h, &v)| (format!("h{l}.{h}"), v))
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.truncate(n);
    all
}

/// Runs `analyze ov`.
pub fn run(a: OvArgs, models_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(a.k >= 1, "--k must be at least 1");
    let loaded = load(&a.model, models_dir)?;
    let tok = loaded.tokenizer.as_ref().expect("checked by load");
    let name = model_name(&loaded.source);
    let mut doc = serde_json::Map::new();
    println!(
        "{:<14} {:>8} {:>8}  best successor heads (top-{})",
        "set", "members", "scored", a.k
    );
    for set in &a.sets {
        let probe = OvProbe::new(*set, a.window, tok).map_err(anyhow::Error::msg)?;
        if !probe.skipped.is_empty() {
            tracing::warn!(
                "{set}: not one token for this tokenizer, not scored: {}",
                probe.skipped.join(" ")
            );
        }
        let s = ov_scores(&loaded.model, &probe, a.k, a.from_layer)?;
        let sub = format!(
            "{} member readings ({} with a successor), residual at block {}'s input",
            s.occurrences, s.with_successor, a.from_layer
        );
        write(
            &a.out,
            &format!("successor-{set}.svg"),
            &heatmap(
                &s.successor,
                &format!("{name}: successor score, {set} (top-{})", a.k),
                &sub,
            ),
        )?;
        write(
            &a.out,
            &format!("copy-{set}.svg"),
            &heatmap(
                &s.copy,
                &format!("{name}: copy score, {set} (top-{})", a.k),
                &sub,
            ),
        )?;
        let mut csv = String::from("head,successor,copy\n");
        for (l, row) in s.successor.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                csv.push_str(&format!("h{l}.{h},{v},{}\n", s.copy[l][h]));
            }
        }
        write(&a.out, &format!("ov-{set}.csv"), &csv)?;
        let top: Vec<String> = best(&s.successor, 5)
            .into_iter()
            .map(|(h, v)| format!("{h} {v:.0}%"))
            .collect();
        println!(
            "{:<14} {:>8} {:>8}  {}",
            set.to_string(),
            probe.members.len() - probe.skipped.len(),
            s.with_successor,
            top.join(", ")
        );
        doc.insert(
            set.to_string(),
            serde_json::json!({"scores": s, "skipped": probe.skipped, "members": probe.members}),
        );
    }
    // One summary: the heads with the highest successor score on any set, by set.
    let tables: Vec<(String, Vec<Vec<f64>>)> = doc
        .iter()
        .map(|(set, v)| {
            let t: Vec<Vec<f64>> =
                serde_json::from_value(v["scores"]["successor"].clone()).expect("tables we wrote");
            (set.clone(), t)
        })
        .collect();
    if let Some((_, first)) = tables.first() {
        let mut heads: Vec<(usize, usize, f64)> = vec![];
        for (l, row) in first.iter().enumerate() {
            for h in 0..row.len() {
                let best = tables.iter().map(|(_, t)| t[l][h]).fold(0.0, f64::max);
                heads.push((l, h, best));
            }
        }
        heads.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        heads.truncate(16);
        let rows: Vec<String> = heads.iter().map(|(l, h, _)| format!("h{l}.{h}")).collect();
        let cols: Vec<String> = tables.iter().map(|(s, _)| s.clone()).collect();
        let values: Vec<Vec<f64>> = heads
            .iter()
            .map(|&(l, h, _)| tables.iter().map(|(_, t)| t[l][h]).collect())
            .collect();
        write(
            &a.out,
            "successor.svg",
            &grid_svg(&Grid {
                rows: &rows,
                cols: &cols,
                values: &values,
                lo: 0.0,
                hi: 100.0,
                title: &format!("{name}: successor heads (top-{})", a.k),
                sub: "% of members whose successor the head's OV circuit puts in the top-k",
                decimals: Some(0),
                cell: 40.0,
                vertical_cols: true,
            }),
        )?;
    }
    let doc = serde_json::json!({
        "model": loaded.source.display().to_string(),
        "k": a.k, "from_layer": a.from_layer, "window": a.window,
        "sets": doc,
    });
    write(&a.out, "ov.json", &serde_json::to_string_pretty(&doc)?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
