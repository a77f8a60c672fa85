//! Reading JSON files (model configs, tokenizer configs, shard indexes) with errors that name
//! the file and the field.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::load_error::LoadError;

/// Reads a JSON file, mapping parse errors to the field path where they occurred.
pub(crate) fn read_json<T: DeserializeOwned>(file: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return LoadError::Json {
                file: file.to_path_buf(),
                reason: inner.to_string(),
            };
        }
        // serde reports a missing field at its parent; name the field itself.
        let msg = inner.to_string();
        let field = match msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            Some(name) if path == "." => name.to_string(),
            Some(name) => format!("{path}.{name}"),
            None => path,
        };
        LoadError::Config {
            file: file.to_path_buf(),
            field,
            reason: msg,
        }
    })
}
