//! The coordinator's gRPC service: checks tokens and protocol versions, turns calls into
//! scheduler operations, reassembles result streams, and serves results folders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circuit_sweep_proto::auth::{self, MAX_MESSAGE_BYTES};
use circuit_sweep_proto::tensor::{Assembler, MAX_CHUNK_BYTES, TensorError};
use circuit_sweep_proto::tls::ServerTls;
use circuit_sweep_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use circuit_sweep_proto::v1::probe_server::{Probe, ProbeServer};
use circuit_sweep_proto::v1::{
    Ack, CancelRequest, DeleteRequest, FailRequest, FileChunk, GoodbyeRequest, Health,
    HealthRequest, HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, RegisterReply,
    ResultChunk, ResultsRequest, StatusReply, StatusRequest, SubmitReply, SubmitRequest,
    WorkerInfo,
};
use circuit_sweep_proto::{PROTOCOL_VERSION, check_protocol_version};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::incoming::{self, ConnLimits};
use crate::scheduler::{
    Completion, Finishing, LostReason, Partial, Planning, ResultsAt, SchedConfig, SchedError,
    Scheduler, SystemClock, limits,
};

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// State folder (database and results folders).
    pub state_dir: PathBuf,
    /// Tokens accepted from clients (submit, status, cancel, results); empty: none required.
    pub client_tokens: Vec<String>,
    /// Tokens accepted from workers; empty: none required.
    pub worker_tokens: Vec<String>,
    /// Heartbeat interval asked of workers.
    pub heartbeat: Duration,
    /// A worker silent this long is lost and its shards re-queued.
    pub lost_after: Duration,
    /// TLS certificate and key (and client CA); plain text when `None`.
    pub tls: Option<ServerTls>,
    /// Open connections and the silence allowed before a first byte.
    pub connections: ConnLimits,
    /// Registered workers at most.
    pub max_workers: usize,
    /// The most one result stream may take, whatever its shard can produce.
    pub max_result_bytes: u64,
    /// Active leases one worker may hold.
    pub max_leases: usize,
    /// How long a lease may go without progress (longer when its job's shards take longer).
    pub lease_timeout: Duration,
    /// Finished jobs are deleted this long after they ended; `None`: kept forever.
    pub keep_finished: Option<Duration>,
}

impl ServerConfig {
    /// Defaults for a state folder: no token, 1 s heartbeats, lost after 10 s, and the limits
    /// of [`limits`].
    pub fn new(state_dir: &Path) -> Self {
        ServerConfig {
            state_dir: state_dir.to_path_buf(),
            client_tokens: vec![],
            worker_tokens: vec![],
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(10),
            tls: None,
            connections: ConnLimits::default(),
            max_workers: limits::DEFAULT_MAX_WORKERS,
            max_result_bytes: limits::DEFAULT_MAX_RESULT_BYTES,
            max_leases: limits::DEFAULT_MAX_LEASES,
            lease_timeout: limits::DEFAULT_LEASE_TIMEOUT,
            keep_finished: None,
        }
    }
}

impl From<SchedError> for Status {
    fn from(e: SchedError) -> Self {
        let m = e.to_string();
        match e {
            SchedError::UnknownWorker(_) | SchedError::UnknownJob(_) => Status::not_found(m),
            SchedError::NotYourLease(_) => Status::permission_denied(m),
            SchedError::Malformed { .. } | SchedError::BadSpec(_) | SchedError::WorkerInfo(_) => {
                Status::invalid_argument(m)
            }
            SchedError::TooManyWorkers(_) => Status::resource_exhausted(m),
            SchedError::NotReady(_) | SchedError::NotFinal { .. } => Status::failed_precondition(m),
            SchedError::CorruptResult { .. } => Status::data_loss(m),
            SchedError::Random(_) | SchedError::Store(_) => Status::internal(m),
        }
    }
}

/// The service.
#[derive(Clone)]
pub struct Service {
    sched: Arc<Mutex<Scheduler>>,
    cfg: Arc<ServerConfig>,
}

impl Service {
    /// Opens the state and resumes its jobs.
    pub fn open(cfg: ServerConfig) -> Result<Self, SchedError> {
        let sched_cfg = SchedConfig {
            heartbeat: cfg.heartbeat,
            lost_after: cfg.lost_after,
            max_workers: cfg.max_workers,
            max_result_bytes: cfg.max_result_bytes,
            max_leases: cfg.max_leases,
            lease_timeout: cfg.lease_timeout,
            keep_finished: cfg.keep_finished,
            ..SchedConfig::new(cfg.state_dir.join("results"))
        };
        let (sched, finishing) = Scheduler::open(&cfg.state_dir, sched_cfg, Arc::new(SystemClock))?;
        let service = Service {
            sched: Arc::new(Mutex::new(sched)),
            cfg: Arc::new(cfg),
        };
        // Jobs stored complete before a restart: aggregated before anything is served.
        for f in finishing {
            service.finish(f)?;
        }
        Ok(service)
    }

    /// Plans a job outside the lock, then records the outcome (and aggregates a job with
    /// nothing left to run).
    fn plan(&self, p: Planning) -> Result<(), SchedError> {
        let outcome = p.run();
        let finishing = self.lock().planned(p.job, p.meta, outcome)?;
        match finishing {
            Some(f) => self.finish(f),
            None => Ok(()),
        }
    }

    /// Aggregates a job outside the lock, then records the outcome.
    fn finish(&self, f: Finishing) -> Result<(), SchedError> {
        let job = f.job;
        let outcome = f.run();
        self.lock().finished(job, outcome)
    }

    /// What each of the coordinator's listeners admits.
    pub fn connection_limits(&self) -> ConnLimits {
        self.cfg.connections
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs and workers now (for the dashboard).
    pub fn status_now(&self) -> Result<StatusReply, SchedError> {
        self.lock().status(None)
    }

    /// Shards of a job done so far, and planned so far; `None` for an unknown job.
    pub fn shard_counts(&self, job_id: u64) -> Option<(usize, usize)> {
        self.lock().shard_counts(job_id)
    }

    /// A job's results so far (see [`Scheduler::partial`]), read outside the lock.
    pub fn partial(&self, job_id: u64) -> Result<Partial, SchedError> {
        let source = self.lock().partial(job_id)?;
        source.read()
    }

    fn worker_auth<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let t: Vec<&str> = self.cfg.worker_tokens.iter().map(String::as_str).collect();
        auth::check_token(r.metadata(), &t)
    }

    fn client_auth<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let t: Vec<&str> = self.cfg.client_tokens.iter().map(String::as_str).collect();
        auth::check_token(r.metadata(), &t)
    }

    /// Every `heartbeat` until the process ends: declares silent workers lost, expires leases,
    /// and deletes finished jobs past `keep_finished` with their results folders. A tick much
    /// later than due means the coordinator itself stalled (its lock held, the process
    /// paused): that time is given back before anyone is declared lost.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            let every = s.cfg.heartbeat;
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = std::time::Instant::now();
            loop {
                t.tick().await;
                let s = s.clone();
                // Deleting jobs writes the database and the disk: off the async threads.
                let r = tokio::task::spawn_blocking(move || {
                    let mut sched = s.lock();
                    let now = std::time::Instant::now();
                    let late = now.duration_since(last).saturating_sub(every);
                    if late > every {
                        sched.forgive(late);
                    }
                    let dirs = sched.tick();
                    drop(sched);
                    for d in dirs.as_deref().unwrap_or_default() {
                        if let Err(e) = remove_results(d) {
                            tracing::error!("{}: {e}", d.display());
                        }
                    }
                    // Removing folders is not a stall: the next tick counts from here.
                    (std::time::Instant::now(), dirs.map(|_| ()))
                })
                .await;
                match r {
                    Ok((now, outcome)) => {
                        last = now;
                        if let Err(e) = outcome {
                            tracing::error!("{e}");
                        }
                    }
                    Err(e) => {
                        last = std::time::Instant::now();
                        tracing::error!("tick: {e}");
                    }
                }
            }
        })
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let ticker = self.spawn_ticker();
        let incoming = incoming::incoming(listener, self.cfg.connections);
        // Peers that vanish without closing are found by pings, not kept forever.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some(tls) = &self.cfg.tls {
            builder = builder.tls_config(tls.config())?;
        }
        let r = builder
            .add_service(ProbeServer::new(self.clone()))
            .add_service(
                CoordinatorServer::new(self)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        ticker.abort();
        r
    }
}

/// Removes a deleted job's results folder (a job that never finished has none).
fn remove_results(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[tonic::async_trait]
impl Probe for Service {
    async fn check(&self, _: Request<HealthRequest>) -> Result<Response<Health>, Status> {
        Ok(Response::new(Health {
            protocol_version: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}

type FileStream = Pin<Box<dyn Stream<Item = Result<FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for Service {
    async fn register(&self, r: Request<WorkerInfo>) -> Result<Response<RegisterReply>, Status> {
        self.worker_auth(&r)?;
        let host = r.remote_addr().map(|a| a.ip());
        let info = r.into_inner();
        check_protocol_version(info.protocol_version)?;
        let mut s = self.lock();
        let id = match host {
            Some(ip) => s.register_from(info, ip)?,
            None => s.register(info)?,
        };
        let (hb, lost) = s.heartbeat_settings();
        Ok(Response::new(RegisterReply {
            worker_id: id,
            heartbeat_ms: hb.as_millis() as u32,
            lost_after_ms: lost.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        r: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        self.worker_auth(&r)?;
        let h = r.into_inner();
        let reply = match self
            .lock()
            .heartbeat(&h.worker_id, &h.leases, h.models, &h.progress)
        {
            Ok(revoked) => HeartbeatReply {
                known: true,
                revoked,
            },
            Err(SchedError::UnknownWorker(_)) => HeartbeatReply {
                known: false,
                revoked: h.leases,
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(reply))
    }

    async fn lease(&self, r: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        self.worker_auth(&r)?;
        let r = r.into_inner();
        let lease = self.lock().lease(&r.worker_id, &r.held_inputs)?;
        Ok(Response::new(LeaseReply {
            lease,
            retry_ms: 200,
        }))
    }

    async fn put_result(
        &self,
        r: Request<Streaming<ResultChunk>>,
    ) -> Result<Response<Ack>, Status> {
        self.worker_auth(&r)?;
        let mut stream = r.into_inner();
        let mut asm = Assembler::new(0);
        let mut who: Option<(String, String)> = None;
        let mut complete = false;
        loop {
            let msg = match stream.next().await {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // A broken stream: the worker is gone (the one lost-worker path).
                    if let Some((w, _)) = &who {
                        let why = LostReason::StreamBroke(e.message().to_string());
                        self.lock().worker_lost(w, why)?;
                    }
                    return Err(Status::aborted(format!(
                        "result stream broke: {}",
                        e.message()
                    )));
                }
            };
            match &who {
                None => {
                    // The lease must be this worker's before we buffer anything, and what its
                    // shard can produce bounds what we buffer.
                    let limit = self.lock().result_limit(&msg.worker_id, &msg.lease_id)?;
                    asm = Assembler::new(limit);
                    who = Some((msg.worker_id.clone(), msg.lease_id.clone()));
                }
                Some((w, l)) if *w != msg.worker_id || *l != msg.lease_id => {
                    return Err(Status::invalid_argument(
                        "a result stream must carry one lease",
                    ));
                }
                _ => {}
            }
            if complete {
                return Err(Status::invalid_argument("chunks after the last one"));
            }
            let chunk = msg
                .chunk
                .ok_or_else(|| Status::invalid_argument("a result message without a chunk"))?;
            if chunk.data.len() > MAX_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "chunk of {} bytes exceeds {MAX_CHUNK_BYTES}",
                    chunk.data.len()
                )));
            }
            if let Err(e) = asm.push(chunk) {
                let (w, l) = who.clone().expect("set above");
                let status = match e {
                    TensorError::OverLimit { .. } => Status::resource_exhausted,
                    _ => Status::invalid_argument,
                };
                let why = format!("malformed score stream: {e}");
                let _ = self.lock().refuse(&w, &l, &why);
                return Err(status(why));
            }
            complete = msg.last;
        }
        let (w, l) = who.ok_or_else(|| Status::invalid_argument("an empty result stream"))?;
        if !complete {
            let _ = self.lock().refuse(
                &w,
                &l,
                "malformed score stream: it ended before its last chunk",
            );
            return Err(Status::invalid_argument(
                "malformed score stream: it ended before its last chunk",
            ));
        }
        let tensors = match asm.finish() {
            Ok(t) => t,
            Err(e) => {
                let _ = self
                    .lock()
                    .refuse(&w, &l, &format!("malformed score stream: {e}"));
                return Err(Status::invalid_argument(format!(
                    "malformed score stream: {e}"
                )));
            }
        };
        // Storing writes the database: off the async threads, and off the lock.
        let s = self.clone();
        let completion = tokio::task::spawn_blocking(move || {
            let Some(r) = s.lock().receive(&w, &l, tensors)? else {
                return Ok(Completion::Duplicate);
            };
            let stored = r.store();
            s.lock().accept(r, stored)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)?;
        // Planning and the results folder are done outside the lock, after the worker's ack.
        let s = self.clone();
        match completion {
            Completion::Finishing(f) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = s.finish(*f) {
                        tracing::error!("{e}");
                    }
                });
            }
            Completion::Planning(p) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = s.plan(*p) {
                        tracing::error!("{e}");
                    }
                });
            }
            Completion::Stored | Completion::Duplicate => {}
        }
        Ok(Response::new(Ack {}))
    }

    async fn fail(&self, r: Request<FailRequest>) -> Result<Response<Ack>, Status> {
        self.worker_auth(&r)?;
        let f = r.into_inner();
        self.lock()
            .fail(&f.worker_id, &f.lease_id, f.retryable, &f.reason)?;
        Ok(Response::new(Ack {}))
    }

    async fn goodbye(&self, r: Request<GoodbyeRequest>) -> Result<Response<Ack>, Status> {
        self.worker_auth(&r)?;
        let w = r.into_inner().worker_id;
        self.lock().worker_lost(&w, LostReason::Drained)?;
        Ok(Response::new(Ack {}))
    }

    async fn submit(&self, r: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        self.client_auth(&r)?;
        let s = r.into_inner();
        check_protocol_version(s.protocol_version)?;
        let files = s
            .attachments
            .into_iter()
            .map(|a| (a.name, a.data))
            .collect();
        let id = self.lock().submit(&s.name, &s.spec_toml, files)?;
        Ok(Response::new(SubmitReply { job_id: id }))
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.client_auth(&r)?;
        let id = r.into_inner().job_id;
        let reply = self.lock().status((id != 0).then_some(id))?;
        Ok(Response::new(reply))
    }

    async fn cancel(&self, r: Request<CancelRequest>) -> Result<Response<Ack>, Status> {
        self.client_auth(&r)?;
        self.lock().cancel(r.into_inner().job_id)?;
        Ok(Response::new(Ack {}))
    }

    async fn delete(&self, r: Request<DeleteRequest>) -> Result<Response<Ack>, Status> {
        self.client_auth(&r)?;
        let id = r.into_inner().job_id;
        let s = self.clone();
        // The database and the results folder are written off the async threads, and the
        // folder removed outside the lock.
        tokio::task::spawn_blocking(move || {
            let dir = s.lock().delete(id)?;
            tracing::info!("job {id} deleted");
            remove_results(&dir).map_err(|e| {
                Status::internal(format!(
                    "job {id} is deleted, but its results folder {} was not removed: {e}",
                    dir.display()
                ))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(Ack {}))
    }

    type ResultsStream = FileStream;

    async fn results(
        &self,
        r: Request<ResultsRequest>,
    ) -> Result<Response<Self::ResultsStream>, Status> {
        self.client_auth(&r)?;
        let job = r.into_inner().job_id;
        let at = self.lock().results(job)?;
        let dir = match at {
            ResultsAt::Ready(dir) => dir,
            ResultsAt::Rebuild(f) => {
                let s = self.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let out = f.rewrite();
                    s.lock().rebuilt(job);
                    out
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
                written.map_err(|e| {
                    Status::data_loss(format!(
                        "job {job}'s results folder was lost and cannot be written again: {e}"
                    ))
                })?
            }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for f in files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let data = match tokio::fs::read(&f).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("{}: {e}", f.display()))))
                            .await;
                        return;
                    }
                };
                let n = data.len().div_ceil(MAX_CHUNK_BYTES).max(1);
                for i in 0..n {
                    let part = &data[(i * MAX_CHUNK_BYTES).min(data.len())
                        ..((i + 1) * MAX_CHUNK_BYTES).min(data.len())];
                    let c = FileChunk {
                        path: name.clone(),
                        offset: (i * MAX_CHUNK_BYTES) as u64,
                        data: part.to_vec(),
                        last: i + 1 == n,
                    };
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
