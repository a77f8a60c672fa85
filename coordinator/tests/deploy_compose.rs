//! The compose topology without Docker: `deploy/compose.yaml`'s services (a coordinator and
//! two workers) run as processes on loopback with the file's own command lines and environment
//! (`${VAR}` interpolation done here, the host name `coordinator` and the container paths
//! mapped to local ones), its health check passes, and a sweep submitted to it completes.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Proc, address, bin, fetched, ok, root};

const TOKEN: &str = "compose-t0k";

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `${VAR:?message}` as compose reads them.
fn interpolate(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("unclosed ${") + i;
        let expr = &rest[i + 2..end];
        let (name, fallback) = match expr.find([':', '-', '?']) {
            Some(k) => (&expr[..k], Some(&expr[k..])),
            None => (expr, None),
        };
        let value = vars.get(name).cloned();
        out.push_str(&match (value, fallback) {
            (Some(v), _) if !v.is_empty() => v,
            (_, Some(f)) if f.starts_with(":-") || f.starts_with('-') => {
                f.trim_start_matches(':')[1..].to_string()
            }
            (_, Some(f)) if f.contains('?') => panic!("compose needs {name}: {f}"),
            _ => String::new(),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A compose service as the test runs it.
struct Service {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    healthcheck: Option<Vec<String>>,
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn service(doc: &serde_yaml::Value, name: &str) -> Service {
    let s = &doc["services"][name];
    assert!(!s.is_null(), "compose.yaml has no service {name}");
    let list = |v: &serde_yaml::Value, what: &str| -> Vec<String> {
        v.as_sequence()
            .unwrap_or_else(|| panic!("{name}: {what} must be a list"))
            .iter()
            .map(scalar)
            .collect()
    };
    Service {
        command: list(&s["command"], "command"),
        env: s["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: environment must be a map"))
            .iter()
            .map(|(k, v)| (scalar(k), scalar(v)))
            .collect(),
        healthcheck: s["healthcheck"]
            .get("test")
            .map(|t| list(t, "healthcheck.test")),
    }
}

/// The container's view mapped onto this machine.
struct Host {
    vars: BTreeMap<&'static str, String>,
    paths: Vec<(&'static str, PathBuf)>,
    coordinator: Option<String>,
}

impl Host {
    fn map(&self, value: &str) -> String {
        let mut v = interpolate(value, &self.vars);
        // Listen on free loopback ports: the test reads the addresses from the logs.
        for port in [":7070", ":8080", ":8081"] {
            v = v.replace(&format!("0.0.0.0{port}"), "127.0.0.1:0");
        }
        if let Some(c) = &self.coordinator {
            // Other services reach it by name; its own health check on its loopback.
            v = v
                .replace("http://coordinator:7070", c)
                .replace("http://127.0.0.1:7070", c);
        }
        for (inside, outside) in &self.paths {
            if v == *inside || v.starts_with(&format!("{inside}/")) {
                v = format!("{}{}", outside.display(), &v[inside.len()..]);
                break;
            }
        }
        v
    }

    fn command(&self, s: &Service, args: &[String], log: &Path) -> std::process::Command {
        let mut c = bin();
        // Only what the compose file sets: none of this shell's circuit-sweep settings.
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRCUIT_SWEEP_") {
                c.env_remove(k);
            }
        }
        for (k, v) in &s.env {
            c.env(k, self.map(v));
        }
        c.env("CIRCUIT_SWEEP_LOG", "info")
            .args(args.iter().map(|a| self.map(a)));
        let f = std::fs::File::create(log).unwrap();
        c.stdout(std::process::Stdio::null()).stderr(f);
        c
    }
}

#[test]
fn the_compose_topology_runs_a_sweep_as_processes() {
    let text = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // `<<: *worker` merges, as compose reads them.
    doc.apply_merge().unwrap();
    let coord = service(&doc, "coordinator");
    let workers = [service(&doc, "worker-1"), service(&doc, "worker-2")];

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut host = Host {
        vars: [("CIRCUIT_SWEEP_TOKEN", TOKEN.to_string())].into(),
        paths: vec![
            ("/models", fetched().to_path_buf()),
            ("/state", d.join("state")),
            ("/work", d.join("work")),
        ],
        coordinator: None,
    };
    // The compose file mounts the models folder from MODELS_DIR.
    host.vars
        .insert("MODELS_DIR", fetched().display().to_string());

    let log = d.join("coordinator.log");
    let _c = Proc(host.command(&coord, &coord.command, &log).spawn().unwrap());
    let url = address(&log);
    host.coordinator = Some(url.clone());

    // The coordinator's health check, as compose would run it (`CMD` form).
    let check = coord
        .healthcheck
        .as_ref()
        .expect("a coordinator healthcheck");
    assert_eq!(check[0], "CMD", "an exec-form health check");
    assert!(check[1].ends_with("circuit-sweep"), "{check:?}");
    let t0 = Instant::now();
    loop {
        let out = host
            .command(&coord, &check[2..], &d.join("health.log"))
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never healthy: {}",
            std::fs::read_to_string(d.join("health.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let _w: Vec<Proc> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let log = d.join(format!("worker-{}.log", i + 1));
            Proc(host.command(w, &w.command, &log).spawn().unwrap())
        })
        .collect();

    let spec = d.join("heads.toml");
    std::fs::write(
        &spec,
        "[data]\ntask = \"digits\"\nn = 4\nseed = 3\n\n[sweep]\nkind = \"nodes\"\n",
    )
    .unwrap();
    let out_dir = d.join("results");
    let out = bin()
        .args([
            "submit",
            "--coordinator",
            &url,
            "--wait",
            "--quiet",
            "--out",
        ])
        .arg(&out_dir)
        .arg(&spec)
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = ok(out);
    assert!(printed.contains("job 1 done"), "{printed}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["nodes"]["heads"].as_array().unwrap().len(), 30);

    // Both workers joined under the names the compose file gives them.
    let status = bin()
        .args(["status", "--json", "--coordinator", &url])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&ok(status)).unwrap();
    let mut names: Vec<String> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = workers
        .iter()
        .map(|w| host.map(&w.env["CIRCUIT_SWEEP_WORKER_NAME"]))
        .collect();
    want.sort();
    assert_eq!(names, want);
    // The coordinator kept its state where the compose file's volume is.
    assert!(d.join("state").read_dir().unwrap().next().is_some());
}

/// A batch job's worker (`--exit-when-idle`) computes what there is, then exits 0 and says
/// goodbye, so a Kubernetes Job or an array job ends with its sweep.
#[test]
fn a_batch_worker_exits_cleanly_when_the_sweep_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = bin();
    c.args(["coordinator", "--listen", "127.0.0.1:0", "--token", TOKEN])
        .arg("--state")
        .arg(d.join("state"));
    let _c = support::spawn(c, &d.join("coordinator.log"));
    let url = address(&d.join("coordinator.log"));
    let spec = d.join("heads.toml");
    std::fs::write(
        &spec,
        "[data]\ntask = \"digits\"\nn = 2\nseed = 4\n\n[sweep]\nkind = \"nodes\"\n",
    )
    .unwrap();
    let submitted = bin()
        .args(["submit", "--coordinator", &url])
        .arg(&spec)
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(submitted);
    let t0 = Instant::now();
    let out = support::with_model()
        .args(["worker", "--coordinator", &url, "--exit-when-idle", "2"])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .env("CIRCUIT_SWEEP_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("stopping (--exit-when-idle)"), "{log}");
    assert!(t0.elapsed() < Duration::from_secs(300));
    let status = bin()
        .args(["status", "1", "--json", "--coordinator", &url])
        .env("CIRCUIT_SWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&ok(status)).unwrap();
    assert_eq!(st["jobs"][0]["state"], "done", "{st}");
    assert_eq!(
        st["workers"].as_array().unwrap().len(),
        0,
        "said goodbye: {st}"
    );
}
