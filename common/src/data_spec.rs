//! The `[data]` part of a sweep spec: a JSONL file or a generated task, checked with the prompt
//! checker before any sweep starts, so a sweep never runs on a dataset with a pitfall.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check;
use crate::dataset::{self, DatasetError, PromptPair};
use crate::tasks::{self, Corruption, GenSpec, Task, TaskError, Tokenize};

/// `[data]`: either `file = "prompts.jsonl"` or `task = "months"` with `n`, `seed`,
/// `corruption`, `length`, `step`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A JSONL dataset (relative paths are relative to the spec file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A task to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Prompt pairs to generate (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Seed of the generator (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Corruption (default `rand_all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corruption: Option<String>,
    /// Members before the answer (default 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Step of `intervals` (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

/// Why the data of a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The `[data]` table is inconsistent; names the field.
    #[error("[data] {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The task cannot be generated.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The checker found errors (each line says where).
    #[error("the dataset fails the prompt check:\n{0}")]
    Check(String),
}

impl DataSpec {
    /// Reads or generates the prompt pairs and runs the checker's tokenizer rules on them.
    pub fn load(&self, tok: &dyn Tokenize, spec_dir: &Path) -> Result<Vec<PromptPair>, DataError> {
        let field = |field: &'static str, reason: &str| DataError::Field {
            field,
            reason: reason.to_string(),
        };
        let (pairs, source) = match (&self.file, &self.task) {
            (Some(_), Some(_)) => {
                return Err(field("file", "give either `file` or `task`, not both"));
            }
            (None, None) => {
                return Err(field(
                    "task",
                    "give `file = \"prompts.jsonl\"` or `task = \"months\"`",
                ));
            }
            (Some(f), None) => {
                for (name, set) in [
                    ("n", self.n.is_some()),
                    ("seed", self.seed.is_some()),
                    ("corruption", self.corruption.is_some()),
                    ("length", self.length.is_some()),
                    ("step", self.step.is_some()),
                ] {
                    if set {
                        return Err(DataError::Field {
                            field: name,
                            reason: "only applies to a generated `task`, not to a `file`".into(),
                        });
                    }
                }
                let path = if f.is_absolute() {
                    f.clone()
                } else {
                    spec_dir.join(f)
                };
                (dataset::read_jsonl(&path)?, path.display().to_string())
            }
            (None, Some(t)) => {
                let task: Task = t.parse()?;
                let mut g = GenSpec::new(task, self.n.unwrap_or(64), self.seed.unwrap_or(0));
                if let Some(c) = &self.corruption {
                    g.corruption = c.parse::<Corruption>().map_err(|e| DataError::Field {
                        field: "corruption",
                        reason: e,
                    })?;
                }
                g.length = self.length.unwrap_or(g.length);
                g.step = self.step.unwrap_or(g.step);
                (tasks::generate(&g, tok)?, format!("task {t}"))
            }
        };
        let checks = check::check_tokens(&pairs, tok).map_err(|e| DataError::Field {
            field: "file",
            reason: e,
        })?;
        let source = &source;
        let errors: Vec<String> = checks
            .iter()
            .flat_map(|c| {
                c.findings
                    .iter()
                    .filter(|f| f.severity == check::Severity::Error)
                    .map(move |f| format!("{source}:{}: {}", c.line, f.message))
            })
            .collect();
        if !errors.is_empty() {
            return Err(DataError::Check(errors.join("\n")));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tokenizer: one token per character.
    struct Chars;

    impl Tokenize for Chars {
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.chars().map(|c| c as u32).collect())
        }
        fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
            self.encode(text)
        }
        fn token_text(&self, id: u32) -> String {
            char::from_u32(id).map(String::from).unwrap_or_default()
        }
    }

    #[test]
    fn file_or_task_not_both_nor_neither() {
        let both = DataSpec {
            file: Some("a.jsonl".into()),
            task: Some("months".into()),
            ..Default::default()
        };
        assert!(
            both.load(&Chars, Path::new("."))
                .unwrap_err()
                .to_string()
                .contains("[data] file")
        );
        let neither = DataSpec::default();
        assert!(
            neither
                .load(&Chars, Path::new("."))
                .unwrap_err()
                .to_string()
                .contains("[data] task")
        );
        let n_with_file = DataSpec {
            file: Some("a.jsonl".into()),
            n: Some(3),
            ..Default::default()
        };
        assert!(
            n_with_file
                .load(&Chars, Path::new("."))
                .unwrap_err()
                .to_string()
                .contains("[data] n")
        );
    }

    #[test]
    fn a_file_with_a_pitfall_is_refused_before_any_sweep() {
        let dir = std::env::temp_dir().join(format!("cs-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.jsonl"),
            "{\"clean\":\"abcd\",\"corrupt\":\"xyzd\",\"answer\":\"e\",\"wrong\":\"d\"}\n\
             {\"clean\":\"bcde\",\"corrupt\":\"qrst\",\"answer\":\"fg\",\"wrong\":\"e\"}\n",
        )
        .unwrap();
        let spec = DataSpec {
            file: Some("p.jsonl".into()),
            ..Default::default()
        };
        let err = spec.load(&Chars, &dir).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:1: corrupt keeps"), "{err}");
        assert!(
            err.contains("p.jsonl:2: answer \"fg\" is 2 tokens"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_task_is_generated_and_checked() {
        let spec = DataSpec {
            task: Some("letters".into()),
            n: Some(5),
            seed: Some(2),
            ..Default::default()
        };
        // With one token per character, letters work as a plain sequence.
        let pairs = spec.load(&Chars, Path::new(".")).unwrap();
        assert_eq!(pairs.len(), 5);
        let bad = DataSpec {
            task: Some("letters".into()),
            corruption: Some("shuffle".into()),
            ..Default::default()
        };
        assert!(
            bad.load(&Chars, Path::new("."))
                .unwrap_err()
                .to_string()
                .contains("[data] corruption")
        );
    }
}
