//! `analyze logit-lens`: the top token after each layer at the last position, and counts over
//! a dataset of where the answer first becomes (and stays) top-1.

use std::path::{Path, PathBuf};

use circuit_sweep_common::analysis::lens::counts;
use circuit_sweep_common::results::bars_svg;
use circuit_sweep_worker::PromptSet;
use circuit_sweep_worker::analysis::lens::logit_lens;
use clap::Args;

use super::{DataArgs, ModelArgs, load, model_name, write};

/// Arguments of `analyze logit-lens`.
#[derive(Debug, Args)]
pub struct LensArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Output folder.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT", default_value = "analysis/logit-lens")]
    out: PathBuf,
}

/// Runs `analyze logit-lens`.
pub fn run(a: LensArgs, models_dir: &Path) -> anyhow::Result<()> {
    let loaded = load(&a.model, models_dir)?;
    let tok = loaded.tokenizer.as_ref().expect("checked by load");
    let pairs = a.data.load(tok)?;
    let set = PromptSet::from_pairs(&pairs, tok).map_err(anyhow::Error::msg)?;
    let rows = logit_lens(&loaded.model, &set.clean, &set.answer)?;
    let n_layers = loaded.model.info().n_layers;
    let hits: Vec<Vec<bool>> = rows
        .iter()
        .map(|r| r.rank.iter().map(|&k| k == 0).collect())
        .collect();
    let c = counts(&hits, n_layers);
    let name = model_name(&loaded.source);
    let what = a
        .data
        .task
        .clone()
        .or_else(|| a.data.data.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let cats: Vec<String> = (0..n_layers).map(|l| l.to_string()).collect();
    let svg = bars_svg(
        &cats,
        &[
            (
                "first top-1 after layer".into(),
                c.first.iter().map(|&x| x as f64).collect(),
            ),
            (
                "top-1 from this layer on".into(),
                c.stays.iter().map(|&x| x as f64).collect(),
            ),
        ],
        &format!("{name}: logit lens on {what} ({} prompts)", c.prompts),
        &format!(
            "where the answer becomes the top-1 token at the last position; never: {}",
            c.never
        ),
    );
    write(&a.out, "logit-lens.svg", &svg)?;
    let per_prompt: Vec<serde_json::Value> = rows
        .iter()
        .zip(&pairs)
        .map(|(r, p)| {
            serde_json::json!({
                "prompt": p.clean, "answer": p.answer,
                "top": r.top.iter().map(|&t| tok.token_text(t)).collect::<Vec<_>>(),
                "rank": r.rank,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "model": loaded.source.display().to_string(),
        "data": what, "counts": c, "prompts": per_prompt,
    });
    write(
        &a.out,
        "logit-lens.json",
        &serde_json::to_string_pretty(&doc)?,
    )?;
    println!(
        "{:>5} {:>6} {:>6} {:>6}  top token of prompt 0",
        "layer", "first", "stays", "top-1"
    );
    for l in 0..n_layers {
        println!(
            "{l:>5} {:>6} {:>6} {:>6}  {:?}",
            c.first[l],
            c.stays[l],
            c.top1[l],
            tok.token_text(rows[0].top[l])
        );
    }
    println!(
        "never top-1: {} of {}; wrote {}",
        c.never,
        c.prompts,
        a.out.display()
    );
    Ok(())
}
