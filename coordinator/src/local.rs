//! A whole cluster in one process: the coordinator on a loopback port and N workers sharing
//! one resident-model cache. `run` uses it, so local runs and cluster runs share one code path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use circuit_sweep_proto::auth;
use circuit_sweep_worker::agent::{self, AgentConfig, AgentSummary};
use circuit_sweep_worker::model_access::ModelAccess;
use circuit_sweep_worker::resident::ModelCache;
use tokio::sync::watch;

use crate::server::{ServerConfig, Service};

/// A running in-process cluster.
pub struct LocalCluster {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The token every call carries.
    pub token: Option<String>,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop_workers: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Result<AgentSummary, agent::AgentError>>>,
}

/// Settings of an in-process cluster.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Coordinator state folder.
    pub state_dir: PathBuf,
    /// Folder of the default model.
    pub models_dir: PathBuf,
    /// Workers to start.
    pub workers: usize,
    /// Token required on every call.
    pub token: Option<String>,
    /// Model memory budget of the shared cache, bytes.
    pub memory_budget: u64,
    /// Device the workers compute on (`cpu`, `cuda:N`).
    pub device: String,
}

impl LocalConfig {
    /// `workers` on the CPU, no token, no memory budget.
    pub fn new(state_dir: PathBuf, models_dir: PathBuf, workers: usize) -> Self {
        LocalConfig {
            state_dir,
            models_dir,
            workers,
            token: None,
            memory_budget: u64::MAX,
            device: "cpu".into(),
        }
    }
}

impl LocalCluster {
    /// Starts the coordinator on a free loopback port and the workers.
    pub async fn start(cfg: LocalConfig) -> anyhow::Result<Self> {
        let mut sc = ServerConfig::new(&cfg.state_dir);
        sc.client_tokens = cfg.token.iter().cloned().collect();
        sc.worker_tokens = sc.client_tokens.clone();
        let service = Service::open(sc)?;
        let listener = crate::server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        let device = circuit_sweep_worker::device::open(&cfg.device)?;
        let cache = Arc::new(ModelCache::on(cfg.memory_budget, device));
        let (stop_workers, rx) = watch::channel(false);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = (0..cfg.workers)
            .map(|i| {
                let a = AgentConfig {
                    coordinator: url.clone(),
                    token: cfg.token.clone(),
                    tls: Default::default(),
                    name: format!("local-{i}"),
                    device: cfg.device.clone(),
                    threads,
                    models_dir: cfg.models_dir.clone(),
                    // `run` reads the user's own spec on the user's own machine.
                    models: ModelAccess::Anywhere,
                    work_dir: cfg.state_dir.join("work").join(format!("worker-{i}")),
                    health: None,
                    exit_when_idle: None,
                };
                tokio::spawn(agent::run(a, cache.clone(), rx.clone()))
            })
            .collect();
        Ok(LocalCluster {
            url,
            token: cfg.token,
            stop_server: Some(stop_server),
            server,
            stop_workers,
            workers,
        })
    }

    /// A client of the coordinator.
    pub async fn client(&self) -> anyhow::Result<auth::Client> {
        Ok(auth::connect(&self.url, self.token.as_deref()).await?)
    }

    /// Drains the workers, then stops the coordinator. Returns what each worker did.
    pub async fn stop(mut self) -> anyhow::Result<Vec<AgentSummary>> {
        let _ = self.stop_workers.send(true);
        let mut out = vec![];
        for w in self.workers.drain(..) {
            out.push(w.await??);
        }
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        (&mut self.server).await??;
        Ok(out)
    }
}

/// Runs a spec on an in-process cluster of `workers` and downloads the results into `out`.
pub async fn run(
    spec_path: &Path,
    out: &Path,
    workers: usize,
    models_dir: &Path,
    progress: bool,
) -> anyhow::Result<serde_json::Value> {
    let submission = crate::client::Submission::from_file(spec_path)?;
    crate::client::make_out(out)?;
    // The spec's `[model] device` is the in-process workers' device.
    let device = submission.spec.model.device.clone();
    let state = tempfile::tempdir()?;
    let cluster = LocalCluster::start(LocalConfig {
        state_dir: state.path().to_path_buf(),
        models_dir: models_dir.to_path_buf(),
        workers: workers.max(1),
        token: Some(format!("{:016x}", rand_token())),
        memory_budget: u64::MAX,
        device,
    })
    .await?;
    let result = async {
        let mut client = cluster.client().await?;
        let job = crate::client::submit(&mut client, &submission).await?;
        crate::client::wait(&mut client, job, progress).await?;
        crate::client::download(&mut client, job, out).await?;
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    result?;
    let text = std::fs::read_to_string(out.join("result.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
