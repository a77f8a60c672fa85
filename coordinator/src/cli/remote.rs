//! The distributed commands: `coordinator`, `worker`, `submit`, `status`, `cancel`, `delete`,
//! `results`.
//! The two servers are composed in their crates (`process`, `fleet`); here their flags become
//! configs and SIGINT or SIGTERM their shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use circuit_sweep_coordinator::client::{self, Submission};
use circuit_sweep_coordinator::incoming::ConnLimits;
use circuit_sweep_coordinator::process;
use circuit_sweep_coordinator::scheduler::limits;
use circuit_sweep_coordinator::server::ServerConfig;
use circuit_sweep_proto::auth;
use circuit_sweep_proto::tls::{ClientTls, ServerTls};
use circuit_sweep_worker::fleet::{self, Devices, FleetConfig};
use clap::Args;

/// The shared token: given, or read from a file.
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// Shared token required on every call (prefer the env var or a file: flags show in `ps`).
    #[arg(long, env = "CIRCUIT_SWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token (first line).
    #[arg(long, env = "CIRCUIT_SWEEP_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

impl TokenArgs {
    fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            check_token("--token (or CIRCUIT_SWEEP_TOKEN)", t)?;
            return Ok(Some(t.clone()));
        }
        match &self.token_file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("--token-file {}", f.display()))?;
                let t = text.lines().next().unwrap_or("").trim().to_string();
                if t.is_empty() {
                    bail!("--token-file {}: the file is empty", f.display());
                }
                check_token(&format!("--token-file {}", f.display()), &t)?;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }
}

/// Refuses a token no client could send, or that guards nothing: empty, or with a character
/// outside visible ASCII (an HTTP header carries it).
fn check_token(source: &str, t: &str) -> anyhow::Result<()> {
    if t.is_empty() {
        bail!("{source}: the token is empty (give a secret, or no token at all on loopback)");
    }
    if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
        bail!(
            "{source}: the token holds {c:?}; tokens travel in a header and may hold only visible ASCII characters"
        );
    }
    Ok(())
}

/// Where the coordinator is.
#[derive(Debug, Args, Clone)]
pub struct Remote {
    /// Coordinator URL.
    #[arg(
        long,
        env = "CIRCUIT_SWEEP_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl Remote {
    async fn connect(&self) -> anyhow::Result<auth::Client> {
        let tls = self.tls.resolve()?;
        Ok(auth::connect_with(&self.coordinator, self.token.resolve()?.as_deref(), &tls).await?)
    }
}

/// TLS settings of a client or worker (for an `https://` coordinator URL).
#[derive(Debug, Args, Clone)]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) that signed the coordinator's certificate (default: the system's
    /// roots).
    #[arg(long, env = "CIRCUIT_SWEEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a coordinator started with --tls-client-ca.
    #[arg(
        long = "tls-cert",
        env = "CIRCUIT_SWEEP_TLS_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(
        long = "tls-key",
        env = "CIRCUIT_SWEEP_TLS_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Name the coordinator's certificate must carry (default: the URL's host).
    #[arg(long, env = "CIRCUIT_SWEEP_TLS_DOMAIN")]
    tls_domain: Option<String>,
}

impl ClientTlsArgs {
    fn resolve(&self) -> anyhow::Result<ClientTls> {
        Ok(ClientTls::from_files(
            self.tls_ca.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
            self.tls_domain.clone(),
        )?)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Arguments of `coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, env = "CIRCUIT_SWEEP_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// State folder: the job database and results folders; a restart resumes its jobs.
    #[arg(long, env = "CIRCUIT_SWEEP_STATE", default_value = "coordinator-state")]
    state: PathBuf,
    #[command(flatten)]
    token: TokenArgs,
    /// A separate token for workers (default: the shared token). Workers holding only this one
    /// cannot submit jobs or read results.
    #[arg(long, env = "CIRCUIT_SWEEP_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Heartbeat interval asked of workers, in milliseconds (10 to 600000).
    #[arg(long, env = "CIRCUIT_SWEEP_HEARTBEAT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    heartbeat_ms: u64,
    /// A worker silent this long (ms, at least twice the heartbeat) is lost and its shards are
    /// re-queued.
    #[arg(long, env = "CIRCUIT_SWEEP_LOST_AFTER_MS", default_value_t = 10000)]
    lost_after_ms: u64,
    /// Connections open at once on each listening port (gRPC, dashboard); more are closed as
    /// they arrive.
    #[arg(long, env = "CIRCUIT_SWEEP_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// A new connection that sends nothing for this long (ms) is closed.
    #[arg(long, env = "CIRCUIT_SWEEP_FIRST_BYTE_TIMEOUT_MS", default_value_t = 10000,
          value_parser = clap::value_parser!(u64).range(1..))]
    first_byte_timeout_ms: u64,
    /// TLS certificate chain (PEM); with --tls-key the coordinator speaks TLS only.
    #[arg(long, env = "CIRCUIT_SWEEP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CIRCUIT_SWEEP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) from workers and clients.
    #[arg(long, env = "CIRCUIT_SWEEP_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Registered workers at most; more are refused.
    #[arg(long, env = "CIRCUIT_SWEEP_MAX_WORKERS", default_value_t = limits::DEFAULT_MAX_WORKERS)]
    max_workers: usize,
    /// The most one result stream may take, in MiB, whatever its shard can produce.
    #[arg(long, env = "CIRCUIT_SWEEP_MAX_RESULT_MIB", default_value_t = limits::DEFAULT_MAX_RESULT_BYTES >> 20)]
    max_result_mib: u64,
    /// Active leases one worker may hold (a worker computes one shard at a time).
    #[arg(long, env = "CIRCUIT_SWEEP_MAX_LEASES_PER_WORKER", default_value_t = limits::DEFAULT_MAX_LEASES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_leases_per_worker: u64,
    /// Seconds a lease may go without progress before its shard goes to another worker
    /// (longer for a job whose shards have taken longer: 4 times its longest).
    #[arg(long, env = "CIRCUIT_SWEEP_LEASE_TIMEOUT_S", default_value_t = limits::DEFAULT_LEASE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=30 * 86400))]
    lease_timeout_s: u64,
    /// Serve the live dashboard (jobs, workers, progress, heatmaps) on this address; open it as
    /// `http://ADDR/#token=TOKEN`. Its API takes the same token as the gRPC API.
    #[arg(long, env = "CIRCUIT_SWEEP_DASHBOARD")]
    dashboard: Option<SocketAddr>,
    /// Delete finished jobs (done, failed, cancelled), with their stored results and results
    /// folders, this many days after they ended (fractions allowed; default: keep forever).
    #[arg(long, env = "CIRCUIT_SWEEP_KEEP_FINISHED_DAYS")]
    keep_finished_days: Option<f64>,
}

/// Runs the coordinator until SIGINT or SIGTERM.
pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    let token = a.token.resolve()?;
    if token.is_none() && !a.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without a token: anyone who can reach it can submit jobs",
            a.listen
        );
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(ServerTls::from_files(c, k, a.tls_client_ca.as_deref())?),
        _ => None,
    };
    if tls.is_none() && !a.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without TLS: the token and the data travel in clear text \
             (give --tls-cert and --tls-key)",
            a.listen
        );
    }
    let mut cfg = ServerConfig::new(&a.state);
    cfg.tls = tls;
    cfg.client_tokens = token.iter().cloned().collect();
    cfg.worker_tokens = match &a.worker_token {
        Some(w) => {
            check_token("--worker-token (or CIRCUIT_SWEEP_WORKER_TOKEN)", w)?;
            vec![w.clone()]
        }
        None => cfg.client_tokens.clone(),
    };
    if a.lost_after_ms < 2 * a.heartbeat_ms {
        bail!(
            "--lost-after-ms {}: must be at least twice --heartbeat-ms ({}), or a worker on time would be declared lost",
            a.lost_after_ms,
            a.heartbeat_ms
        );
    }
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.lost_after = Duration::from_millis(a.lost_after_ms);
    cfg.max_workers = a.max_workers;
    cfg.max_result_bytes = a.max_result_mib.saturating_mul(1 << 20);
    cfg.max_leases = a.max_leases_per_worker as usize;
    cfg.lease_timeout = Duration::from_secs(a.lease_timeout_s);
    cfg.keep_finished = a
        .keep_finished_days
        .map(|d| {
            Duration::try_from_secs_f64(d * 86_400.0).map_err(|_| {
                anyhow::anyhow!(
                    "--keep-finished-days {d}: must be a number of days, 0 or more (leave it out to keep jobs forever)"
                )
            })
        })
        .transpose()?;
    cfg.connections = ConnLimits {
        max_connections: a.max_connections as usize,
        first_byte: Duration::from_millis(a.first_byte_timeout_ms),
    };
    runtime()?.block_on(process::run(a.listen, cfg, a.dashboard, shutdown_signal()))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Arguments of `worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    remote: Remote,
    /// Device to compute on (`cpu`, `cuda:N` in CUDA builds).
    #[arg(long, env = "CIRCUIT_SWEEP_DEVICE", default_value = "cpu")]
    device: String,
    /// One worker per GPU in this process: `all` (the GPUs `CUDA_VISIBLE_DEVICES` shows) or
    /// ordinals `0,1` (CUDA builds; replaces --device).
    #[arg(long, env = "CIRCUIT_SWEEP_GPUS")]
    gpus: Option<String>,
    /// Compute threads (default: every core).
    #[arg(long, env = "CIRCUIT_SWEEP_THREADS")]
    threads: Option<usize>,
    /// A name for logs and `status` (default: host name and process id).
    #[arg(long, env = "CIRCUIT_SWEEP_WORKER_NAME")]
    name: Option<String>,
    /// Where jobs' input files are written (default: a temporary folder).
    #[arg(long, env = "CIRCUIT_SWEEP_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// More folders a spec's model may be in, besides --models-dir (repeat, or separate with
    /// `:`). A worker reads models nowhere else.
    #[arg(
        long = "model-root",
        env = "CIRCUIT_SWEEP_MODEL_ROOTS",
        value_delimiter = ':'
    )]
    model_roots: Vec<PathBuf>,
    /// Memory for resident models, in MiB (least recently used models are evicted beyond it).
    #[arg(long, env = "CIRCUIT_SWEEP_MODEL_MEMORY_MB", default_value_t = 16384)]
    model_memory_mb: u64,
    /// Serve `GET /livez` and `GET /readyz` on this address, for orchestrators' probes.
    #[arg(long, env = "CIRCUIT_SWEEP_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Exit 0 after this many seconds without a shard to compute (counted from the start and
    /// from the last shard): workers of a batch job (Kubernetes Job, array job) end when the
    /// sweep is done.
    #[arg(long, env = "CIRCUIT_SWEEP_EXIT_WHEN_IDLE")]
    exit_when_idle: Option<f64>,
}

impl WorkerArgs {
    /// The compute threads asked for.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

/// Runs a worker until SIGTERM (then drains: finishes its shard and says goodbye).
pub fn worker(a: WorkerArgs, models_dir: &Path) -> anyhow::Result<()> {
    // Open the devices before anything else: a CPU build or a machine without a driver says so.
    let devices = Devices::open(a.gpus.as_deref(), &a.device)?;
    let tmp = tempfile::tempdir()?;
    let name = a.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let cfg = FleetConfig {
        coordinator: a.remote.coordinator.clone(),
        token: a.remote.token.resolve()?,
        tls: a.remote.tls.resolve()?,
        name,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        models_dir: models_dir.to_path_buf(),
        model_roots: a.model_roots.clone(),
        work_dir: a.work_dir.unwrap_or_else(|| tmp.path().to_path_buf()),
        model_memory: a.model_memory_mb << 20,
        health_listen: a.health_listen,
        exit_when_idle: a
            .exit_when_idle
            .map(|s| Duration::from_secs_f64(s.max(0.0))),
    };
    for s in runtime()?.block_on(fleet::run(cfg, devices, shutdown_signal()))? {
        tracing::info!(
            "worker stopped: {} shards done, {} failed",
            s.shards_done,
            s.shards_failed
        );
    }
    Ok(())
}

/// Arguments of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The sweep spec (TOML).
    spec: PathBuf,
    #[command(flatten)]
    remote: Remote,
    /// Wait for the job to finish, with a progress bar.
    #[arg(long, env = "CIRCUIT_SWEEP_WAIT")]
    wait: bool,
    /// With --wait: download the results folder here.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT", requires = "wait")]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, env = "CIRCUIT_SWEEP_QUIET")]
    quiet: bool,
}

/// Submits a spec.
pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let s = Submission::from_file(&a.spec)?;
    if let Some(out) = &a.out {
        client::make_out(out)?;
    }
    runtime()?.block_on(async move {
        let mut c = a.remote.connect().await?;
        let job = client::submit(&mut c, &s).await?;
        println!("job {job}");
        if a.wait {
            let st = client::wait(&mut c, job, !a.quiet).await?;
            println!(
                "job {job} done: {} shards in {:.1} s",
                st.shards_total, st.elapsed_s
            );
            if let Some(out) = &a.out {
                let n = client::download(&mut c, job, out).await?;
                println!("wrote {} ({n} files)", out.display());
            }
        }
        anyhow::Ok(())
    })
}

/// Arguments of `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    remote: Remote,
    /// Give up after this many seconds.
    #[arg(long, env = "CIRCUIT_SWEEP_HEALTH_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,
}

/// Checks a coordinator: it answers its health RPC with our protocol version, and, when a
/// token is given, its scheduler answers a status call with it (so a readiness probe also
/// catches a wrong token or a wedged scheduler). Exits non-zero with the reason otherwise.
pub fn health(a: HealthArgs) -> anyhow::Result<()> {
    let url = a.remote.coordinator.clone();
    let limit = Duration::from_secs_f64(a.timeout.max(0.1));
    runtime()?.block_on(async move {
        let check = async {
            let tls = a.remote.tls.resolve()?;
            let h = auth::probe(&url, &tls).await?;
            if h.protocol_version != circuit_sweep_proto::PROTOCOL_VERSION {
                bail!(
                    "{url} speaks protocol {} (coordinator {}), this binary {}",
                    h.protocol_version,
                    h.version,
                    circuit_sweep_proto::PROTOCOL_VERSION
                );
            }
            let mut jobs = None;
            if a.remote.token.resolve()?.is_some() {
                let mut c = a.remote.connect().await?;
                jobs = Some(client::status(&mut c, None).await?.jobs.len());
            }
            anyhow::Ok((h, jobs))
        };
        let (h, jobs) = tokio::time::timeout(limit, check)
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {limit:?}"))??;
        match jobs {
            Some(n) => println!(
                "ok: coordinator {} (protocol {}) at {url}, {n} jobs",
                h.version, h.protocol_version
            ),
            None => println!(
                "ok: coordinator {} (protocol {}) at {url}",
                h.version, h.protocol_version
            ),
        }
        anyhow::Ok(())
    })
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A job (default: every job).
    job: Option<u64>,
    #[command(flatten)]
    remote: Remote,
    /// Print JSON.
    #[arg(long, env = "CIRCUIT_SWEEP_JSON")]
    json: bool,
}

/// Prints jobs and workers.
pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut c = a.remote.connect().await?;
        let r = client::status(&mut c, a.job).await?;
        if a.json {
            let jobs: Vec<serde_json::Value> = r
                .jobs
                .iter()
                .map(|j| {
                    serde_json::json!({
                        "job": j.job_id, "name": j.name, "kind": j.kind, "state": j.state,
                        "error": j.error, "shards": {"total": j.shards_total, "done": j.shards_done,
                        "leased": j.shards_leased, "queued": j.shards_queued, "requeued": j.requeued},
                        "elapsed_s": j.elapsed_s, "eta_s": j.eta_s,
                    })
                })
                .collect();
            let workers: Vec<serde_json::Value> = r
                .workers
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "worker": w.worker_id, "name": w.name, "device": w.device,
                        "threads": w.threads, "leases": w.leases, "shards_done": w.shards_done,
                        "last_seen_ms": w.last_seen_ms, "models": w.models,
                        "profile": w.profile,
                    })
                })
                .collect();
            let doc = serde_json::json!({"jobs": jobs, "workers": workers,
                "workers_omitted": r.workers_omitted});
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return anyhow::Ok(());
        }
        println!(
            "{:>5}  {:<20} {:<7} {:<9} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8}",
            "job", "name", "kind", "state", "done", "leased", "queued", "total", "elapsed", "eta"
        );
        for j in &r.jobs {
            let eta = if j.eta_s < 0.0 {
                "-".to_string()
            } else {
                format!("{:.0}s", j.eta_s)
            };
            println!(
                "{:>5}  {:<20} {:<7} {:<9} {:>6} {:>6} {:>6} {:>6} {:>7.0}s {:>8}",
                j.job_id,
                j.name,
                j.kind,
                j.state,
                j.shards_done,
                j.shards_leased,
                j.shards_queued,
                j.shards_total,
                j.elapsed_s,
                eta
            );
            if !j.error.is_empty() {
                println!("       error: {}", j.error);
            }
        }
        match r.workers_omitted {
            0 => println!("{} workers", r.workers.len()),
            n => println!("{} workers ({n} more not shown)", r.workers.len() + n as usize),
        }
        for w in &r.workers {
            println!(
                "  {} {} ({}, {}, {} threads): {} shards done, holding {}, seen {} ms ago",
                w.worker_id,
                w.name,
                w.device,
                w.profile,
                w.threads,
                w.shards_done,
                w.leases.len(),
                w.last_seen_ms
            );
        }
        anyhow::Ok(())
    })
}

/// Arguments of `cancel` and `delete`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job.
    job: u64,
    #[command(flatten)]
    remote: Remote,
}

/// Cancels a job.
pub fn cancel(a: JobArgs) -> anyhow::Result<()> {
    on_job(a, "cancelled", client::cancel)
}

/// Deletes a finished job.
pub fn delete(a: JobArgs) -> anyhow::Result<()> {
    on_job(a, "deleted", client::delete)
}

/// Makes one call about `a.job`, then says what became of it.
fn on_job(
    a: JobArgs,
    became: &str,
    call: impl AsyncFnOnce(&mut auth::Client, u64) -> Result<(), client::ClientError>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut c = a.remote.connect().await?;
        call(&mut c, a.job).await?;
        println!("job {} {became}", a.job);
        anyhow::Ok(())
    })
}

/// Arguments of `results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The job.
    job: u64,
    /// Folder to write the results into.
    #[arg(long, env = "CIRCUIT_SWEEP_OUT")]
    out: PathBuf,
    #[command(flatten)]
    remote: Remote,
}

/// Downloads a finished job's results folder.
pub fn results(a: ResultsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut c = a.remote.connect().await?;
        let n = client::download(&mut c, a.job, &a.out).await?;
        println!("wrote {} ({n} files)", a.out.display());
        anyhow::Ok(())
    })
}
