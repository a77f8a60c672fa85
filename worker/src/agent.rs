//! The worker loop: register with the coordinator, pull shards, compute them on resident models,
//! stream the score tensors back. Heartbeats run on their own task so a long forward pass never
//! delays them; on shutdown the worker stops pulling, finishes the shard it holds and says
//! goodbye.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circuit_sweep_common::shard::ShardTask;
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::auth::{self, Client};
use circuit_sweep_proto::job_inputs;
use circuit_sweep_proto::tensor::{MAX_CHUNK_BYTES, WireTensor, result_messages};
use circuit_sweep_proto::tls::ClientTls;
use circuit_sweep_proto::v1::{
    FailRequest, GoodbyeRequest, HeartbeatRequest, LeaseProgress, LeaseRequest, ResultChunk,
    ShardLease, WorkerInfo,
};
use tokio::sync::watch;

use crate::health::Health;
use crate::job::{self, PreparedJob, ShardError};
use crate::model_access::ModelAccess;
use crate::profile;
use crate::resident::ModelCache;
use crate::shard;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator URL (`http://host:port`).
    pub coordinator: String,
    /// Shared token, if the coordinator requires one.
    pub token: Option<String>,
    /// TLS settings for an `https://` coordinator.
    pub tls: ClientTls,
    /// A name for logs and `status`.
    pub name: String,
    /// Device (`cpu`, `cuda:N`).
    pub device: String,
    /// Compute threads.
    pub threads: usize,
    /// Folder of the default model.
    pub models_dir: PathBuf,
    /// Where a spec's model path may point.
    pub models: ModelAccess,
    /// Where jobs' input files are written.
    pub work_dir: PathBuf,
    /// Where this agent reports its health (`worker --health-listen`), if anywhere.
    pub health: Option<Arc<Health>>,
    /// Stop (say goodbye, exit cleanly) after this long without a shard to compute: for a
    /// batch job's workers, which must end when the sweep is done. `None`: serve forever.
    pub exit_when_idle: Option<Duration>,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinator refused the worker (token, protocol version).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    /// The worker's own settings cannot work (TLS files, URL).
    #[error("{0}")]
    Config(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentSummary {
    /// Shards computed and delivered.
    pub shards_done: usize,
    /// Shards that failed.
    pub shards_failed: usize,
}

/// A lease in progress: its cancel flag (set when the coordinator revokes it) and its progress
/// (units of work done, reported with each heartbeat so that the lease does not expire).
#[derive(Default)]
struct Running {
    cancel: AtomicBool,
    progress: AtomicU64,
}

/// Leases in progress (shared with the heartbeat task).
type Active = Arc<Mutex<HashMap<String, Arc<Running>>>>;

/// Runs a worker until `shutdown` turns true (then drains) or the coordinator refuses it.
pub async fn run(
    cfg: AgentConfig,
    cache: Arc<ModelCache>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<AgentSummary, AgentError> {
    let mut summary = AgentSummary::default();
    let mut jobs = Prepared::default();
    let mut busy_at = std::time::Instant::now();
    'session: loop {
        if *shutdown.borrow() {
            return Ok(summary);
        }
        let Some(Registered {
            mut client,
            worker_id,
            heartbeat_ms,
            lost_after,
        }) = register(&cfg, &cache, &mut shutdown).await?
        else {
            return Ok(summary);
        };
        tracing::info!("{} registered as {}", cfg.name, auth::id_label(&worker_id));
        if let Some(h) = &cfg.health {
            h.registered(&cfg.name, &worker_id, lost_after);
        }
        let active: Active = Arc::default();
        let lost = Arc::new(AtomicBool::new(false));
        let hb = tokio::spawn(heartbeats(
            client.clone(),
            worker_id.clone(),
            heartbeat_ms,
            active.clone(),
            lost.clone(),
            cache.clone(),
            cfg.health.clone().map(|h| (h, cfg.name.clone())),
        ));
        loop {
            if *shutdown.borrow() {
                leave(&cfg, &mut client, &worker_id, hb).await;
                tracing::info!("{} drained and said goodbye", cfg.name);
                return Ok(summary);
            }
            if lost.load(Ordering::Relaxed) {
                hb.abort();
                let w = auth::id_label(&worker_id);
                tracing::warn!("the coordinator no longer knows {w}: registering again");
                continue 'session;
            }
            let reply = client
                .lease(LeaseRequest {
                    worker_id: worker_id.clone(),
                    held_inputs: jobs.held(),
                })
                .await;
            let lease = match reply {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    hb.abort();
                    tracing::warn!("{}: registering again", s.message());
                    continue 'session;
                }
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    hb.abort();
                    return Err(AgentError::Refused(s.message().to_string()));
                }
                Err(s) => {
                    tracing::warn!("lease: {}", s.message());
                    wait(&mut shutdown, 500).await;
                    continue;
                }
            };
            let Some(l) = lease.lease else {
                if let Some(idle) = cfg.exit_when_idle
                    && busy_at.elapsed() >= idle
                {
                    leave(&cfg, &mut client, &worker_id, hb).await;
                    tracing::info!(
                        "{}: no shard for {:.0?}, stopping (--exit-when-idle)",
                        cfg.name,
                        busy_at.elapsed()
                    );
                    return Ok(summary);
                }
                wait(&mut shutdown, lease.retry_ms.max(10) as u64).await;
                continue;
            };
            let running = Arc::new(Running::default());
            active
                .lock()
                .expect("active lock")
                .insert(l.lease_id.clone(), running.clone());
            let lease_id = l.lease_id.clone();
            let outcome = compute(&cfg, &cache, &mut jobs, l, running).await;
            let sent = match outcome {
                Ok(tensors) => send_result(&mut client, &worker_id, &lease_id, tensors)
                    .await
                    .map(|_| true),
                Err(ShardError::Cancelled) => {
                    tracing::info!("lease {lease_id} revoked");
                    Ok(false)
                }
                Err(e) => {
                    tracing::warn!("shard of lease {lease_id} failed: {e}");
                    summary.shards_failed += 1;
                    client
                        .fail(FailRequest {
                            worker_id: worker_id.clone(),
                            lease_id: lease_id.clone(),
                            retryable: e.retryable(),
                            reason: e.to_string(),
                        })
                        .await
                        .map(|_| false)
                }
            };
            active.lock().expect("active lock").remove(&lease_id);
            busy_at = std::time::Instant::now();
            match sent {
                Ok(true) => summary.shards_done += 1,
                Ok(false) => {}
                Err(s) => tracing::warn!("lease {lease_id}: the coordinator said {}", s.message()),
            }
        }
    }
}

/// Stops heartbeats and says goodbye, so the coordinator forgets this worker at once.
async fn leave(
    cfg: &AgentConfig,
    client: &mut Client,
    worker_id: &str,
    hb: tokio::task::JoinHandle<()>,
) {
    hb.abort();
    if let Some(h) = &cfg.health {
        h.unregistered(&cfg.name);
    }
    let _ = client
        .goodbye(GoodbyeRequest {
            worker_id: worker_id.to_string(),
        })
        .await;
}

/// Sleeps `ms`, or less when shutdown is asked.
async fn wait(shutdown: &mut watch::Receiver<bool>, ms: u64) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = shutdown.changed() => {}
    }
}

/// A session with the coordinator.
struct Registered {
    client: Client,
    worker_id: String,
    /// Heartbeat interval the coordinator asks for.
    heartbeat_ms: u32,
    /// Silence after which the coordinator declares this worker lost.
    lost_after: Duration,
}

/// Connects and registers, retrying while the coordinator is unreachable; `None` on shutdown.
async fn register(
    cfg: &AgentConfig,
    cache: &ModelCache,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Registered>, AgentError> {
    // Settings that can never work fail now instead of being retried forever.
    cfg.tls
        .config_for(&cfg.coordinator)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut delay = 100u64;
    let mut attempts = 0u32;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        attempts += 1;
        if let Some(h) = &cfg.health {
            h.tick(&cfg.name);
        }
        match auth::connect_with(&cfg.coordinator, cfg.token.as_deref(), &cfg.tls).await {
            Ok(mut client) => {
                let info = WorkerInfo {
                    protocol_version: PROTOCOL_VERSION,
                    name: cfg.name.clone(),
                    device: cfg.device.clone(),
                    memory_bytes: total_memory(),
                    models: cache.resident(),
                    threads: cfg.threads as u32,
                    profile: profile::numeric_profile(&cfg.device),
                };
                match client.register(info).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let lost_after = Duration::from_millis(r.lost_after_ms as u64);
                        return Ok(Some(Registered {
                            client,
                            worker_id: r.worker_id,
                            heartbeat_ms: r.heartbeat_ms.max(50),
                            lost_after,
                        }));
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::PermissionDenied
                                | tonic::Code::InvalidArgument
                        ) =>
                    {
                        return Err(AgentError::Refused(s.message().to_string()));
                    }
                    Err(s) => tracing::warn!("register: {}", s.message()),
                }
            }
            // Quiet while a coordinator starts; then say why, now and then (a certificate the
            // worker does not trust looks like this too).
            Err(e) if attempts == 5 || attempts.is_multiple_of(30) => {
                tracing::warn!("{e} (attempt {attempts}, still trying)")
            }
            Err(e) => tracing::debug!("{e}"),
        }
        wait(shutdown, delay).await;
        delay = (delay * 2).min(2000);
    }
}

/// Sends heartbeats every `ms` on its own task; marks revoked leases and a forgotten worker.
async fn heartbeats(
    mut client: Client,
    worker_id: String,
    ms: u32,
    active: Active,
    lost: Arc<AtomicBool>,
    cache: Arc<ModelCache>,
    health: Option<(Arc<Health>, String)>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(ms as u64));
    loop {
        tick.tick().await;
        if let Some((h, name)) = &health {
            h.tick(name);
        }
        let (leases, progress) = active
            .lock()
            .expect("active lock")
            .iter()
            .map(|(id, r)| {
                let done = r.progress.load(Ordering::Relaxed);
                (
                    id.clone(),
                    LeaseProgress {
                        lease_id: id.clone(),
                        done,
                    },
                )
            })
            .unzip();
        let req = HeartbeatRequest {
            worker_id: worker_id.clone(),
            leases,
            models: cache.resident(),
            progress,
        };
        match client.heartbeat(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if let Some((h, name)) = &health
                    && r.known
                {
                    h.acked(name);
                }
                let a = active.lock().expect("active lock");
                for id in &r.revoked {
                    if let Some(run) = a.get(id) {
                        run.cancel.store(true, Ordering::Relaxed);
                    }
                }
                if !r.known {
                    for run in a.values() {
                        run.cancel.store(true, Ordering::Relaxed);
                    }
                    lost.store(true, Ordering::Relaxed);
                    if let Some((h, name)) = &health {
                        h.unregistered(name);
                    }
                    return;
                }
            }
            Err(s) => tracing::debug!("heartbeat: {}", s.message()),
        }
    }
}

/// Jobs prepared on this worker, oldest first.
#[derive(Default)]
struct Prepared(Vec<(String, Arc<PreparedJob>)>);

/// What identifies a job's inputs: the hash of its spec and attachments (its id alone is not
/// enough, since a coordinator started afresh counts from 1 again while this worker keeps
/// running). A coordinator that predates `inputs_hash` leaves it empty: computed here then.
fn job_key(l: &ShardLease) -> String {
    if l.inputs_hash.is_empty() {
        job_inputs::hash_of(&l.spec_toml, &l.attachments)
    } else {
        l.inputs_hash.clone()
    }
}

impl Prepared {
    /// The inputs this worker holds, newest first (what a lease request lists).
    fn held(&self) -> Vec<String> {
        self.0
            .iter()
            .rev()
            .take(job_inputs::MAX_HELD_INPUTS)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Prepares the job if needed and computes the shard on a blocking thread.
async fn compute(
    cfg: &AgentConfig,
    cache: &Arc<ModelCache>,
    jobs: &mut Prepared,
    l: ShardLease,
    running: Arc<Running>,
) -> Result<Vec<WireTensor>, ShardError> {
    let task: ShardTask = serde_json::from_str(&l.task_json)
        .map_err(|e| ShardError::BadInput(format!("shard task: {e}")))?;
    tracing::debug!(
        "job {} shard {} ({}), attempt {}",
        l.job_id,
        l.shard,
        task.label(),
        l.attempt
    );
    // Every log line of this shard's work, on whichever thread, names the job, shard and
    // attempt.
    let span = tracing::info_span!(
        "shard",
        job = l.job_id,
        shard = l.shard,
        attempt = l.attempt
    );
    let key = job_key(&l);
    let job = match jobs.0.iter().find(|(k, _)| *k == key) {
        Some((_, j)) => j.clone(),
        None if l.spec_toml.is_empty() => {
            // Sent without inputs this worker no longer holds: another worker will take it.
            return Err(ShardError::Internal(format!(
                "the lease came without the job's inputs ({key}), which this worker does not hold"
            )));
        }
        None => {
            let dir = cfg.work_dir.join(format!("job-{}", l.job_id));
            let (spec, copies) = materialize(&l, &dir)?;
            let cache = cache.clone();
            let (models_dir, access) = (cfg.models_dir.clone(), cfg.models.clone());
            let span = span.clone();
            let job = tokio::task::spawn_blocking(move || {
                span.in_scope(|| job::prepare(&spec, &dir, &models_dir, &access, &cache))
            })
            .await
            .map_err(|e| ShardError::Internal(format!("prepare panicked: {e}")))?
            .map_err(|e| match e {
                // Name the user's files, not this worker's copies of them.
                ShardError::BadInput(m) => {
                    ShardError::BadInput(copies.iter().fold(m, |m, (path, name)| {
                        m.replace(&path.display().to_string(), name)
                    }))
                }
                e => e,
            })?;
            let job = Arc::new(job);
            // Keep the two most recent jobs (their evaluators hold the cached activations).
            if jobs.0.len() >= 2 {
                jobs.0.remove(0);
            }
            jobs.0.push((key, job.clone()));
            job
        }
    };
    let out = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let mut progress = |_, _| {
                running.progress.fetch_add(1, Ordering::Relaxed);
            };
            shard::execute(&job, &task, &running.cancel, &mut progress)
        })
    })
    .await
    .map_err(|e| ShardError::Internal(format!("shard panicked: {e}")))??;
    Ok(out.encode())
}

/// Writes a lease's attachments into `dir` and points the spec at them; returns the spec and
/// each local copy with the name the spec gave it.
fn materialize(
    l: &ShardLease,
    dir: &Path,
) -> Result<(SweepSpec, Vec<(PathBuf, String)>), ShardError> {
    let mut spec = SweepSpec::parse(&l.spec_toml, Path::new("spec.toml"))
        .map_err(|e| ShardError::BadInput(e.to_string()))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| ShardError::BadInput(format!("{}: {e}", dir.display())))?;
    let mut copies = vec![];
    for (i, a) in l.attachments.iter().enumerate() {
        let base = Path::new(&a.name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let local = dir.join(format!("{i}-{base}"));
        std::fs::write(&local, &a.data)
            .map_err(|e| ShardError::BadInput(format!("{}: {e}", local.display())))?;
        let named = Path::new(&a.name);
        if spec.data.file.as_deref() == Some(named) {
            spec.data.file = Some(local.clone());
        }
        if spec.sweep.orders_file.as_deref() == Some(named) {
            spec.sweep.orders_file = Some(local.clone());
        }
        if spec.sweep.circuit_file.as_deref() == Some(named) {
            spec.sweep.circuit_file = Some(local.clone());
        }
        if spec.sweep.extends.as_deref() == Some(named) {
            spec.sweep.extends = Some(local.clone());
        }
        for f in spec.sweep.scores_files.iter_mut().flatten() {
            if f.as_path() == named {
                *f = local.clone();
            }
        }
        copies.push((local, a.name.clone()));
    }
    // A worker reads only the files sent with the job, never a path of its own disk that a
    // client names.
    let named = [
        ("[data] file", spec.data.file.as_ref()),
        ("[sweep] orders_file", spec.sweep.orders_file.as_ref()),
        ("[sweep] circuit_file", spec.sweep.circuit_file.as_ref()),
    ]
    .into_iter()
    .chain(
        spec.sweep
            .scores_files
            .iter()
            .flatten()
            .map(|f| ("[sweep] scores_files", Some(f))),
    );
    for (field, f) in named {
        if let Some(f) = f
            && !copies.iter().any(|(local, _)| local == f)
        {
            return Err(ShardError::BadInput(format!(
                "{field}: `{}` was not sent with the job (a worker reads only the files submitted with it)",
                f.display()
            )));
        }
    }
    Ok((spec, copies))
}

/// Streams a shard's tensors in chunks over a bounded channel (a slow coordinator slows us).
async fn send_result(
    client: &mut Client,
    worker_id: &str,
    lease_id: &str,
    tensors: Vec<WireTensor>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ResultChunk>(4);
    let (w, l) = (worker_id.to_string(), lease_id.to_string());
    let producer = tokio::spawn(async move {
        let chunks: Vec<_> = tensors
            .iter()
            .flat_map(|t| t.chunks(MAX_CHUNK_BYTES))
            .collect();
        for msg in result_messages(&w, &l, chunks) {
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    let r = client
        .put_result(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    producer.abort();
    r.map(|_| ())
}

/// Physical memory of this machine in bytes (0 when unknown).
fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_the_spec_names_but_the_lease_does_not_carry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lease = |attachments: Vec<circuit_sweep_proto::v1::Attachment>| ShardLease {
            spec_toml: "[data]\nfile = \"/etc/passwd\"\n".into(),
            attachments,
            ..Default::default()
        };
        let e = materialize(&lease(vec![]), dir.path()).err().unwrap();
        assert!(
            e.to_string()
                .contains("[data] file: `/etc/passwd` was not sent with the job"),
            "{e}"
        );
        let sent = circuit_sweep_proto::v1::Attachment {
            name: "/etc/passwd".into(),
            data: b"{}".to_vec(),
        };
        let (spec, copies) = materialize(&lease(vec![sent]), dir.path()).unwrap();
        assert_eq!(spec.data.file.as_ref(), Some(&copies[0].0));
        assert!(copies[0].0.starts_with(dir.path()));
    }
}
