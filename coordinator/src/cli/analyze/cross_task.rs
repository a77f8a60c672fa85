//! `analyze cross-task`: each task's circuit (from its results folder) scored on every task's
//! data, with the shared sub-circuit and the union; the overlap as an UpSet figure.

use std::path::{Path, PathBuf};

use anyhow::Context;
use circuit_sweep_common::Component;
use circuit_sweep_common::analysis::cross_task::overlap;
use circuit_sweep_common::circuit::parse_circuit;
use circuit_sweep_common::dataset::read_jsonl;
use circuit_sweep_common::results::{Grid, grid_svg, upset_svg};
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_worker::PromptSet;
use circuit_sweep_worker::analysis::cross_task::score_circuits;
use clap::Args;

use super::{ModelArgs, load, model_name, write};

/// Arguments of `analyze cross-task`.
#[derive(Debug, Args)]
pub struct CrossTaskArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Results folders of pruning runs (or order studies: their core), one per task.
    #[arg(required = true, num_args = 2..)]
    results: Vec<PathBuf>,
    /// Tokens per forward pass.
    #[arg(long, env = "CIRCUIT_SWEEP_BATCH_TOKENS", default_value_t = 16384)]
    batch_tokens: usize,
    /// Output folder.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT", default_value = "analysis/cross-task")]
    out: PathBuf,
}

/// One task's results folder.
struct TaskResult {
    name: String,
    spec: SweepSpec,
    circuit: Vec<Component>,
    prompts: PathBuf,
    /// The circuit's score on its own data, as the run reported it.
    own_score: Option<f64>,
}

fn read_task(dir: &Path, n_layers: usize, n_heads: usize) -> anyhow::Result<TaskResult> {
    let rj = dir.join("result.json");
    let text = std::fs::read_to_string(&rj).with_context(|| format!("reading {}", rj.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", rj.display()))?;
    let spec: SweepSpec = serde_json::from_value(doc["spec"].clone())
        .with_context(|| format!("{}: field `spec`", rj.display()))?;
    let circuit = parse_circuit(&text, &rj.display().to_string(), n_layers, n_heads)
        .map_err(anyhow::Error::msg)?;
    let name = spec.data.task.clone().unwrap_or_else(|| {
        dir.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let own_score = match &doc["prune"] {
        serde_json::Value::Array(a) => a.last().and_then(|r| r["score"].as_f64()),
        p => p["score"].as_f64(),
    };
    Ok(TaskResult {
        name,
        spec,
        circuit,
        prompts: dir.join("prompts.jsonl"),
        own_score,
    })
}

/// Runs `analyze cross-task`.
pub fn run(a: CrossTaskArgs, models_dir: &Path) -> anyhow::Result<()> {
    let loaded = load(&a.model, models_dir)?;
    let tok = loaded.tokenizer.as_ref().expect("checked by load");
    let info = loaded.model.info().clone();
    let tasks: Vec<TaskResult> = a
        .results
        .iter()
        .map(|d| read_task(d, info.n_layers, info.n_heads))
        .collect::<anyhow::Result<_>>()?;
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let circuits: Vec<Vec<Component>> = tasks.iter().map(|t| t.circuit.clone()).collect();
    let ov = overlap(&names, &circuits);
    let mut rows: Vec<String> = names.iter().map(|n| format!("{n} circuit")).collect();
    rows.push(format!("shared ({})", ov.shared.len()));
    rows.push(format!("union ({})", ov.union.len()));
    let mut scored = circuits.clone();
    scored.push(ov.shared.clone());
    scored.push(ov.union.clone());
    // matrix[circuit][data]
    let mut matrix = vec![vec![0.0; tasks.len()]; scored.len()];
    for (j, t) in tasks.iter().enumerate() {
        let pairs = read_jsonl(&t.prompts).map_err(|e| anyhow::anyhow!("{e}"))?;
        let set = PromptSet::from_pairs(&pairs, tok)
            .map_err(|e| anyhow::anyhow!("{}: {e}", t.prompts.display()))?;
        let s = score_circuits(
            &loaded.model,
            &set,
            t.spec.ablation,
            &scored,
            a.batch_tokens,
        )?;
        for (i, v) in s.into_iter().enumerate() {
            matrix[i][j] = v;
        }
        if let Some(own) = t.own_score
            && (own - matrix[j][j]).abs() > 0.01
        {
            tracing::warn!(
                "{}: the circuit scores {:.3} here but {own:.3} in its run (another model or dtype?)",
                t.name,
                matrix[j][j]
            );
        }
    }
    let name = model_name(&loaded.source);
    let cols = names.clone();
    write(
        &a.out,
        "cross-task.svg",
        &grid_svg(&Grid {
            rows: &rows,
            cols: &cols,
            values: &matrix,
            lo: 0.0,
            hi: 100.0,
            title: &format!("{name}: circuits (rows) scored on each task's data (columns)"),
            sub: "% of the full model's metric kept with everything outside the circuit ablated",
            decimals: Some(1),
            cell: 76.0,
            vertical_cols: false,
        }),
    )?;
    write(
        &a.out,
        "overlap.svg",
        &upset_svg(
            &names,
            &ov.exclusive,
            &format!("{name}: components shared by the circuits"),
            "bars: components in exactly the marked tasks' circuits",
        ),
    )?;
    // The shared sub-circuit as a list, usable as `circuit_file` of an edge sweep or a
    // downstream study.
    let shared: Vec<String> = ov.shared.iter().map(|c| c.to_string()).collect();
    write(&a.out, "shared.json", &serde_json::to_string(&shared)?)?;
    let mut csv = format!("circuit,{}\n", names.join(","));
    for (r, row) in rows.iter().zip(&matrix) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv.push_str(&format!("{r},{}\n", cells.join(",")));
    }
    write(&a.out, "cross-task.csv", &csv)?;
    let doc = serde_json::json!({
        "model": loaded.source.display().to_string(),
        "tasks": names,
        "folders": a.results,
        "rows": rows,
        "matrix": matrix,
        "overlap": ov,
    });
    write(
        &a.out,
        "cross-task.json",
        &serde_json::to_string_pretty(&doc)?,
    )?;
    print!("{:<24}", "circuit \\ data");
    for n in &names {
        print!(" {n:>14}");
    }
    println!();
    for (r, row) in rows.iter().zip(&matrix) {
        print!("{r:<24}");
        for v in row {
            print!(" {:>13.2}%", v);
        }
        println!();
    }
    let list = |cs: &[Component]| {
        cs.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("shared by all: {}", list(&ov.shared));
    for (n, only) in names.iter().zip(&ov.only) {
        println!("{n} only: {}", list(only));
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
