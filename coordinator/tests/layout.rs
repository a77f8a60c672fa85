//! The coordinator's core (scheduler, server, store, aggregation, dashboard, client) never
//! imports the worker crate or candle: only the process composition (the in-process cluster in
//! `local.rs`) and the CLI compose both peers.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_core_never_imports_the_worker_or_candle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let composition = [src.join("cli"), src.join("local.rs"), src.join("main.rs")];
    let core: Vec<&PathBuf> = files
        .iter()
        .filter(|p| !composition.iter().any(|c| p.starts_with(c)))
        .collect();
    assert!(core.len() > 10, "{core:?}");
    for p in core {
        let text = std::fs::read_to_string(p).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("circuit_sweep_worker") && !line.contains("candle"),
                "{}:{}: the coordinator's core imports the worker: {line}",
                p.display(),
                i + 1
            );
        }
    }
}
