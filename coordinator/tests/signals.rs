//! SIGPIPE: servers and clients ignore it (a peer hanging up is an error on one connection,
//! never a silent exit), while commands that only print die quietly on a closed stdout.

mod support;

use std::io::Read;
use std::process::Stdio;

use support::{Proc, address, bin, fixtures, spawn};

/// Whether process `pid` ignores SIGPIPE, from its signal masks in /proc.
fn ignores_sigpipe(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("a SigIgn line");
    let bits = u64::from_str_radix(mask.trim(), 16).unwrap();
    bits & (1 << (SIGPIPE - 1)) != 0
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;

#[test]
fn the_coordinator_and_the_worker_ignore_sigpipe() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("coordinator.log");
    let mut c = bin();
    c.args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state"));
    let coordinator = spawn(c, &log);
    let url = address(&log);
    assert!(ignores_sigpipe(coordinator.0.id()), "coordinator");
    let wlog = dir.path().join("worker.log");
    let mut w = bin();
    w.args(["worker", "--coordinator", &url, "--threads", "1"]);
    let worker: Proc = spawn(w, &wlog);
    support::logged(&wlog, "registered as ");
    assert!(ignores_sigpipe(worker.0.id()), "worker");
}

#[test]
fn a_printing_command_dies_quietly_when_stdout_closes() {
    // Far more than a pipe buffer holds, so the writes meet the closed pipe.
    let mut child = bin()
        .args(["prompts", "gen", "months", "--n", "20000", "--model"])
        .arg(fixtures().join("gpt2-tokenizer"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here.
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(SIGPIPE), "{status:?}: {err}");
    assert!(err.is_empty(), "{err}");
}
