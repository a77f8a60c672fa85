//! Where a worker may read models. A worker serving a cluster reads only under its models
//! folder and the roots it was given: a client's spec must not make it open any path of its
//! disk. `run` on one's own machine reads the spec's path wherever it is.

use std::path::{Component, Path, PathBuf};

/// The folders a worker reads models from.
#[derive(Debug, Clone, Default)]
pub enum ModelAccess {
    /// Any path (the in-process cluster of `run`: the spec is the user's own).
    #[default]
    Anywhere,
    /// Only under these folders (each as given and as resolved, for roots that are links);
    /// relative model paths are taken from the first, the models folder.
    Under(Vec<PathBuf>),
}

impl ModelAccess {
    /// The models folder and `roots`, made absolute.
    pub fn under(models_dir: &Path, roots: &[PathBuf]) -> Self {
        let mut all = vec![];
        for r in std::iter::once(models_dir).chain(roots.iter().map(PathBuf::as_path)) {
            let abs = std::path::absolute(r).unwrap_or_else(|_| r.to_path_buf());
            if let Ok(real) = abs.canonicalize()
                && real != abs
            {
                all.push(real);
            }
            all.push(abs);
        }
        all.dedup();
        ModelAccess::Under(all)
    }

    /// Where the spec's model path `p` points: relative paths from `base` (the spec's folder)
    /// or, for a confined worker, from its models folder. Refused, before the file is touched,
    /// when it lies outside the folders.
    pub fn resolve(&self, p: &Path, base: &Path) -> Result<PathBuf, String> {
        let roots = match self {
            ModelAccess::Anywhere => {
                return Ok(if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                });
            }
            ModelAccess::Under(roots) => roots,
        };
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            roots[0].join(p)
        };
        let inside = !path.components().any(|c| c == Component::ParentDir)
            && roots.iter().any(|r| path.starts_with(r));
        if !inside {
            return Err(format!(
                "[model] path: `{}` is outside the folders this worker reads models from ({}): give a path under them (worker --models-dir, --model-root)",
                p.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_worker_reads_only_under_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let shared = dir.path().join("shared");
        let a = ModelAccess::under(&models, std::slice::from_ref(&shared));
        let base = Path::new("/job");
        assert_eq!(
            a.resolve(Path::new("m.gguf"), base).unwrap(),
            models.join("m.gguf")
        );
        assert_eq!(
            a.resolve(&shared.join("x/y"), base).unwrap(),
            shared.join("x/y")
        );
        for outside in [
            PathBuf::from("/etc/passwd"),
            models.join("../secret"),
            PathBuf::from("../../etc/passwd"),
            dir.path().join("models-other/m.gguf"),
        ] {
            let e = a.resolve(&outside, base).unwrap_err();
            assert!(e.starts_with("[model] path: `"), "{e}");
            assert!(e.contains("is outside the folders"), "{e}");
        }
        assert_eq!(
            ModelAccess::Anywhere
                .resolve(Path::new("m.gguf"), base)
                .unwrap(),
            base.join("m.gguf")
        );
    }
}
