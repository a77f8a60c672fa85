//! Datasets of prompt pairs: JSONL with `clean`, `corrupt`, `answer`, `wrong`
//! on every line, extra fields kept. Errors name the file, the line and the field.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One clean prompt, its corrupted twin, the correct next token and an incorrect one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptPair {
    /// The prompt the model should complete with `answer`.
    pub clean: String,
    /// The corrupted twin (same token length), whose activations are the ablation source.
    pub corrupt: String,
    /// The correct next token's text, as it appears after the prompt.
    pub answer: String,
    /// An incorrect next token (the paper: the last member already in the prompt).
    pub wrong: String,
    /// Any other fields (`task`, `id`, ...), kept and written back sorted by name.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// 1-based line in the file it was read from (or position when generated); not written.
    #[serde(skip)]
    pub line: usize,
}

/// A dataset file that cannot be read, naming the file, the line and the field.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a valid prompt pair.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault, if one is.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no prompt.
    #[error("{path}: the dataset is empty (no prompt pairs)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The required fields, in the order they are written.
pub const FIELDS: [&str; 4] = ["clean", "corrupt", "answer", "wrong"];

/// Parses JSONL text (blank lines are skipped); `path` only names the source in errors.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<PromptPair>, DatasetError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |field: Option<&str>, reason: String| DatasetError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            field: field.map(str::to_string),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| err(None, format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(mut obj) = v else {
            return Err(err(None, "expected a JSON object".into()));
        };
        let mut take = |name: &str| -> Result<String, DatasetError> {
            match obj.remove(name) {
                None => Err(err(Some(name), format!("missing field `{name}`"))),
                Some(serde_json::Value::String(s)) if s.is_empty() => {
                    Err(err(Some(name), format!("field `{name}` is empty")))
                }
                Some(serde_json::Value::String(s)) => Ok(s),
                Some(other) => Err(err(
                    Some(name),
                    format!("field `{name}` must be a string, found {other}"),
                )),
            }
        };
        if out.len() == crate::limits::MAX_PROMPTS {
            return Err(err(
                None,
                format!(
                    "more than {} prompt pairs, the cap of one dataset",
                    crate::limits::MAX_PROMPTS
                ),
            ));
        }
        let clean = take("clean")?;
        let corrupt = take("corrupt")?;
        let answer = take("answer")?;
        let wrong = take("wrong")?;
        out.push(PromptPair {
            clean,
            corrupt,
            answer,
            wrong,
            extra: obj.into_iter().collect(),
            line: i + 1,
        });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads a JSONL dataset file.
pub fn read_jsonl(path: &Path) -> Result<Vec<PromptPair>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_jsonl(&text, path)
}

/// The JSONL text of a dataset: one object a line, fields in a fixed order, so the same
/// dataset always gives the same bytes.
pub fn to_jsonl(pairs: &[PromptPair]) -> String {
    let mut s = String::new();
    for p in pairs {
        // Serialising a struct of strings and JSON values cannot fail.
        s.push_str(&serde_json::to_string(p).expect("prompt pairs serialise"));
        s.push('\n');
    }
    s
}

/// Writes a dataset as JSONL.
pub fn write_jsonl(path: &Path, pairs: &[PromptPair]) -> Result<(), DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(to_jsonl(pairs).as_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("d.jsonl")
    }

    #[test]
    fn round_trip_keeps_extra_fields_in_a_fixed_order() {
        let text = concat!(
            r#"{"task":"numerals","clean":"1 2 3 4 ","corrupt":"7 3 9 2 ","answer":"5","wrong":"4","id":3}"#,
            "\n\n"
        );
        let pairs = parse_jsonl(text, p()).unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].extra["id"], 3);
        let out = to_jsonl(&pairs);
        assert_eq!(
            out,
            "{\"clean\":\"1 2 3 4 \",\"corrupt\":\"7 3 9 2 \",\"answer\":\"5\",\"wrong\":\"4\",\"id\":3,\"task\":\"numerals\"}\n"
        );
        assert_eq!(parse_jsonl(&out, p()).unwrap(), pairs);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let good = r#"{"clean":"a","corrupt":"b","answer":"c","wrong":"d"}"#;
        let cases = [
            (format!("{good}\n{{not json"), 2, None, "invalid JSON"),
            (format!("{good}\n[1,2]"), 2, None, "expected a JSON object"),
            (
                format!("{good}\n\n{{\"clean\":\"a\",\"corrupt\":\"b\",\"answer\":\"c\"}}"),
                3,
                Some("wrong"),
                "missing field `wrong`",
            ),
            (
                r#"{"clean":"","corrupt":"b","answer":"c","wrong":"d"}"#.to_string(),
                1,
                Some("clean"),
                "is empty",
            ),
            (
                r#"{"clean":"a","corrupt":"b","answer":5,"wrong":"d"}"#.to_string(),
                1,
                Some("answer"),
                "must be a string",
            ),
            (
                format!("{good}\n").repeat(crate::limits::MAX_PROMPTS + 1),
                crate::limits::MAX_PROMPTS + 1,
                None,
                "more than 100000 prompt pairs",
            ),
        ];
        for (text, line_no, field_name, msg) in cases {
            let e = parse_jsonl(&text, p()).unwrap_err();
            match &e {
                DatasetError::Line { line, field, .. } => {
                    assert_eq!(*line, line_no, "{e}");
                    assert_eq!(field.as_deref(), field_name, "{e}");
                    let s = e.to_string();
                    assert!(
                        s.starts_with(&format!("d.jsonl:{line_no}: ")) && s.contains(msg),
                        "{s}"
                    );
                }
                other => panic!("{other}"),
            }
        }
        assert!(matches!(
            parse_jsonl("\n \n", p()),
            Err(DatasetError::Empty { .. })
        ));
    }
}
