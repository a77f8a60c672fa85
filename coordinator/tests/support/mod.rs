//! Helpers of the coordinator's tests, which run the `circuit-sweep` binary, on top of the
//! workspace's shared test helpers.
#![allow(dead_code)]

#[path = "../../../tests/src/support.rs"]
mod shared;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use shared::*;

/// The binary, with quiet logs.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_circuit-sweep"));
    c.env("CIRCUIT_SWEEP_LOG", "warn");
    c
}

/// Fetches the default model once per test binary through the binary's own `model fetch` (so
/// these tests check that command too), and returns the models folder.
pub fn fetched() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = models_dir();
        let out = bin()
            .arg("--models-dir")
            .arg(&dir)
            .args(["model", "fetch"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "model fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.trim().ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{printed}"
        );
        dir
    })
}

/// The binary with the default model's folder set.
pub fn with_model() -> Command {
    let mut c = bin();
    c.arg("--models-dir").arg(fetched());
    c
}

/// Stdout of a successful run (panics with stderr otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A child process killed when dropped (a failing test leaves nothing running).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `c` with its log (stderr) in `log`.
pub fn spawn(mut c: Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    // Per-shard lines (leased, done) are debug; the tests read them.
    c.env("CIRCUIT_SWEEP_LOG", "info,circuit_sweep_coordinator=debug")
        .stdout(Stdio::null())
        .stderr(f);
    Proc(c.spawn().unwrap())
}

/// The URL a coordinator logged, waiting for it to listen.
pub fn address(log: &Path) -> String {
    logged(log, "coordinator listening on ")
}

/// The word after `prefix` in `log`, waiting for it to be written.
pub fn logged(log: &Path, prefix: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split(prefix).nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no address in {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on `127.0.0.1`-style `addr` (`host:port`): (status code, body).
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    (code, body)
}
