//! Downstream tasks (as in the Llama-2 ablation study): few-shot arithmetic and interval
//! prompts answered by greedy generation, scored by exact match.

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
