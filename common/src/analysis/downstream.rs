//! Downstream tasks of the ablation study (as in the Llama-2 study): few-shot arithmetic and
//! interval prompts answered by greedy generation, scored by exact match; and the random head
//! sets that are the control.

use serde::{Deserialize, Serialize};

use crate::Component;
use crate::rng::Rng;

/// A downstream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DownTask {
    /// `a + b` with one-digit operands.
    Add1,
    /// `a + b` with two-digit operands.
    Add2,
    /// `a - b` with one-digit operands, `a >= b`.
    Sub1,
    /// `a - b` with two-digit operands, `a >= b`.
    Sub2,
    /// Four members of an arithmetic sequence with this step; the answer is the fifth.
    Interval(u32),
}

impl std::str::FromStr for DownTask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "add1" => DownTask::Add1,
            "add2" => DownTask::Add2,
            "sub1" => DownTask::Sub1,
            "sub2" => DownTask::Sub2,
            _ => match s
                .strip_prefix("interval")
                .and_then(|k| k.parse::<u32>().ok())
            {
                Some(k) if (1..=100).contains(&k) => DownTask::Interval(k),
                _ => {
                    return Err(format!(
                        "unknown downstream task `{s}` (tasks: add1, add2, sub1, sub2, intervalK with K in 1..=100)"
                    ));
                }
            },
        })
    }
}

impl TryFrom<String> for DownTask {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DownTask> for String {
    fn from(t: DownTask) -> String {
        t.to_string()
    }
}

impl std::fmt::Display for DownTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownTask::Add1 => f.write_str("add1"),
            DownTask::Add2 => f.write_str("add2"),
            DownTask::Sub1 => f.write_str("sub1"),
            DownTask::Sub2 => f.write_str("sub2"),
            DownTask::Interval(k) => write!(f, "interval{k}"),
        }
    }
}

/// The default tasks of the study: arithmetic and intervals k = 1, 2, 3, 10.
pub fn default_tasks() -> Vec<DownTask> {
    vec![
        DownTask::Add1,
        DownTask::Add2,
        DownTask::Sub1,
        DownTask::Sub2,
        DownTask::Interval(1),
        DownTask::Interval(2),
        DownTask::Interval(3),
        DownTask::Interval(10),
    ]
}

/// One generated prompt and its expected answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownPrompt {
    /// The task.
    pub task: DownTask,
    /// The prompt text (ends with a space, so the answer's digits come next).
    pub text: String,
    /// The expected answer.
    pub answer: String,
}

impl DownTask {
    /// `n` prompts, each with `shots` solved examples before the question (arithmetic), drawn
    /// from the seed; the same seed gives the same prompts.
    pub fn prompts(self, n: usize, shots: usize, seed: u64) -> Vec<DownPrompt> {
        let mut rng = Rng::derive(seed, &format!("downstream-{self}"));
        let mut out = vec![];
        for _ in 0..n {
            let (text, answer) = match self {
                DownTask::Interval(k) => {
                    let k = k as usize;
                    let start = rng.range(1, 20);
                    let members: Vec<String> =
                        (0..4).map(|i| (start + i * k).to_string()).collect();
                    (
                        format!("{} ", members.join(" ")),
                        (start + 4 * k).to_string(),
                    )
                }
                _ => {
                    let mut text = String::new();
                    let mut answer = String::new();
                    for s in 0..=shots {
                        let (a, b, c, op) = self.operands(&mut rng);
                        if s == shots {
                            text.push_str(&format!("{a} {op} {b} = "));
                            answer = c.to_string();
                        } else {
                            text.push_str(&format!("{a} {op} {b} = {c}\n"));
                        }
                    }
                    (text, answer)
                }
            };
            out.push(DownPrompt {
                task: self,
                text,
                answer,
            });
        }
        out
    }

    fn operands(self, rng: &mut Rng) -> (usize, usize, usize, char) {
        let (lo, hi) = match self {
            DownTask::Add1 | DownTask::Sub1 => (1, 9),
            _ => (10, 99),
        };
        let a = rng.range(lo, hi);
        let b = rng.range(lo, hi);
        match self {
            DownTask::Sub1 | DownTask::Sub2 => (a.max(b), a.min(b), a.max(b) - a.min(b), '-'),
            _ => (a, b, a + b, '+'),
        }
    }

    /// Tokens to generate: the answer's digits with room for a leading space token.
    pub fn max_new_tokens(self, prompts: &[DownPrompt]) -> usize {
        prompts.iter().map(|p| p.answer.len()).max().unwrap_or(1) + 2
    }
}

/// Exact match: the generated text, after leading spaces, starts with the answer and the
/// number does not go on (`"7\n"` and `"7 "` match 7; `"72"` does not).
pub fn exact_match(generated: &str, answer: &str) -> bool {
    let g = generated.trim_start_matches(' ');
    match g.strip_prefix(answer) {
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit()),
        None => false,
    }
}

/// `k` random sets of `size` heads, drawn without replacement within a set from every head of
/// an `n_layers` x `n_heads` model, set `i` from its own stream of `seed`: the same seed gives
/// the same sets whatever subset of them a shard draws.
pub fn random_head_sets(
    n_layers: usize,
    n_heads: usize,
    size: usize,
    seed: u64,
    sets: std::ops::Range<usize>,
) -> Vec<Vec<Component>> {
    let all: Vec<Component> = (0..n_layers)
        .flat_map(|layer| (0..n_heads).map(move |head| Component::Head { layer, head }))
        .collect();
    let size = size.min(all.len());
    sets.map(|i| {
        let mut rng = Rng::derive(seed, &format!("head-set-{i}"));
        let mut pool = all.clone();
        let mut set = vec![];
        for _ in 0..size {
            let j = rng.below(pool.len());
            set.push(pool.swap_remove(j));
        }
        set.sort();
        set
    })
    .collect()
}

/// The sets of a downstream study, in shard order: the full model (nothing ablated), the
/// circuit's heads when a circuit is given, then `[sweep] random_sets` random head sets (default 20) of
/// `set_size` heads (default: the circuit's heads, else 10) drawn from `[sweep] seed`.
pub fn study_sets(
    sweep: &crate::spec::SweepKindSpec,
    circuit: Option<&[Component]>,
    n_layers: usize,
    n_heads: usize,
) -> Vec<(String, Vec<Component>)> {
    let mut sets = vec![("full model".to_string(), vec![])];
    // The study ablates heads: a circuit's MLPs are left in place, as random sets are heads.
    let circuit_heads: Option<Vec<Component>> = circuit.map(|c| {
        c.iter()
            .filter(|x| matches!(x, Component::Head { .. }))
            .copied()
            .collect()
    });
    if let Some(c) = &circuit_heads {
        sets.push(("circuit heads".to_string(), c.clone()));
    }
    let size = sweep
        .set_size
        .or(circuit_heads.map(|c| c.len()).filter(|&n| n > 0))
        .unwrap_or(10);
    let k = sweep.random_sets.unwrap_or(20);
    for (i, s) in random_head_sets(n_layers, n_heads, size, sweep.seed, 0..k)
        .into_iter()
        .enumerate()
    {
        sets.push((format!("random {i}"), s));
    }
    sets
}

/// What a downstream study's mean ablation averages: generated positions have no per-position
/// counterpart, so one mean per component serves every position.
pub const MEAN_OVER: &str =
    "every position of every prompt of every task, unablated: the same value at every position";

/// The ablation a downstream study's results record: `{"ablation": "zero"}`, or
/// `{"ablation": "mean", "mean_over": MEAN_OVER}`.
pub fn ablation_record(kind: crate::spec::AblationKind) -> serde_json::Value {
    let mut v = serde_json::json!({ "ablation": kind });
    if kind == crate::spec::AblationKind::Mean {
        v["mean_over"] = serde_json::json!(MEAN_OVER);
    }
    v
}

/// Mean, minimum, maximum and standard deviation of accuracies (in %).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Population standard deviation.
    pub std: f64,
}

impl Spread {
    /// The spread of `xs` (`None` when empty).
    pub fn of(xs: &[f64]) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Some(Spread {
            mean,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            std: var.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablation_record_names_the_kind_and_what_a_mean_is_over() {
        use crate::spec::AblationKind;
        assert_eq!(
            ablation_record(AblationKind::Zero),
            serde_json::json!({"ablation": "zero"})
        );
        let m = ablation_record(AblationKind::Mean);
        assert_eq!(m["ablation"], "mean");
        assert!(
            m["mean_over"]
                .as_str()
                .unwrap()
                .contains("every position of every prompt")
        );
    }

    #[test]
    fn task_names_round_trip_and_bad_names_say_what_exists() {
        for t in default_tasks() {
            assert_eq!(t.to_string().parse::<DownTask>().unwrap(), t);
        }
        assert!("mul1".parse::<DownTask>().unwrap_err().contains("add1"));
        assert!("interval0".parse::<DownTask>().is_err());
    }

    #[test]
    fn prompts_are_seeded_and_their_answers_are_right() {
        let a = DownTask::Add1.prompts(20, 3, 7);
        assert_eq!(a, DownTask::Add1.prompts(20, 3, 7));
        assert_ne!(a, DownTask::Add1.prompts(20, 3, 8));
        for p in a.iter().chain(&DownTask::Sub2.prompts(20, 2, 1)) {
            let lines: Vec<&str> = p.text.lines().collect();
            let q = lines.last().unwrap();
            let parts: Vec<&str> = q.split(' ').collect();
            let (x, op, y): (i64, &str, i64) = (
                parts[0].parse().unwrap(),
                parts[1],
                parts[2].parse().unwrap(),
            );
            let want = if op == "+" { x + y } else { x - y };
            assert_eq!(p.answer, want.to_string());
            assert!(want >= 0);
            assert!(p.text.ends_with("= "));
        }
        let iv = DownTask::Interval(10).prompts(5, 0, 0);
        for p in iv {
            let m: Vec<i64> = p
                .text
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!(m[1] - m[0], 10);
            assert_eq!(p.answer, (m[3] + 10).to_string());
        }
    }

    #[test]
    fn exact_match_needs_the_whole_number() {
        assert!(exact_match("7\n3 +", "7"));
        assert!(exact_match(" 12 ", "12"));
        assert!(!exact_match("72", "7"));
        assert!(!exact_match("1", "12"));
        assert!(!exact_match("\n7", "7"));
    }

    #[test]
    fn random_sets_are_seeded_distinct_and_shard_independent() {
        let all = random_head_sets(12, 12, 10, 3, 0..20);
        assert_eq!(all.len(), 20);
        for s in &all {
            let mut d = s.clone();
            d.dedup();
            assert_eq!(d.len(), 10);
        }
        assert_ne!(all[0], all[1]);
        assert_eq!(random_head_sets(12, 12, 10, 3, 5..9), all[5..9].to_vec());
        assert_ne!(random_head_sets(12, 12, 10, 4, 0..1)[0], all[0]);
    }

    #[test]
    fn study_sets_are_full_model_circuit_then_random_sets_of_the_circuits_size() {
        let circuit: Vec<Component> = ["h1.2", "h3.0", "m2"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let sweep = crate::spec::SweepKindSpec {
            random_sets: Some(5),
            seed: 9,
            ..Default::default()
        };
        let sets = study_sets(&sweep, Some(&circuit), 4, 4);
        assert_eq!(sets.len(), 7);
        assert_eq!(sets[0], ("full model".to_string(), vec![]));
        assert_eq!(sets[1].1, circuit[..2].to_vec(), "the circuit's heads");
        assert!(sets[2..].iter().all(|(_, s)| s.len() == 2));
        assert_eq!(sets[2].1, random_head_sets(4, 4, 2, 9, 0..1)[0]);
        let plain = study_sets(&crate::spec::SweepKindSpec::default(), None, 12, 12);
        assert_eq!(plain.len(), 21);
        assert!(plain[1..].iter().all(|(_, s)| s.len() == 10));
    }

    #[test]
    fn spread_of_accuracies() {
        let s = Spread::of(&[0.0, 50.0, 100.0]).unwrap();
        assert_eq!((s.mean, s.min, s.max), (50.0, 0.0, 100.0));
        assert!((s.std - 40.824829).abs() < 1e-5);
        assert!(Spread::of(&[]).is_none());
    }
}
