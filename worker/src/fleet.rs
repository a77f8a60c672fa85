//! A worker process: one agent per device, each with its own resident-model cache, the
//! optional health endpoint, and a drain when asked to stop. It lives here rather than in the
//! CLI so that a process can be composed (and tested) without parsing flags.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use circuit_sweep_proto::tls::ClientTls;
use tokio::sync::watch;

use crate::agent::{self, AgentConfig, AgentError, AgentSummary};
use crate::device::{self, DeviceError};
use crate::health::{self, Health};
use crate::model_access::ModelAccess;
use crate::resident::ModelCache;

/// Why a worker process cannot start or stopped with an error. Messages name the flag that
/// set the value, as the CLI shows them as they are.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `--gpus` does not name GPUs this machine has.
    #[error("--gpus {spec}: {source}")]
    Gpus {
        /// The flag's value.
        spec: String,
        /// Why.
        source: DeviceError,
    },
    /// A device does not open (its message starts with `device`, hence `--device ...`).
    #[error("--{0}")]
    Device(DeviceError),
    /// The health endpoint's address cannot be bound.
    #[error("--health-listen {addr}")]
    HealthListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An agent's task panicked or was cancelled.
    #[error("worker task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An agent stopped with an error.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The opened devices of a worker process, one agent each.
#[derive(Debug)]
pub struct Devices(Vec<(String, Device)>);

impl Devices {
    /// The GPUs of `gpus` (`all` or ordinals) if given, else `device` alone. Opened before
    /// anything else, so a CPU build or a machine without a driver says so first.
    pub fn open(gpus: Option<&str>, device: &str) -> Result<Self, FleetError> {
        let names: Vec<String> = match gpus {
            Some(g) => device::gpu_list(g)
                .map_err(|source| FleetError::Gpus {
                    spec: g.to_string(),
                    source,
                })?
                .into_iter()
                .map(|n| format!("cuda:{n}"))
                .collect(),
            None => vec![device.to_string()],
        };
        let opened = names
            .into_iter()
            .map(|n| device::open(&n).map(|d| (n, d)))
            .collect::<Result<_, _>>()
            .map_err(FleetError::Device)?;
        Ok(Devices(opened))
    }
}

/// Settings of a worker process, shared by its agents.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Coordinator URL.
    pub coordinator: String,
    /// Shared token, if the coordinator requires one.
    pub token: Option<String>,
    /// TLS settings for an `https://` coordinator.
    pub tls: ClientTls,
    /// Name for logs and `status`; with several devices each agent adds its device.
    pub name: String,
    /// Compute threads of each agent.
    pub threads: usize,
    /// Folder of the default model.
    pub models_dir: PathBuf,
    /// More folders a spec's model may be in (besides `models_dir`); nowhere else.
    pub model_roots: Vec<PathBuf>,
    /// Where jobs' input files are written; with several devices, a folder per device.
    pub work_dir: PathBuf,
    /// Memory for resident models on each device, bytes.
    pub model_memory: u64,
    /// Serve `/livez` and `/readyz` here, if anywhere.
    pub health_listen: Option<SocketAddr>,
    /// Each agent stops after this long without a shard to compute.
    pub exit_when_idle: Option<Duration>,
}

/// Runs one agent per device until each stops: on its own (`exit_when_idle`, an error) or
/// drained once `shutdown` resolves (each finishes its current shard). Returns what each did,
/// in device order.
pub async fn run(
    cfg: FleetConfig,
    devices: Devices,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Vec<AgentSummary>, FleetError> {
    let several = devices.0.len() > 1;
    let health = cfg.health_listen.map(|_| Arc::new(Health::default()));
    let (drain, drained) = watch::channel(false);
    if let (Some(addr), Some(h)) = (cfg.health_listen, health.clone()) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| FleetError::HealthListen { addr, source })?;
        tracing::info!("health on http://{}/livez and /readyz", l.local_addr()?);
        let mut stop = drained.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = health::serve(l, h, done).await {
                tracing::error!("health endpoint: {e}");
            }
        });
    }
    let on_shutdown = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("draining: finishing the current shard");
        let _ = drain.send(true);
    });
    let tasks: Vec<_> = devices
        .0
        .into_iter()
        .map(|(dev, device)| {
            // One agent per GPU: each registers on its own, named after its device.
            let suffix = dev.replace(':', "");
            let a = AgentConfig {
                coordinator: cfg.coordinator.clone(),
                token: cfg.token.clone(),
                tls: cfg.tls.clone(),
                name: if several {
                    format!("{}-{suffix}", cfg.name)
                } else {
                    cfg.name.clone()
                },
                device: dev,
                threads: cfg.threads,
                models_dir: cfg.models_dir.clone(),
                models: ModelAccess::under(&cfg.models_dir, &cfg.model_roots),
                work_dir: if several {
                    cfg.work_dir.join(&suffix)
                } else {
                    cfg.work_dir.clone()
                },
                health: health.clone(),
                exit_when_idle: cfg.exit_when_idle,
            };
            let cache = Arc::new(ModelCache::on(cfg.model_memory, device));
            tokio::spawn(agent::run(a, cache, drained.clone()))
        })
        .collect();
    let mut out = vec![];
    for t in tasks {
        out.push(t.await??);
    }
    // Every agent stopped: dropping the drain sender also stops the health endpoint.
    on_shutdown.abort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_name_the_flag() {
        // This machine has no GPU.
        let e = Devices::open(Some("0,x"), "cpu").unwrap_err().to_string();
        assert_eq!(e, "--gpus 0,x: device `cuda:x` is not cpu or cuda:N");
        let e = Devices::open(None, "gpu").unwrap_err().to_string();
        assert_eq!(e, "--device `gpu` is not cpu or cuda:N");
    }

    #[tokio::test]
    async fn a_shutdown_drains_every_agent_even_without_a_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FleetConfig {
            // Nothing listens on port 1: the agent keeps retrying its registration.
            coordinator: "http://127.0.0.1:1".into(),
            token: None,
            tls: ClientTls::default(),
            name: "t".into(),
            threads: 1,
            models_dir: dir.path().into(),
            model_roots: vec![],
            work_dir: dir.path().into(),
            model_memory: 1 << 20,
            health_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            exit_when_idle: None,
        };
        let devices = Devices::open(None, "cpu").unwrap();
        let shutdown = tokio::time::sleep(Duration::from_millis(200));
        let done = tokio::time::timeout(Duration::from_secs(30), run(cfg, devices, shutdown))
            .await
            .expect("drained in time")
            .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].shards_done, 0);
    }
}
