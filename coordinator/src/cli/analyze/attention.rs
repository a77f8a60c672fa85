//! `analyze attention`: patterns of chosen heads on prompts as heatmaps with token labels, and
//! the mean weight of the last position at each offset back from it (`n-1`, `n-3`, ...).

use std::path::{Path, PathBuf};

use circuit_sweep_common::Component;
use circuit_sweep_common::results::{Grid, grid_svg};
use circuit_sweep_worker::analysis::attention::{Pattern, last_position_offsets, patterns};
use clap::Args;

use super::{DataArgs, ModelArgs, load, model_name, write};

/// Arguments of `analyze attention`.
#[derive(Debug, Args)]
pub struct AttentionArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Heads to show (`h9.1,h4.4`).
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_HEADS",
        value_delimiter = ',',
        required = true
    )]
    heads: Vec<Component>,
    /// A prompt to show (repeatable); otherwise the clean prompts of --data / --task.
    #[arg(long)]
    prompt: Vec<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Heatmaps drawn for the first this many prompts (the offset summary uses all).
    #[arg(long, env = "CIRCUIT_SWEEP_SHOW", default_value_t = 1)]
    show: usize,
    /// Output folder.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT", default_value = "analysis/attention")]
    out: PathBuf,
}

/// Runs `analyze attention`.
pub fn run(a: AttentionArgs, models_dir: &Path) -> anyhow::Result<()> {
    let heads: Vec<(usize, usize)> = a
        .heads
        .iter()
        .map(|c| match *c {
            Component::Head { layer, head } => Ok((layer, head)),
            Component::Mlp { .. } => Err(anyhow::anyhow!("--heads: {c} is an MLP, not a head")),
        })
        .collect::<anyhow::Result<_>>()?;
    let loaded = load(&a.model, models_dir)?;
    let tok = loaded.tokenizer.as_ref().expect("checked by load");
    let texts: Vec<String> = if a.prompt.is_empty() {
        a.data.load(tok)?.into_iter().map(|p| p.clean).collect()
    } else {
        a.prompt.clone()
    };
    let name = model_name(&loaded.source);
    let mut all: Vec<Vec<Pattern>> = vec![];
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text)?;
        anyhow::ensure!(!ids.is_empty(), "prompt {i} {text:?} encodes to no tokens");
        let ps = patterns(&loaded.model, &ids, &heads)?;
        if i < a.show {
            let labels: Vec<String> = ids
                .iter()
                .enumerate()
                .map(|(p, &t)| format!("{p} {:?}", tok.token_text(t)))
                .collect();
            for p in &ps {
                let values: Vec<Vec<f64>> = p
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(q, r)| {
                        r.iter()
                            .enumerate()
                            .map(|(k, &w)| if k > q { f64::NAN } else { w as f64 })
                            .collect()
                    })
                    .collect();
                let svg = grid_svg(&Grid {
                    rows: &labels,
                    cols: &labels,
                    values: &values,
                    lo: 0.0,
                    hi: 1.0,
                    title: &format!("{name}: attention of h{}.{} on prompt {i}", p.layer, p.head),
                    sub: "rows: query positions; columns: key positions",
                    decimals: None,
                    cell: 16.0,
                    vertical_cols: true,
                });
                write(
                    &a.out,
                    &format!("h{}.{}-prompt{i}.svg", p.layer, p.head),
                    &svg,
                )?;
            }
        }
        all.push(ps);
    }
    let mut summary = serde_json::Map::new();
    println!(
        "mean attention of the last position at offset n-k (n-0: itself), over {} prompts",
        texts.len()
    );
    print!("{:<8}", "head");
    for k in 0..8 {
        print!(" {:>6}", format!("n-{k}"));
    }
    println!("  strongest offsets");
    for (j, &(l, h)) in heads.iter().enumerate() {
        let ps: Vec<&Pattern> = all.iter().map(|v| &v[j]).collect();
        let off = last_position_offsets(&ps);
        print!("{:<8}", format!("h{l}.{h}"));
        for k in 0..8 {
            print!(" {:>6.3}", off.get(k).copied().unwrap_or(0.0));
        }
        let mut order: Vec<usize> = (0..off.len()).collect();
        order.sort_by(|&x, &y| off[y].total_cmp(&off[x]));
        let top: Vec<String> = order
            .iter()
            .take(3)
            .map(|&k| format!("n-{k} {:.2}", off[k]))
            .collect();
        println!("  {}", top.join(", "));
        summary.insert(
            format!("h{l}.{h}"),
            serde_json::json!({ "last_position_offsets": off }),
        );
    }
    let doc = serde_json::json!({
        "model": loaded.source.display().to_string(),
        "prompts": texts,
        "heads": summary,
        "patterns": all.iter().take(a.show).collect::<Vec<_>>(),
    });
    write(
        &a.out,
        "attention.json",
        &serde_json::to_string_pretty(&doc)?,
    )?;
    println!("wrote {}", a.out.display());
    Ok(())
}
