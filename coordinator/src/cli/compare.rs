//! `circuit-sweep compare A B`: two pruning runs side by side (plain greedy against
//! attribute-then-verify, say): what each circuit holds and cost, and how they differ.

use std::path::{Path, PathBuf};

use anyhow::Context;
use circuit_sweep_common::analysis::compare::{PrunedCircuit, overlap};
use circuit_sweep_common::results::ResultDoc;
use clap::Args;

/// Arguments of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The first run: a results folder or its `result.json`.
    pub first: PathBuf,
    /// The second run.
    pub second: PathBuf,
    /// How many differing items to list per side.
    #[arg(long, default_value_t = 20, env = "CIRCUIT_SWEEP_COMPARE_LIST")]
    pub list: usize,
    /// Print one JSON object instead of the table.
    #[arg(long, env = "CIRCUIT_SWEEP_JSON")]
    pub json: bool,
}

fn read(path: &Path) -> anyhow::Result<(String, PrunedCircuit)> {
    let file = if path.is_dir() {
        path.join("result.json")
    } else {
        path.to_path_buf()
    };
    let doc = ResultDoc::read(&file)?;
    let c = PrunedCircuit::of(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok((label, c))
}

/// Runs `compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let (mut la, a) = read(&args.first).context("the first run")?;
    let (mut lb, b) = read(&args.second).context("the second run")?;
    if la == lb {
        la = args.first.display().to_string();
        lb = args.second.display().to_string();
    }
    if a.over != b.over {
        anyhow::bail!(
            "{la} is a circuit of {} and {lb} one of {}: compare circuits of the same kind",
            a.over,
            b.over
        );
    }
    let o = overlap(&a.items, &b.items);
    if args.json {
        let v = serde_json::json!({"first": a, "second": b, "overlap": o});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let how = |c: &PrunedCircuit| match &c.guided {
        Some(g) => format!(
            "attribution ({}, {} steps, {} blocks)",
            g.method, g.steps, g.blocks
        ),
        None => "all, one at a time".into(),
    };
    let rows: [(&str, String, String); 6] = [
        ("candidates", how(&a), how(&b)),
        (
            "circuit",
            format!("{} of {} {}", a.items.len(), a.candidates, a.over),
            format!("{} of {} {}", b.items.len(), b.candidates, b.over),
        ),
        (
            "score",
            format!("{:.3}", a.score),
            format!("{:.3}", b.score),
        ),
        (
            "evaluations",
            a.evaluations.to_string(),
            b.evaluations.to_string(),
        ),
        ("passes", a.passes.to_string(), b.passes.to_string()),
        (
            "difference",
            String::new(),
            if b.evaluations <= a.evaluations {
                format!(
                    "{} fewer evaluations ({:.1}x fewer)",
                    a.evaluations - b.evaluations,
                    a.evaluations as f64 / b.evaluations.max(1) as f64
                )
            } else {
                format!(
                    "{} more evaluations ({:.1}x more)",
                    b.evaluations - a.evaluations,
                    b.evaluations as f64 / a.evaluations.max(1) as f64
                )
            },
        ),
    ];
    let w = rows
        .iter()
        .map(|r| r.1.len())
        .max()
        .unwrap_or(0)
        .max(la.len());
    println!("{:<12} {:<w$}  {}", "", la, lb);
    for (name, x, y) in rows {
        println!("{name:<12} {x:<w$}  {y}");
    }
    println!(
        "\nin both {}, only in {la} {}, only in {lb} {}; Jaccard {:.3}",
        o.both.len(),
        o.only_first.len(),
        o.only_second.len(),
        o.jaccard
    );
    for (label, only) in [(&la, &o.only_first), (&lb, &o.only_second)] {
        if only.is_empty() {
            continue;
        }
        let shown: Vec<&str> = only.iter().take(args.list).map(String::as_str).collect();
        let more = only.len().saturating_sub(args.list);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        println!("only in {label}: {}{tail}", shown.join(", "));
    }
    Ok(())
}
