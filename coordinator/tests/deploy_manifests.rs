//! The deployment files: Kubernetes manifests against the API schemas (`kubernetes-validate
//! --strict`, which ships the schemas, so no network) and the fields that matter to this
//! project; the compose file and the Dockerfiles; the Slurm script and the project's shell
//! scripts through `bash -n` and shellcheck. `scripts/test-tools.sh` installs the tools.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;
use support::root;

const K8S_VERSION: &str = "1.33.0";

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every document of a YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Kubernetes resources (not kustomizations) under `deploy/k8s`, with their files.
fn resources() -> Vec<(PathBuf, Value)> {
    files(&deploy().join("k8s"), "yaml")
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn find(kind: &str, name: &str) -> Value {
    resources()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn tool(name: &str) -> Command {
    assert!(
        on_path(name),
        "{name} is missing: run scripts/test-tools.sh"
    );
    Command::new(name)
}

/// The `kubernetes-validate` command, or its module when a user install (`~/.local/bin`) left
/// the command off `PATH`.
fn kubernetes_validate_command() -> Command {
    if on_path("kubernetes-validate") {
        return Command::new("kubernetes-validate");
    }
    let python = std::env::var("CIRCUIT_SWEEP_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_module = Command::new(&python)
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_module,
        "kubernetes-validate is missing: run scripts/test-tools.sh"
    );
    let mut c = Command::new(python);
    c.args(["-m", "kubernetes_validate"]);
    c
}

/// `kubernetes-validate --strict` on `paths`: (success, output).
fn kubernetes_validate(paths: &[PathBuf]) -> (bool, String) {
    let out = kubernetes_validate_command()
        .args(["--strict", "--kubernetes-version", K8S_VERSION])
        .args(paths)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut paths = files(&deploy(), "yaml");
    paths.extend(files(&deploy(), "yml"));
    assert!(paths.len() >= 7, "{paths:?}");
    for p in &paths {
        let docs = documents(p);
        assert!(!docs.is_empty(), "{}: no document", p.display());
        for d in &docs {
            assert!(d.is_mapping(), "{}: a document is not a map", p.display());
        }
    }
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas() {
    let paths: Vec<PathBuf> = files(&deploy().join("k8s"), "yaml")
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    assert!(paths.len() >= 4, "{paths:?}");
    let (ok, text) = kubernetes_validate(&paths);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        resources().len(),
        "{text}"
    );
    // The validator does reject a misspelt field (strict mode), so its pass means something.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(deploy().join("k8s/coordinator.yaml")).unwrap();
    std::fs::write(&bad, text.replace("readinessProbe:", "readinesProbe:")).unwrap();
    let (ok, out) = kubernetes_validate(&[bad]);
    assert!(!ok, "a misspelt field passed: {out}");
}

#[test]
fn every_kustomization_lists_exactly_the_resources_beside_it() {
    for k in files(&deploy().join("k8s"), "yaml")
        .into_iter()
        .filter(|p| p.file_name().unwrap() == "kustomization.yaml")
    {
        let dir = k.parent().unwrap();
        let doc = &documents(&k)[0];
        assert_eq!(doc["namespace"], "circuit-sweep", "{}", k.display());
        let mut listed: Vec<String> = doc["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        listed.sort();
        let mut present: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect();
        present.sort();
        assert_eq!(listed, present, "{}", k.display());
    }
}

/// A YAML list of strings.
fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// A container's arguments.
fn args(c: &Value) -> Vec<&str> {
    strings(&c["args"])
}

fn containers(pod_spec: &Value) -> Vec<Value> {
    pod_spec["containers"].as_sequence().unwrap().clone()
}

fn env(c: &Value, name: &str) -> Value {
    c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {c:?}"))
        .clone()
}

/// The volume mounted at `path` in container `c` of `pod`.
fn volume_at(pod: &Value, c: &Value, path: &str) -> Value {
    let m = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap()
        .clone()
}

#[test]
fn the_coordinator_has_real_health_probes_its_state_volume_and_the_token_secret() {
    let d = find("Deployment", "circuit-sweep-coordinator");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    let c = &containers(pod)[0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let cmd: Vec<&str> = c[probe]["exec"]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{probe} is not an exec probe"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmd[..2], ["circuit-sweep", "health"], "{probe}");
        assert!(
            cmd.windows(2)
                .any(|w| w == ["--coordinator", "http://127.0.0.1:7070"]),
            "{probe}: {cmd:?}"
        );
    }
    let ports: Vec<(&str, i64)> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("grpc", 7070), ("dashboard", 8080)]);
    let state = volume_at(pod, c, "/state");
    let claim = state["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    find("PersistentVolumeClaim", claim);
    assert_eq!(env(c, "CIRCUIT_SWEEP_STATE")["value"], "/state");
    let token_file = env(c, "CIRCUIT_SWEEP_TOKEN_FILE")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = Path::new(&token_file).parent().unwrap().to_str().unwrap();
    let secret = volume_at(pod, c, dir);
    assert_eq!(secret["secret"]["secretName"], "circuit-sweep-token");
    assert!(
        c["args"]
            .as_sequence()
            .unwrap()
            .contains(&Value::from("coordinator"))
    );
    assert!(env(c, "CIRCUIT_SWEEP_DASHBOARD")["value"].is_string());
    let svc = find("Service", "circuit-sweep-coordinator");
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [7070, 8080]);
}

/// Checks shared by the two kinds of worker pods.
fn check_worker_pod(pod: &Value) {
    let c = &containers(pod)[0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    let args = args(c);
    assert_eq!(args[0], "worker");
    assert!(
        args.windows(2)
            .any(|w| w == ["--device", "cuda:0"] || w == ["--gpus", "all"]),
        "{args:?}"
    );
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--health-listen")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("no --health-listen in {args:?}"));
    assert_eq!(listen, "0.0.0.0:8081");
    // A named probe port must name the container port that --health-listen serves.
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = &c[probe]["httpGet"]["port"];
        let number = match port.as_str() {
            Some(name) => c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{probe}: no container port {name}"))["containerPort"]
                .clone(),
            None => port.clone(),
        };
        assert_eq!(number, 8081, "{probe}");
    }
    let url = env(c, "CIRCUIT_SWEEP_COORDINATOR")["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://circuit-sweep-coordinator:7070"));
    let models = volume_at(pod, c, "/models");
    assert!(models["persistentVolumeClaim"]["readOnly"] == true);
    // Draining a shard takes time: SIGTERM must not be followed by SIGKILL at once.
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 300);
}

#[test]
fn the_worker_pool_is_a_statefulset_with_a_headless_service_and_gpus() {
    let s = find("StatefulSet", "circuit-sweep-worker");
    let svc = find("Service", s["spec"]["serviceName"].as_str().unwrap());
    assert_eq!(svc["spec"]["clusterIP"], "None");
    check_worker_pod(&s["spec"]["template"]["spec"]);
}

#[test]
fn the_sweep_job_is_indexed_and_ignores_preemption() {
    let j = find("Job", "circuit-sweep-workers");
    let spec = &j["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert!(spec["backoffLimitPerIndex"].as_i64().unwrap() >= 1);
    assert!(spec["maxFailedIndexes"].as_i64().is_some());
    assert_eq!(spec["completions"], spec["parallelism"]);
    let rules = spec["podFailurePolicy"]["rules"].as_sequence().unwrap();
    assert!(
        rules.iter().any(|r| {
            (r["action"] == "FailJob" || r["action"] == "FailIndex")
                && r["onExitCodes"]["operator"] == "In"
                && r["onExitCodes"]["containerName"] == "worker"
        }),
        "no rule stops the retries of a non-retryable exit code"
    );
    assert!(rules.iter().any(|r| {
        r["action"] == "Ignore"
            && r["onPodConditions"]
                .as_sequence()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget"))
    }));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    check_worker_pod(pod);
    let c = &containers(pod)[0];
    let args = args(c);
    // The workers end with the sweep, and the index is only a name.
    assert!(args.contains(&"--exit-when-idle"), "{args:?}");
    assert!(
        args.iter().any(|a| a.contains("$(JOB_COMPLETION_INDEX)")),
        "{args:?}"
    );
    assert!(
        env(c, "JOB_COMPLETION_INDEX")["valueFrom"]["fieldRef"]["fieldPath"]
            .as_str()
            .unwrap()
            .contains("job-completion-index")
    );
}

#[test]
fn every_pod_runs_as_non_root_with_a_pinned_image() {
    let pods: Vec<(PathBuf, Value)> = resources()
        .into_iter()
        .filter_map(|(p, d)| {
            let kind = d["kind"].as_str().unwrap().to_string();
            let pod = match kind.as_str() {
                "Deployment" | "StatefulSet" | "Job" => d["spec"]["template"]["spec"].clone(),
                _ => return None,
            };
            Some((p, pod))
        })
        .collect();
    assert!(pods.len() >= 4);
    for (p, pod) in &pods {
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"],
            true,
            "{}",
            p.display()
        );
        for c in containers(pod) {
            assert_eq!(
                c["securityContext"]["runAsNonRoot"],
                true,
                "{}",
                p.display()
            );
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"],
                false,
                "{}",
                p.display()
            );
            let image = c["image"].as_str().unwrap();
            assert!(!image.ends_with(":latest"), "{image}");
            let tag = pinned_tag(p, image);
            assert!(
                !tag.is_empty() && tag != "latest",
                "{}: image {image} has tag {tag:?}",
                p.display()
            );
        }
    }
}

/// The tag `image` runs with: its own, or the one the kustomization beside `file` sets (an
/// image without either would be pulled as `latest`).
fn pinned_tag(file: &Path, image: &str) -> String {
    let k = file.parent().unwrap().join("kustomization.yaml");
    let mapped = documents(&k)[0]["images"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == image)
        .map(|i| {
            i["newTag"]
                .as_str()
                .or(i["digest"].as_str())
                .unwrap_or("")
                .to_string()
        });
    if let Some(tag) = mapped {
        return tag;
    }
    let name = image.rsplit('/').next().unwrap();
    match (image.split_once('@'), name.split_once(':')) {
        (Some((_, digest)), _) => digest.to_string(),
        (None, Some((_, tag))) => tag.to_string(),
        (None, None) => String::new(),
    }
}

#[test]
fn the_compose_file_has_a_coordinator_two_workers_and_no_secret_in_clear() {
    let mut doc = documents(&deploy().join("compose.yaml")).remove(0);
    doc.apply_merge().unwrap();
    for name in ["coordinator", "worker-1", "worker-2"] {
        let s = &doc["services"][name];
        assert!(s["command"].is_sequence(), "{name}: command must be a list");
        let env = s["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: environment must be a map"));
        let token = env
            .get("CIRCUIT_SWEEP_TOKEN")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name}: no token"));
        assert!(token.starts_with("${"), "{name}: a token written in clear");
    }
    let services = doc["services"].as_mapping().unwrap();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        for (k, v) in s["environment"].as_mapping().into_iter().flatten() {
            let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap_or(""));
            let secret = ["TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|w| k.contains(w))
                && !k.ends_with("_FILE");
            assert!(
                !secret || (v.starts_with("${") && v.ends_with('}')),
                "{name}: {k} written in clear"
            );
        }
        // Ports only on loopback: the dashboard and the API are not for the whole network.
        for p in s["ports"].as_sequence().into_iter().flatten() {
            assert!(
                p.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name}: {p:?}"
            );
        }
        let image = s["image"].as_str().unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name}: {image}"
        );
    }
    let var = |service: &str, k: &str| {
        doc["services"][service]["environment"][k]
            .as_str()
            .unwrap_or_else(|| panic!("{service}: no {k}"))
            .to_string()
    };
    let c = &doc["services"]["coordinator"];
    assert_eq!(var("coordinator", "CIRCUIT_SWEEP_LISTEN"), "0.0.0.0:7070");
    assert_eq!(var("coordinator", "CIRCUIT_SWEEP_STATE"), "/state");
    assert_eq!(
        var("coordinator", "CIRCUIT_SWEEP_DASHBOARD"),
        "0.0.0.0:8080"
    );
    let test = strings(&c["healthcheck"]["test"]);
    assert!(
        test.windows(2)
            .any(|w| w[0].ends_with("circuit-sweep") && w[1] == "health"),
        "{test:?}"
    );
    // The state is a named volume, so it outlives the container.
    let state = c["volumes"][0].as_str().unwrap();
    let (volume, path) = state.split_once(':').unwrap();
    assert_eq!(path, "/state");
    assert!(doc["volumes"].get(volume).is_some(), "{state}");
    for w in ["worker-1", "worker-2"] {
        assert_eq!(
            var(w, "CIRCUIT_SWEEP_COORDINATOR"),
            "http://coordinator:7070"
        );
        assert_eq!(var(w, "CIRCUIT_SWEEP_MODELS"), "/models");
        assert_eq!(var(w, "CIRCUIT_SWEEP_WORKER_NAME"), w);
        var(w, "CIRCUIT_SWEEP_THREADS");
        let volumes = strings(&doc["services"][w]["volumes"]);
        assert!(
            volumes.iter().any(|v| v.ends_with(":/models:ro")),
            "{w}: the model folder must be mounted read-only: {volumes:?}"
        );
    }
}

#[test]
fn the_images_are_multi_stage_non_root_and_carry_no_model() {
    for f in ["Dockerfile.cpu", "Dockerfile.cuda"] {
        let text = std::fs::read_to_string(deploy().join("docker").join(f)).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let froms: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("FROM "))
            .collect();
        assert!(froms.len() >= 2, "{f}: not multi-stage");
        let last = &lines[*froms.last().unwrap()..];
        let user = last
            .iter()
            .rev()
            .find(|l| l.starts_with("USER "))
            .unwrap_or_else(|| panic!("{f}: the last stage has no USER"));
        assert!(
            !user.contains("root") && !user.starts_with("USER 0"),
            "{f}: {user}"
        );
        for l in &lines {
            let copy = l.starts_with("COPY ") || l.starts_with("ADD ");
            assert!(
                !(copy && (l.contains(".gguf") || l.contains("models"))),
                "{f}: a model baked in: {l}"
            );
        }
        let entrypoint = last
            .iter()
            .find(|l| l.starts_with("ENTRYPOINT "))
            .unwrap_or_else(|| panic!("{f}: no ENTRYPOINT in the last stage"));
        assert!(entrypoint.contains("circuit-sweep\"]"), "{f}: {entrypoint}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("CIRCUIT_SWEEP_MODELS=/models")),
            "{f}: the model folder is not /models"
        );
    }
    let cuda = std::fs::read_to_string(deploy().join("docker/Dockerfile.cuda")).unwrap();
    assert!(cuda.contains("--features cuda"));
    assert!(cuda.contains("ARG CUDA_COMPUTE_CAP"));
    // The build context leaves models out, whatever a COPY says.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "models/"), "{ignore}");
}

#[test]
fn the_shell_scripts_pass_bash_n_and_shellcheck() {
    let mut scripts = files(&deploy().join("slurm"), "sbatch");
    scripts.extend(files(&root().join("scripts"), "sh"));
    assert!(scripts.len() >= 4, "{scripts:?}");
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tool("shellcheck").args(&scripts).output().unwrap();
    assert!(
        out.status.success(),
        "shellcheck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Slurm reads its options from the #SBATCH lines; a worker lost must not end the step.
    let sbatch = std::fs::read_to_string(deploy().join("slurm/circuit-sweep.sbatch")).unwrap();
    assert!(sbatch.contains("#SBATCH --gpus-per-task=1"));
    assert!(sbatch.contains("#SBATCH --ntasks-per-node="));
    let srun = sbatch
        .split("\nsrun ")
        .nth(1)
        .expect("no srun step")
        .split("&\n")
        .next()
        .unwrap();
    for flag in [
        "--kill-on-bad-exit=0",
        "--ntasks-per-node=",
        "--gpus-per-task=1",
        "worker --device cuda:0",
    ] {
        assert!(srun.contains(flag), "srun step lacks {flag}: {srun}");
    }
    assert!(sbatch.contains("submit \"$spec\" --wait"));
    assert!(sbatch.contains("health"));
    assert!(sbatch.contains("umask 077") || sbatch.contains("chmod 600"));
}
