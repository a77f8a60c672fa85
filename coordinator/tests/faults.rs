//! Faults with real processes: a worker killed with SIGKILL in the middle of a shard, and the
//! coordinator killed and restarted on the same state. Each job must finish with the results of
//! a fault-free run, and the restarted coordinator must recompute no finished shard.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proc, address, bin, fetched, ok, spawn, with_model};

fn coordinator(state: &Path, listen: &str, log: &Path) -> Proc {
    let mut c = bin();
    c.args(["coordinator", "--listen", listen, "--heartbeat-ms", "200"])
        .args(["--lost-after-ms", "1500", "--token", "t0k"])
        .arg("--state")
        .arg(state);
    spawn(c, log)
}

fn worker(url: &str, name: &str, log: &Path) -> Proc {
    let mut c = with_model();
    c.args([
        "worker",
        "--coordinator",
        url,
        "--token",
        "t0k",
        "--name",
        name,
    ]);
    spawn(c, log)
}

fn client(url: &str) -> Command {
    let mut c = bin();
    c.env("CIRCUIT_SWEEP_COORDINATOR", url)
        .env("CIRCUIT_SWEEP_TOKEN", "t0k");
    c
}

fn status(url: &str) -> serde_json::Value {
    let out = client(url)
        .args(["status", "1", "--json"])
        .output()
        .unwrap();
    serde_json::from_str(&ok(out)).unwrap()
}

/// Polls `status` until `f` holds (panics after `secs`).
fn until(
    url: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let s = status(url);
        if f(&s) {
            return s;
        }
        assert_ne!(s["jobs"][0]["state"], "failed", "{s}");
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spec(dir: &Path) -> PathBuf {
    let p = dir.join("nodes.toml");
    std::fs::write(
        &p,
        "[data]\ntask = \"digits\"\nn = 4\nseed = 2\n\n[sweep]\nkind = \"nodes\"\n",
    )
    .unwrap();
    p
}

/// The fault-free results of `spec`.
fn reference(spec: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("reference");
    ok(with_model()
        .args(["run", "--quiet", "--workers", "1"])
        .arg(spec)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    out
}

fn same_results(a: &Path, b: &Path) {
    let json = |d: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("result.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("timing");
        v
    };
    assert_eq!(json(a), json(b));
    for f in [
        "nodes.safetensors",
        "nodes_heads.csv",
        "prompts.jsonl",
        "heads.svg",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

fn download(url: &str, out: &Path) {
    ok(client(url)
        .args(["results", "1", "--out"])
        .arg(out)
        .output()
        .unwrap());
}

/// Shard indices a coordinator log says were done, or leased.
fn shards_in(log: &Path, what: &str) -> BTreeSet<u32> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            l.split("job 1 shard ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_worker_killed_mid_shard_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fetched();
    let spec = spec(d);
    let want = reference(&spec, d);
    let clog = d.join("coordinator.log");
    let _c = coordinator(&d.join("state"), "127.0.0.1:0", &clog);
    let url = address(&clog);
    let mut workers: Vec<(String, Option<Proc>)> = (0..3)
        .map(|i| {
            let name = format!("w{i}");
            let p = worker(&url, &name, &d.join(format!("{name}.log")));
            (name, Some(p))
        })
        .collect();
    let out = client(&url).arg("submit").arg(&spec).output().unwrap();
    assert_eq!(ok(out).trim(), "job 1");
    // Wait until the model is loaded and some worker is in the middle of a node shard.
    let s = until(&url, 300, "a leased shard after one done", |s| {
        s["jobs"][0]["shards"]["done"].as_u64().unwrap() >= 2
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| !w["leases"].as_array().unwrap().is_empty())
    });
    let victim = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| !w["leases"].as_array().unwrap().is_empty())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let slot = workers.iter_mut().find(|(n, _)| *n == victim).unwrap();
    let mut p = slot.1.take().unwrap();
    p.0.kill().unwrap(); // SIGKILL
    p.0.wait().unwrap();
    let s = until(&url, 600, "the job to finish", |s| {
        s["jobs"][0]["state"] == "done"
    });
    assert!(
        s["jobs"][0]["shards"]["requeued"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let log = std::fs::read_to_string(&clog).unwrap();
    assert!(
        log.contains(&format!("({victim}) lost: heartbeat timeout"))
            || log.contains("result stream broke"),
        "{log}"
    );
    assert!(log.contains("re-queued job 1 shard"), "{log}");
    let got = d.join("got");
    download(&url, &got);
    same_results(&want, &got);
}

#[test]
fn a_restarted_coordinator_resumes_without_recomputing_finished_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fetched();
    let spec = spec(d);
    let want = reference(&spec, d);
    let state = d.join("state");
    let log1 = d.join("coordinator-1.log");
    let mut c1 = coordinator(&state, "127.0.0.1:0", &log1);
    let url = address(&log1);
    let addr = url.trim_start_matches("http://").to_string();
    let _workers: Vec<Proc> = (0..2)
        .map(|i| worker(&url, &format!("w{i}"), &d.join(format!("w{i}.log"))))
        .collect();
    let out = client(&url).arg("submit").arg(&spec).output().unwrap();
    assert_eq!(ok(out).trim(), "job 1");
    until(&url, 300, "three shards done", |s| {
        s["jobs"][0]["shards"]["done"].as_u64().unwrap() >= 3
    });
    c1.0.kill().unwrap(); // SIGKILL: no chance to flush anything
    c1.0.wait().unwrap();
    let done_before = shards_in(&log1, " done by ");
    assert!(done_before.len() >= 3, "{done_before:?}");
    // Same state, same address: the workers reconnect and register again.
    let log2 = d.join("coordinator-2.log");
    let _c2 = coordinator(&state, &addr, &log2);
    address(&log2);
    until(&url, 600, "the job to finish", |s| {
        s["jobs"][0]["state"] == "done"
    });
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(log.contains("resuming job 1"), "{log}");
    let leased_after = shards_in(&log2, " leased to ");
    assert!(!leased_after.is_empty());
    let recomputed: Vec<_> = done_before.intersection(&leased_after).collect();
    assert!(
        recomputed.is_empty(),
        "finished shards {recomputed:?} were leased again"
    );
    let got = d.join("got");
    download(&url, &got);
    same_results(&want, &got);
}
