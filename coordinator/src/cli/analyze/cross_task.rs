//! `analyze cross-task`: each task's circuit (from its results folder) scored on every task's
//! data, with the shared sub-circuit and the union; the overlap as an UpSet figure.

use std::path::{Path, PathBuf};

use anyhow::Context;
use circuit_sweep_common::Component;
use circuit_sweep_common::analysis::cross_task::{RecordedKind, RecordedScore, overlap};
use circuit_sweep_common::circuit::parse_circuit;
use circuit_sweep_common::dataset::read_jsonl;
use circuit_sweep_common::results::ResultDoc;
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
    dir: PathBuf,
    spec: SweepSpec,
    circuit: Vec<Component>,
    prompts: PathBuf,
    /// The circuit's score on its own data, as the run recorded it.
    own_score: Option<RecordedScore>,
}

fn read_task(dir: &Path, n_layers: usize, n_heads: usize) -> anyhow::Result<TaskResult> {
    let rj = dir.join("result.json");
    let text = std::fs::read_to_string(&rj).with_context(|| format!("reading {}", rj.display()))?;
    let doc = ResultDoc::parse(&text, &rj)?;
    let spec = doc.spec.clone();
    if spec.ablation.metric == circuit_sweep_common::spec::Metric::Kl {
        anyhow::bail!(
            "{}: [ablation] metric = \"kl\": the cross-task table is in % of each task's full model, and a KL divergence has no such share; prune with logit_diff or accuracy to compare tasks",
            rj.display()
        );
    }
    let circuit = parse_circuit(&text, &rj.display().to_string(), n_layers, n_heads)
        .map_err(anyhow::Error::msg)?;
    let name = spec.data.task.clone().unwrap_or_else(|| {
        dir.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    Ok(TaskResult {
        name,
        dir: dir.to_path_buf(),
        spec,
        circuit,
        prompts: dir.join("prompts.jsonl"),
        own_score: RecordedScore::from_result(&doc),
    })
}

/// The recorded score as a table cell; an order study's mean is marked `*`.
fn own_cell(own: Option<&RecordedScore>) -> String {
    match own {
        Some(o) if o.kind == RecordedKind::OrdersMean => format!(" {:>13.2}%*", o.score),
        Some(o) => format!(" {:>13.2}%", o.score),
        None => format!(" {:>14}", "-"),
    }
}

/// The printed table: circuits (rows) on each task's data, then each task circuit's recorded
/// score (`own` per task; the shared and union rows have none).
fn table(
    rows: &[String],
    names: &[String],
    matrix: &[Vec<f64>],
    own: &[Option<RecordedScore>],
) -> String {
    let mut out = format!("{:<24}", "circuit \\ data");
    for n in names {
        out.push_str(&format!(" {n:>14}"));
    }
    out.push_str(&format!(" {:>14}\n", "own (recorded)"));
    for (i, (r, row)) in rows.iter().zip(matrix).enumerate() {
        out.push_str(&format!("{r:<24}"));
        for v in row {
            out.push_str(&format!(" {:>13.2}%", v));
        }
        if i < own.len() {
            out.push_str(&own_cell(own[i].as_ref()));
        }
        out.push('\n');
    }
    if own
        .iter()
        .flatten()
        .any(|o| o.kind == RecordedKind::OrdersMean)
    {
        out.push_str("* an order study's mean circuit score: it records no score of its core\n");
    }
    out
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
            && own.contradicted_by(matrix[j][j])
        {
            tracing::warn!(
                "{}: the circuit scores {:.3}% on its own data here but {:.3}% in its run \
                 (have its data, spec or model changed?)",
                t.dir.display(),
                matrix[j][j],
                own.score
            );
        }
    }
    let name = model_name(&loaded.source);
    let cols = names.clone();
    let own: Vec<Option<RecordedScore>> = tasks.iter().map(|t| t.own_score).collect();
    let svg_rows: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match own.get(i).copied().flatten() {
            Some(o) if o.kind == RecordedKind::OrdersMean => {
                format!("{r} (orders' mean {:.1}%)", o.score)
            }
            Some(o) => format!("{r} (own {:.1}%)", o.score),
            None => r.clone(),
        })
        .collect();
    write(
        &a.out,
        "cross-task.svg",
        &grid_svg(&Grid {
            rows: &svg_rows,
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
    let mut csv = format!("circuit,{},own (recorded),recorded\n", names.join(","));
    for (i, (r, row)) in rows.iter().zip(&matrix).enumerate() {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        let (score, kind) = own
            .get(i)
            .copied()
            .flatten()
            .map_or((String::new(), ""), |o| {
                (o.score.to_string(), o.kind.name())
            });
        csv.push_str(&format!("{r},{},{score},{kind}\n", cells.join(",")));
    }
    write(&a.out, "cross-task.csv", &csv)?;
    let doc = serde_json::json!({
        "model": loaded.source.display().to_string(),
        "tasks": names,
        "folders": a.results,
        "rows": rows,
        "matrix": matrix,
        // Per task: the score its own run recorded (`kind`: of the circuit itself, or an
        // order study's mean circuit score).
        "own_recorded": own,
        "overlap": ov,
    });
    write(
        &a.out,
        "cross-task.json",
        &serde_json::to_string_pretty(&doc)?,
    )?;
    print!("{}", table(&rows, &names, &matrix, &own));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_ends_each_task_circuit_with_its_recorded_score() {
        let names = vec!["digits".to_string(), "months".to_string()];
        let rows: Vec<String> = [
            "digits circuit",
            "months circuit",
            "shared (3)",
            "union (9)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let matrix = vec![vec![80.0, 50.0]; 4];
        let own = vec![
            Some(RecordedScore {
                score: 80.004,
                kind: RecordedKind::Circuit,
            }),
            Some(RecordedScore {
                score: 84.5,
                kind: RecordedKind::OrdersMean,
            }),
        ];
        let t = table(&rows, &names, &matrix, &own);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with(" own (recorded)"), "{t}");
        fn cells(l: &str) -> Vec<&str> {
            l.split_whitespace().rev().take(3).collect()
        }
        assert_eq!(cells(lines[1]), ["80.00%", "50.00%", "80.00%"], "{t}");
        assert_eq!(cells(lines[2]), ["84.50%*", "50.00%", "80.00%"], "{t}");
        // The shared sub-circuit and the union have no run of their own.
        assert_eq!(cells(lines[3]), ["50.00%", "80.00%", "(3)"], "{t}");
        assert!(lines[5].starts_with("* an order study's mean"), "{t}");
        // Each column lines up with its header.
        let end = |l: &str, pat: &str| l.find(pat).unwrap() + pat.len();
        assert_eq!(end(lines[0], "months"), end(lines[1], "50.00%"));
        assert_eq!(end(lines[0], "own (recorded)"), end(lines[2], "84.50%"));
        // Without an order study there is no footnote.
        let t = table(&rows, &names, &matrix, &own[..1]);
        assert!(!t.contains('*') && t.lines().count() == 5, "{t}");
    }
}
