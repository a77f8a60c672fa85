//! `circuit-sweep prompts gen|check`: tokenizer-aware datasets and the pitfall checker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use circuit_sweep_common::check::{self, ModelView, PromptCheck, Severity};
use circuit_sweep_common::dataset::{self, PromptPair};
use circuit_sweep_common::metric;
use circuit_sweep_common::tasks::{self, Corruption, GenSpec, Task};
use circuit_sweep_worker::{PromptTokenizer, load_tokenizer};
use clap::Subcommand;

use super::resolve::{ModelArgs, ModelPath};

/// Dataset commands.
#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Generate prompt pairs of a task, valid for a model's tokenizer (`--model` may be a
    /// folder with only a tokenizer).
    Gen {
        /// The task: numerals, number_words, months, days, letters, digits, intervals, fibonacci,
        /// greater_than; `_desc` for decreasing (`months_desc`).
        task: Task,
        #[command(flatten)]
        model: ModelPath,
        /// Number of prompt pairs.
        #[arg(long, env = "CIRCUIT_SWEEP_N", default_value_t = 64)]
        n: usize,
        /// Seed of every random choice.
        #[arg(long, env = "CIRCUIT_SWEEP_SEED", default_value_t = 0)]
        seed: u64,
        /// How corrupted twins are made.
        #[arg(long, env = "CIRCUIT_SWEEP_CORRUPTION", default_value = "rand_all")]
        corruption: Corruption,
        /// Members shown before the answer.
        #[arg(long, env = "CIRCUIT_SWEEP_LENGTH", default_value_t = 4)]
        length: usize,
        /// Step of `intervals`.
        #[arg(long, env = "CIRCUIT_SWEEP_STEP", default_value_t = 2)]
        step: usize,
        /// Output file (JSONL); standard output if omitted.
        #[arg(short, long, env = "CIRCUIT_SWEEP_OUT")]
        out: Option<PathBuf>,
    },
    /// Check a dataset for every tokenization pitfall; with a model, also what it predicts (a
    /// `--model` folder with only a tokenizer checks tokens only).
    Check {
        /// The JSONL dataset.
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Check tokenization only; run no forward pass.
        #[arg(long, env = "CIRCUIT_SWEEP_TOKENS_ONLY")]
        tokens_only: bool,
        /// Prompts per forward pass.
        #[arg(long, env = "CIRCUIT_SWEEP_BATCH", default_value_t = 32)]
        batch: usize,
        /// Write only the prompts the model gets right (top-1 is the answer and
        /// p(answer) > 2 p(wrong)) to `--out`.
        #[arg(long, env = "CIRCUIT_SWEEP_FILTER", requires = "out")]
        filter: bool,
        /// Where `--filter` writes.
        #[arg(short, long, env = "CIRCUIT_SWEEP_OUT")]
        out: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, env = "CIRCUIT_SWEEP_JSON")]
        json: bool,
    },
}

/// Runs a prompts command.
pub fn run(cmd: PromptsCommand, models_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        PromptsCommand::Gen {
            task,
            model,
            n,
            seed,
            corruption,
            length,
            step,
            out,
        } => {
            let path = model.resolve(models_dir)?;
            let tok = load_tokenizer(&path)
                .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
            let spec = GenSpec {
                task,
                n,
                seed,
                corruption,
                length,
                step,
            };
            let pairs = tasks::generate(&spec, &tok)?;
            let len = tok.encode(&pairs[0].clean)?.len();
            match &out {
                Some(p) => dataset::write_jsonl(p, &pairs)?,
                None => print!("{}", dataset::to_jsonl(&pairs)),
            }
            eprintln!(
                "{} prompt pairs of `{task}` ({corruption}), {len} tokens each; {}; e.g. {:?} -> {:?} (wrong {:?}){}",
                pairs.len(),
                tok.bos_summary(),
                pairs[0].clean,
                pairs[0].answer,
                pairs[0].wrong,
                out.map(|p| format!("; written to {}", p.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        PromptsCommand::Check {
            file,
            model,
            tokens_only,
            batch,
            filter,
            out,
            json,
        } => {
            let pairs = dataset::read_jsonl(&file)?;
            let path = model.path.resolve(models_dir)?;
            let weights = !tokens_only && (path.is_file() || path.join("config.json").exists());
            let (checks, bos) = if weights {
                let loaded = model.load(models_dir)?;
                let tok = loaded
                    .tokenizer
                    .as_ref()
                    .with_context(|| format!("{} has no tokenizer", path.display()))?;
                let mut checks = check::check_tokens(&pairs, tok).map_err(anyhow::Error::msg)?;
                check::check_context(&mut checks, loaded.model.info().context_length);
                // A prompt beyond the context has no prediction to look at.
                let beyond = |c: &PromptCheck| {
                    c.findings
                        .iter()
                        .any(|f| f.pitfall == check::Pitfall::LongerThanContext)
                };
                if !checks.iter().any(beyond) {
                    add_model_views(&loaded.model, tok, &pairs, &mut checks, batch.max(1))?;
                }
                (checks, tok.bos_summary())
            } else {
                let tok = load_tokenizer(&path)?;
                let checks = check::check_tokens(&pairs, &tok).map_err(anyhow::Error::msg)?;
                (
                    checks,
                    format!("{} (tokens only: no forward pass)", tok.bos_summary()),
                )
            };
            let summary = check::summarize(&checks);
            if json {
                let v = serde_json::json!({"file": file.display().to_string(), "bos": bos, "prompts": checks, "summary": summary});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_report(&file, &bos, &pairs, &checks, &summary);
            }
            if filter {
                let out = out.expect("clap requires --out with --filter");
                if !weights {
                    bail!(
                        "--filter needs a model to run (not a tokenizer-only folder or --tokens-only)"
                    );
                }
                let kept: Vec<PromptPair> = pairs
                    .iter()
                    .zip(&checks)
                    .filter(|(_, c)| c.model_is_right() && !c.has_error())
                    .map(|(p, _)| p.clone())
                    .collect();
                dataset::write_jsonl(&out, &kept)?;
                eprintln!(
                    "kept {} of {} prompts (dropped {}) in {}",
                    kept.len(),
                    pairs.len(),
                    pairs.len() - kept.len(),
                    out.display()
                );
            }
            if summary.errors > 0 {
                bail!(
                    "{}: {} error(s) in {} prompt pairs",
                    file.display(),
                    summary.errors,
                    summary.prompts
                );
            }
            Ok(())
        }
    }
}

/// Runs clean and corrupt prompts (grouped by token length, `batch` at a time) and records what
/// the model predicts for each pair.
fn add_model_views(
    model: &circuit_sweep_worker::HookedModel,
    tok: &PromptTokenizer,
    pairs: &[PromptPair],
    checks: &mut [PromptCheck],
    batch: usize,
) -> anyhow::Result<()> {
    let clean: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| tok.encode(&p.clean))
        .collect::<Result<_, _>>()?;
    let corrupt: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| tok.encode(&p.corrupt))
        .collect::<Result<_, _>>()?;
    let clean_logits = model.last_logits(&clean, batch)?;
    let corrupt_logits = model.last_logits(&corrupt, batch)?;
    for (i, c) in checks.iter_mut().enumerate() {
        let (Some(a), Some(w)) = (c.answer_id(), c.wrong_id()) else {
            continue;
        };
        let l = &clean_logits[i];
        let probs: Vec<f64> = metric::log_softmax(l).into_iter().map(f64::exp).collect();
        let top1 = argmax(l);
        let k = &corrupt_logits[i];
        c.add_model_view(ModelView {
            top1,
            top1_text: tok.token_text(top1),
            p_answer: probs[a as usize],
            p_wrong: probs[w as usize],
            logit_diff: (l[a as usize] - l[w as usize]) as f64,
            corrupt_logit_diff: (k[a as usize] - k[w as usize]) as f64,
            corrupt_top1: argmax(k),
        });
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

fn print_report(
    file: &Path,
    bos: &str,
    pairs: &[PromptPair],
    checks: &[PromptCheck],
    s: &check::Summary,
) {
    println!("{}: {} prompt pairs; {bos}", file.display(), pairs.len());
    let with_model = checks.iter().any(|c| c.model.is_some());
    if with_model {
        println!(
            "{:>5}  {:>7}  {:>8}  {:>8}  {:<12}  {:>7}  {:>8}  {:>9}  answer / wrong",
            "line", "tokens", "answer", "wrong", "top-1", "p(ans)", "p(wrong)", "logitdiff"
        );
    } else {
        println!(
            "{:>5}  {:>7}  {:>8}  {:>8}  answer / wrong",
            "line", "tokens", "answer", "wrong"
        );
    }
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join("+");
    for (p, c) in pairs.iter().zip(checks) {
        let tokens = format!("{}/{}", c.clean_tokens, c.corrupt_tokens);
        let head = format!(
            "{:>5}  {:>7}  {:>8}  {:>8}",
            c.line,
            tokens,
            ids(&c.answer_ids),
            ids(&c.wrong_ids)
        );
        match &c.model {
            Some(m) => println!(
                "{head}  {:<12}  {:>7.3}  {:>8.3}  {:>9.3}  {:?} / {:?}",
                format!("{:?}", m.top1_text),
                m.p_answer,
                m.p_wrong,
                m.logit_diff,
                p.answer,
                p.wrong
            ),
            None => println!("{head}  {:?} / {:?}", p.answer, p.wrong),
        }
    }
    for sev in [Severity::Error, Severity::Warning] {
        for c in checks {
            for f in c.findings.iter().filter(|f| f.severity == sev) {
                let label = if sev == Severity::Error {
                    "error"
                } else {
                    "warning"
                };
                println!("{label}: {}:{}: {}", file.display(), c.line, f.message);
            }
        }
    }
    let mut line = format!(
        "{} prompts, {} errors, {} warnings",
        s.prompts, s.errors, s.warnings
    );
    if let (Some(right), Some(ld), Some(cld)) =
        (s.model_right, s.mean_logit_diff, s.mean_corrupt_logit_diff)
    {
        line.push_str(&format!(
            "; the model is right on {right}/{}; mean logit diff {ld:.3} (corrupt {cld:.3})",
            s.prompts
        ));
    }
    println!("{line}");
}
