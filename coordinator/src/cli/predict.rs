//! `circuit-sweep predict`: a prompt's tokens and the model's top next tokens.

use std::path::Path;

use anyhow::{Context, bail};
use circuit_sweep_worker::{LogitSelection, RunRequest, Start};
use clap::Args;
use serde::Serialize;

use super::resolve::ModelArgs;

/// Arguments of `predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How many next tokens to show.
    #[arg(long, env = "CIRCUIT_SWEEP_TOP", default_value_t = 10)]
    top: usize,
    /// Print JSON: `{"tokens": [...], "top": [{"token", "id", "prob", "logit"}, ...]}`.
    #[arg(long, env = "CIRCUIT_SWEEP_JSON")]
    json: bool,
    /// The prompt, exactly (a trailing space matters).
    prompt: String,
}

#[derive(Serialize)]
struct Next {
    token: String,
    id: u32,
    prob: f64,
    logit: f32,
}

#[derive(Serialize)]
struct Prediction {
    tokens: Vec<String>,
    ids: Vec<u32>,
    bos_added: bool,
    top: Vec<Next>,
}

/// Runs `predict`.
pub fn run(args: PredictArgs, models_dir: &Path) -> anyhow::Result<()> {
    if args.top == 0 {
        bail!("--top must be at least 1");
    }
    let loaded = args.model.load(models_dir)?;
    let tok = loaded.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer to encode the prompt with",
            loaded.source.display()
        )
    })?;
    let ids = tok.encode(&args.prompt)?;
    if ids.is_empty() {
        bail!("the prompt {:?} encodes to no tokens", args.prompt);
    }
    tracing::info!("{}", tok.bos_summary());
    let model = &loaded.model;
    let out = model.run(&RunRequest {
        logits: LogitSelection::Last,
        ..RunRequest::new(Start::Tokens(model.tokens(std::slice::from_ref(&ids))?))
    })?;
    let logits: Vec<f32> = out.logits.context("no logits")?.squeeze(0)?.to_vec1()?;
    let top = top_k(&logits, args.top)
        .into_iter()
        .map(|(id, prob)| Next {
            token: tok.token_text(id),
            id,
            prob,
            logit: logits[id as usize],
        })
        .collect();
    let pred = Prediction {
        tokens: ids.iter().map(|&i| tok.token_text(i)).collect(),
        ids,
        bos_added: tok.adds_bos(),
        top,
    };
    if args.json {
        println!("{}", serde_json::to_string(&pred)?);
    } else {
        print_table(&pred);
    }
    Ok(())
}

/// The `k` most likely ids with their softmax probabilities (computed in f64).
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b as usize].total_cmp(&logits[a as usize])
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter()
        .map(|i| (i, (logits[i as usize] as f64 - max).exp() / sum))
        .collect()
}

fn print_table(p: &Prediction) {
    let shown: Vec<String> = p.tokens.iter().map(|t| format!("{t:?}")).collect();
    println!("prompt tokens ({}): {}", p.tokens.len(), shown.join(" "));
    println!(
        "{:>4}  {:>7}  {:>8}  {:>9}  token",
        "rank", "id", "prob", "logit"
    );
    for (r, n) in p.top.iter().enumerate() {
        println!(
            "{:>4}  {:>7}  {:>8.4}  {:>9.3}  {:?}",
            r + 1,
            n.id,
            n.prob,
            n.logit,
            n.token
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_logit_and_normalises() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let t = top_k(&logits, 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((t[0].1 - 3f64.exp() / z).abs() < 1e-12);
        assert_eq!(top_k(&logits, 10).len(), 4);
    }
}
