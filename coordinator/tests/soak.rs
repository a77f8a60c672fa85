//! A soak in CI size: 50 jobs from 4 clients against a coordinator and 2 workers (processes,
//! loopback), with clients killed at random while they wait, download or read status. Every
//! job's results equal the in-process run of its spec, the coordinator stays up, and its memory
//! stays bounded.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use circuit_sweep_common::rng::Rng;
use circuit_sweep_coordinator::local;
use support::{Proc, address, bin, results_folder, spawn, tiny_model_with_data};

const TOKEN: &str = "soak-t0k";
const CLIENTS: usize = 4;
const JOBS: usize = 50;

/// The specs the jobs cycle through: one per sweep kind that runs in a blink on the tiny model.
const SWEEPS: [&str; 5] = [
    "[sweep]\nkind = \"nodes\"\n",
    "[ablation]\nkind = \"resample\"\n[sweep]\nkind = \"nodes\"\n",
    "[sweep]\nkind = \"prune\"\nthreshold = 80\n",
    "[sweep]\nkind = \"edges\"\n",
    "[sweep]\nkind = \"orders\"\norders = 4\nseed = 3\n",
];

fn client(url: &str) -> Command {
    let mut c = bin();
    c.env("CIRCUIT_SWEEP_COORDINATOR", url)
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN);
    c
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Submits `spec` with `--wait --out`; returns the job id once printed, and kills the client
/// after `kill_after` if given (else lets it finish).
fn submit(url: &str, spec: &Path, out: &Path, kill_after: Option<Duration>) -> u64 {
    let mut child = client(url)
        .args(["submit", "--wait", "--quiet", "--out"])
        .arg(out)
        .arg(spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let job = first
        .strip_prefix("job ")
        .and_then(|j| j.parse().ok())
        .unwrap_or_else(|| panic!("submit printed {first:?}"));
    match kill_after {
        Some(d) => {
            std::thread::sleep(d);
            let _ = child.kill();
            let _ = child.wait();
        }
        None => {
            for _ in lines {}
            assert!(child.wait().unwrap().success(), "job {job}");
        }
    }
    job
}

#[test]
fn fifty_jobs_from_four_clients_killed_at_random_all_come_out_right() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, data) = tiny_model_with_data(d, 6);
    let specs: Vec<PathBuf> = SWEEPS
        .iter()
        .enumerate()
        .map(|(i, sweep)| {
            let p = d.join(format!("spec{i}.toml"));
            std::fs::write(
                &p,
                format!(
                    "[model]\npath = {:?}\n[data]\nfile = {:?}\n{sweep}",
                    model.display().to_string(),
                    data.display().to_string()
                ),
            )
            .unwrap();
            p
        })
        .collect();
    // The in-process runs every job must equal.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let references: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let out = d.join(format!("reference{i}"));
            rt.block_on(local::run(s, &out, 1, &d.join("models"), false))
                .unwrap();
            results_folder(&out)
        })
        .collect();

    let mut c = bin();
    c.args([
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-ms",
        "200",
    ])
    .args(["--lost-after-ms", "3000"])
    .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
    .arg("--state")
    .arg(d.join("state"));
    let mut coordinator = spawn(c, &d.join("coordinator.log"));
    let url = address(&d.join("coordinator.log"));
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut w = client(&url);
            w.args(["worker", "--threads", "1", "--name", &format!("w{i}")])
                .arg("--models-dir")
                .arg(d.join("models"))
                .arg("--model-root")
                .arg(d);
            spawn(w, &d.join(format!("worker{i}.log")))
        })
        .collect();

    // Four clients submit; about a third are killed while they wait or download. A fifth
    // reads status and hangs up mid-reply.
    let jobs = Mutex::new(vec![]);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (url, specs, jobs) = (&url, &specs, &jobs);
            s.spawn(move || {
                let mut rng = Rng::derive(7, &format!("client-{c}"));
                for k in (c..JOBS).step_by(CLIENTS) {
                    let which = k % specs.len();
                    let kill = (rng.below(3) == 0)
                        .then(|| Duration::from_millis(rng.range(0, 400) as u64));
                    let out = d.join(format!("client{c}-{k}"));
                    let job = submit(url, &specs[which], &out, kill);
                    jobs.lock().unwrap().push((job, which));
                }
            });
        }
        let url = &url;
        s.spawn(move || {
            let mut rng = Rng::derive(7, "status");
            for _ in 0..60 {
                let mut child = client(url)
                    .args(["status", "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut some = vec![0u8; rng.range(0, 64)];
                let _ = child.stdout.take().unwrap().read_exact(&mut some);
                let _ = child.kill();
                let _ = child.wait();
            }
        });
    });
    let jobs = jobs.into_inner().unwrap();
    assert_eq!(jobs.len(), JOBS);

    // Every job finishes; a download killed midway is done again; every folder is right.
    let mut rng = Rng::new(11);
    for &(job, which) in &jobs {
        loop {
            let out = client(&url)
                .args(["status", &job.to_string(), "--json"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            match v["jobs"][0]["state"].as_str() {
                Some("done") => break,
                Some("failed" | "cancelled") => panic!("job {job}: {v}"),
                _ => {}
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "job {job} not done: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = d.join(format!("final-{job}"));
        if rng.below(4) == 0 {
            let mut cut = client(&url)
                .args(["results", &job.to_string(), "--out"])
                .arg(&out)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.range(0, 30) as u64));
            let _ = cut.kill();
            let _ = cut.wait();
        }
        let got = client(&url)
            .args(["results", &job.to_string(), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(got.status.success(), "job {job}: {got:?}");
        assert!(
            results_folder(&out) == references[which],
            "job {job} (spec {which}) differs from the in-process run"
        );
    }

    assert!(
        coordinator.0.try_wait().unwrap().is_none(),
        "the coordinator died"
    );
    let rss = rss_mib(coordinator.0.id());
    eprintln!(
        "{JOBS} jobs in {:.1} s; coordinator RSS {rss:.0} MiB",
        t0.elapsed().as_secs_f64()
    );
    assert!(rss < 512.0, "coordinator RSS {rss:.0} MiB");
}
