//! The live dashboard in a real browser: a coordinator (with a token and `--dashboard`) and a
//! worker (with `--health-listen`) as processes, a node sweep of the default model submitted,
//! and the page opened in headless Chromium (Debian's `chromium`): the job's progress and the
//! head heatmap must appear in the page's DOM. Also the API's token check, the worker's
//! readiness and the `health` command.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proc, address, bin, http_get, logged, ok, spawn, with_model};

const TOKEN: &str = "dash-t0k";

fn chromium() -> PathBuf {
    let found = std::env::var_os("CIRCUIT_SWEEP_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .find_map(|n| {
                    std::env::var_os("PATH").and_then(|p| {
                        std::env::split_paths(&p)
                            .map(|d| d.join(n))
                            .find(|f| f.is_file())
                    })
                })
        });
    found.unwrap_or_else(|| {
        panic!(
            "no Chromium found for the dashboard test: run scripts/test-tools.sh \
             (Debian: apt-get install chromium) or set CIRCUIT_SWEEP_CHROMIUM"
        )
    })
}

/// Headless Chromium with the flags a machine without outside network needs; a fresh profile.
fn browser(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        // Long enough for the page's first poll round trips; timers run in virtual time.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page's DOM after its scripts ran.
fn dom(profile: &Path, url: &str) -> String {
    let out = browser(profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn the_dashboard_shows_progress_and_the_heatmap_in_chromium() {
    let chrome = chromium();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = bin();
    c.args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--dashboard", "127.0.0.1:0", "--heartbeat-ms", "200"])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .arg("--state")
        .arg(d.join("state"));
    let _coord = spawn(c, &d.join("coordinator.log"));
    let url = address(&d.join("coordinator.log"));
    let dash = logged(&d.join("coordinator.log"), "dashboard on http://")
        .trim_end_matches('/')
        .to_string();

    // The API wants the token; the page and /healthz do not (the page holds no data).
    assert_eq!(http_get(&dash, "/api/status", None).0, 401);
    assert_eq!(http_get(&dash, "/api/status", Some("wrong")).0, 401);
    assert_eq!(http_get(&dash, "/healthz", None), (200, "ok\n".into()));
    let (code, page) = http_get(&dash, "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>circuit-sweep</title>"));
    let (code, body) = http_get(&dash, "/api/jobs/7", Some(TOKEN));
    assert_eq!(code, 404, "{body}");

    // The health command: the RPC, then with the token the scheduler; a wrong token fails.
    let health = |token: &str| {
        bin()
            .args(["health", "--coordinator", &url])
            .env("CIRCUIT_SWEEP_TOKEN", token)
            .output()
            .unwrap()
    };
    assert!(ok(health(TOKEN)).contains("0 jobs"));
    let bad = health("wrong");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong token"));

    let mut w = with_model();
    w.args(["worker", "--coordinator", &url, "--name", "dash-worker"])
        .args(["--health-listen", "127.0.0.1:0"])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN);
    let _worker: Proc = spawn(w, &d.join("worker.log"));
    let health_addr = logged(&d.join("worker.log"), "health on http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    while http_get(&health_addr, "/readyz", None).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "worker never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, live) = http_get(&health_addr, "/livez", None);
    assert_eq!(code, 200, "{live}");

    let spec = d.join("heads.toml");
    std::fs::write(
        &spec,
        "[data]\ntask = \"digits\"\nn = 4\nseed = 0\n\n[sweep]\nkind = \"nodes\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["submit", "--coordinator", &url])
        .arg(&spec)
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(ok(out).trim(), "job 1");

    let page_url = format!("http://{dash}/#token={TOKEN}");
    let profile = d.join("chromium");
    // While the job runs, the page shows it and its progress; once it is done, every cell of
    // the heatmap is filled and the progress says so.
    let t0 = Instant::now();
    let mut partial_seen = false;
    let done_dom = loop {
        let html = dom(&profile, &page_url);
        // The connection line turns `bad` when a call fails (a refused token, say).
        assert!(
            html.contains("<span id=\"conn\" class=\"\">live"),
            "the page is not live: {html}"
        );
        assert!(html.contains("data-job=\"1\""), "no job row: {html}");
        assert!(html.contains("dash-worker"), "no worker row: {html}");
        let (filled, pending) = (
            count(&html, "class=\"cell done\""),
            count(&html, "class=\"cell pending\""),
        );
        if filled > 0 && pending > 0 {
            partial_seen = true;
        }
        if html.contains("data-state=\"done\"") {
            break html;
        }
        assert!(
            !html.contains("data-state=\"failed\""),
            "the job failed: {html}"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "job not done");
        std::thread::sleep(Duration::from_secs(2));
    };
    // SmolLM2-135M: 30 layers of 9 heads and an MLP.
    assert_eq!(count(&done_dom, "class=\"cell done\""), 300, "{done_dom}");
    assert_eq!(count(&done_dom, "class=\"cell pending\""), 0);
    assert!(done_dom.contains("300 of 300 cells"), "{done_dom}");
    let st: serde_json::Value =
        serde_json::from_str(&http_get(&dash, "/api/status", Some(TOKEN)).1).unwrap();
    let total = st["jobs"][0]["shards"]["total"].as_u64().unwrap();
    assert!(
        done_dom.contains(&format!("{total} / {total} shards")),
        "{done_dom}"
    );
    // Each cell carries the score the results folder has.
    let live: serde_json::Value =
        serde_json::from_str(&http_get(&dash, "/api/jobs/1", Some(TOKEN)).1).unwrap();
    let h00 = live["heads"][0][0].as_f64().unwrap();
    assert!(
        done_dom.contains(&format!("data-name=\"h0.0\" data-score=\"{h00:.3}\"")),
        "{done_dom}"
    );
    eprintln!(
        "dashboard via {}: partial heatmap seen while running: {partial_seen}",
        chrome.display()
    );
}

#[test]
fn every_dashboard_response_carries_the_security_headers() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = bin();
    c.args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--dashboard", "127.0.0.1:0"])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .arg("--state")
        .arg(d.join("state"));
    let _coord = spawn(c, &d.join("coordinator.log"));
    let dash = logged(&d.join("coordinator.log"), "dashboard on http://")
        .trim_end_matches('/')
        .to_string();
    for path in ["/", "/healthz", "/api/status"] {
        let mut s = std::net::TcpStream::connect(&dash).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {dash}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let head = text.split("\r\n\r\n").next().unwrap().to_lowercase();
        for h in [
            "content-security-policy: default-src 'none'; script-src 'sha256-",
            "frame-ancestors 'none'",
            "x-frame-options: deny",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
        ] {
            assert!(head.contains(h), "{path}: no {h:?} in\n{head}");
        }
    }
}
