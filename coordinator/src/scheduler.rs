//! The scheduler: jobs, shards, workers and leases. One owner (a mutex the server holds briefly)
//! changes this state; every way a worker can be lost (heartbeat timeout, broken result stream,
//! drain) goes through [`Scheduler::worker_lost`], which re-queues its shards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use circuit_sweep_common::analysis::downstream;
use circuit_sweep_common::edge_prune::EdgePruneResult;
use circuit_sweep_common::prune::PruneResult;
use circuit_sweep_common::shard::{self, JobMeta, NodeShard, ShardTask};
use circuit_sweep_common::spec::{SweepKind, SweepSpec};
use circuit_sweep_common::{Component, circuit, orders};
use circuit_sweep_proto::tensor::{self, WireTensor};
use circuit_sweep_proto::v1::{JobStatus, ShardLease, WorkerInfo, WorkerStatus};

use crate::aggregate::{self, Collected};
use crate::store::{JobRecord, JobState, ShardRecord, Store, StoreError};

/// Failures of one shard (reported by workers) before its job fails.
pub const MAX_ATTEMPTS: u32 = 3;

/// Refused (malformed) results of one shard before its job fails: a worker build that keeps
/// sending bad tensors must not loop forever.
pub const MAX_REFUSALS: u32 = 5;

/// Why a scheduler call was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// Unknown worker (never registered, lost, or the coordinator restarted).
    #[error("unknown worker {0}")]
    UnknownWorker(String),
    /// Unknown job.
    #[error("no job {0}")]
    UnknownJob(u64),
    /// Unknown lease, or a lease of another worker.
    #[error("lease {0} is not held by this worker")]
    NotYourLease(String),
    /// A result that does not fit its shard.
    #[error("malformed result for job {job} shard {shard}: {why}")]
    Malformed {
        /// Job.
        job: u64,
        /// Shard.
        shard: u32,
        /// What was wrong.
        why: String,
    },
    /// A spec that cannot be used.
    #[error("{0}")]
    BadSpec(String),
    /// The job's results are not ready.
    #[error("{0}")]
    NotReady(String),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq)]
enum ShardState {
    Queued,
    Leased { lease: String },
    Done,
}

struct Job {
    rec: JobRecord,
    spec: SweepSpec,
    shards: Vec<(ShardState, ShardRecord)>,
    started: Instant,
    /// Shards done in this coordinator's lifetime, for the ETA.
    done_here: u32,
}

struct Worker {
    info: WorkerInfo,
    last_seen: Instant,
    leases: BTreeSet<String>,
    shards_done: u32,
}

struct Lease {
    job: u64,
    shard: u32,
    worker: String,
    /// False once revoked (worker lost, job cancelled); a result may still arrive and is
    /// accepted if the shard is not done yet, since shards are idempotent.
    active: bool,
}

/// A job's results so far (see [`Scheduler::partial`]).
#[derive(Debug, Clone)]
pub struct Partial {
    /// The sweep kind.
    pub kind: SweepKind,
    /// The pruning rule (a % threshold, or KL's tau).
    pub rule: circuit_sweep_common::greedy::Rule,
    /// What scores are measured in.
    pub unit: circuit_sweep_common::metric::Unit,
    /// Shards done.
    pub shards_done: usize,
    /// Model shape (0 until the prepare shard is done).
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// Node shards done.
    pub nodes: Vec<NodeShard>,
    /// Pruning runs done (one per threshold of a pruning job, one per order of a study).
    pub runs: Vec<PruneResult>,
    /// Orders in an order study (0 for other kinds).
    pub orders_total: usize,
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// Heartbeat interval asked of workers.
    pub heartbeat: Duration,
    /// A worker silent this long is lost.
    pub lost_after: Duration,
    /// Where results folders go.
    pub results_dir: PathBuf,
}

/// The scheduler state.
pub struct Scheduler {
    cfg: SchedConfig,
    store: Store,
    jobs: BTreeMap<u64, Job>,
    workers: BTreeMap<String, Worker>,
    leases: HashMap<String, Lease>,
    next_worker: u64,
    next_lease: u64,
    /// Lease ids are unguessable: a worker can only write to shards it was given.
    nonce: u64,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Scheduler {
    /// Opens the state under `state_dir`, resuming every unfinished job: shards whose results
    /// are stored stay done, the rest are queued again.
    pub fn open(state_dir: &Path, cfg: SchedConfig) -> Result<Self, SchedError> {
        let store = Store::open(state_dir)?;
        let mut jobs = BTreeMap::new();
        for (rec, shard_recs) in store.load()? {
            let spec = SweepSpec::parse(&rec.spec_toml, Path::new("spec.toml"))
                .map_err(|e| SchedError::BadSpec(format!("stored job {}: {e}", rec.id)))?;
            let shards: Vec<(ShardState, ShardRecord)> = shard_recs
                .into_iter()
                .map(|r| {
                    let s = if r.done {
                        ShardState::Done
                    } else {
                        ShardState::Queued
                    };
                    (s, r)
                })
                .collect();
            if !rec.state.is_final() {
                let done = shards.iter().filter(|s| s.0 == ShardState::Done).count();
                tracing::info!(
                    "resuming job {} ({}): {done} of {} shards done",
                    rec.id,
                    rec.name,
                    shards.len()
                );
            }
            jobs.insert(
                rec.id,
                Job {
                    rec,
                    spec,
                    shards,
                    started: Instant::now(),
                    done_here: 0,
                },
            );
        }
        let mut s = Scheduler {
            cfg,
            store,
            jobs,
            workers: BTreeMap::new(),
            leases: HashMap::new(),
            next_worker: 1,
            next_lease: 1,
            nonce: random_u64(),
        };
        // A job whose last shard was stored before a crash but not aggregated.
        let ids: Vec<u64> = s.jobs.keys().copied().collect();
        for id in ids {
            s.finish_if_complete(id)?;
        }
        Ok(s)
    }

    /// Heartbeat settings for workers.
    pub fn heartbeat_settings(&self) -> (Duration, Duration) {
        (self.cfg.heartbeat, self.cfg.lost_after)
    }

    /// Accepts a job: the spec must parse and validate; its inputs are stored with it.
    pub fn submit(
        &mut self,
        name: &str,
        spec_toml: &str,
        attachments: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, SchedError> {
        let spec = SweepSpec::parse(spec_toml, Path::new(name))
            .map_err(|e| SchedError::BadSpec(e.to_string()))?;
        for wanted in spec.input_files() {
            let w = wanted.display().to_string();
            if !attachments.iter().any(|(n, _)| *n == w) {
                return Err(SchedError::BadSpec(format!(
                    "{name}: the spec names {w} but the submission does not include it"
                )));
            }
        }
        let id = self.jobs.keys().next_back().map_or(1, |k| k + 1);
        let rec = JobRecord {
            id,
            name: name.to_string(),
            spec_toml: spec_toml.to_string(),
            attachments: attachments.iter().map(|(n, _)| n.clone()).collect(),
            state: JobState::Queued,
            error: None,
            submitted_unix: now_unix(),
            finished_unix: None,
            meta: None,
            shards: vec![ShardTask::Prepare],
            orders: None,
            circuit: None,
        };
        let data: Vec<Vec<u8>> = attachments.into_iter().map(|(_, d)| d).collect();
        self.store.put_job(&rec, Some(&data))?;
        let shard_rec = ShardRecord::default();
        self.store.put_shards(None, &[(id, 0, &shard_rec)])?;
        tracing::info!("job {id} ({name}) submitted: {:?} sweep", spec.sweep.kind);
        self.jobs.insert(
            id,
            Job {
                rec,
                spec,
                shards: vec![(ShardState::Queued, shard_rec)],
                started: Instant::now(),
                done_here: 0,
            },
        );
        Ok(id)
    }

    /// Registers a worker and returns its id.
    pub fn register(&mut self, info: WorkerInfo, now: Instant) -> String {
        let id = format!("w{}-{:04x}", self.next_worker, self.nonce & 0xffff);
        self.next_worker += 1;
        tracing::info!(
            "worker {id} ({}, {}, {} threads) registered",
            info.name,
            info.device,
            info.threads
        );
        self.workers.insert(
            id.clone(),
            Worker {
                info,
                last_seen: now,
                leases: BTreeSet::new(),
                shards_done: 0,
            },
        );
        id
    }

    /// A heartbeat: returns the leases the worker should abandon.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        holding: &[String],
        models: Vec<String>,
        now: Instant,
    ) -> Result<Vec<String>, SchedError> {
        let w = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| SchedError::UnknownWorker(worker.into()))?;
        w.last_seen = now;
        w.info.models = models;
        Ok(holding
            .iter()
            .filter(|l| !w.leases.contains(*l))
            .cloned()
            .collect())
    }

    /// The next queued shard for `worker`, if any: oldest job first, shards in plan order.
    pub fn lease(&mut self, worker: &str, now: Instant) -> Result<Option<ShardLease>, SchedError> {
        let w = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| SchedError::UnknownWorker(worker.into()))?;
        w.last_seen = now;
        let found = self.jobs.iter().find_map(|(&id, j)| {
            if j.rec.state.is_final() {
                return None;
            }
            j.shards
                .iter()
                .position(|s| s.0 == ShardState::Queued)
                .map(|i| (id, i))
        });
        let Some((job_id, i)) = found else {
            return Ok(None);
        };
        let lease_id = format!("{:016x}-{}", self.nonce ^ random_u64(), self.next_lease);
        self.next_lease += 1;
        let job = self.jobs.get_mut(&job_id).expect("found above");
        job.shards[i].0 = ShardState::Leased {
            lease: lease_id.clone(),
        };
        job.shards[i].1.attempts += 1;
        let attempt = job.shards[i].1.attempts;
        let task = job.rec.shards[i].clone();
        self.store
            .put_shards(None, &[(job_id, i as u32, &job.shards[i].1)])?;
        let attachments = self
            .store
            .attachments(job_id, job.rec.attachments.len())?
            .into_iter()
            .zip(&job.rec.attachments)
            .map(|(data, name)| circuit_sweep_proto::v1::Attachment {
                name: name.clone(),
                data,
            })
            .collect();
        self.workers
            .get_mut(worker)
            .expect("checked above")
            .leases
            .insert(lease_id.clone());
        self.leases.insert(
            lease_id.clone(),
            Lease {
                job: job_id,
                shard: i as u32,
                worker: worker.to_string(),
                active: true,
            },
        );
        tracing::debug!(
            "job {job_id} shard {i} ({}) leased to {worker}, attempt {attempt}",
            task.label()
        );
        Ok(Some(ShardLease {
            lease_id,
            job_id,
            shard: i as u32,
            attempt,
            spec_toml: job.rec.spec_toml.clone(),
            attachments,
            task_json: serde_json::to_string(&task).expect("tasks serialize"),
        }))
    }

    /// Where a lease points: `(job, shard)`, if the lease belongs to `worker`.
    pub fn lease_target(&self, worker: &str, lease: &str) -> Result<(u64, u32), SchedError> {
        match self.leases.get(lease) {
            Some(l) if l.worker == worker => Ok((l.job, l.shard)),
            _ => Err(SchedError::NotYourLease(lease.into())),
        }
    }

    /// A complete result stream. The first complete result of a shard wins; a late duplicate
    /// is dropped (`Ok(false)`). A result that does not fit its shard is refused and the
    /// attempt counts as failed.
    pub fn complete(
        &mut self,
        worker: &str,
        lease: &str,
        tensors: Vec<WireTensor>,
    ) -> Result<bool, SchedError> {
        let (job_id, shard) = self.lease_target(worker, lease)?;
        let active = self.leases.get(lease).is_some_and(|l| l.active);
        self.end_lease(lease);
        let job = self
            .jobs
            .get_mut(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        let s = shard as usize;
        if job.shards[s].0 == ShardState::Done || job.rec.state.is_final() {
            tracing::info!(
                "dropped a late duplicate result of job {job_id} shard {shard} from {worker}"
            );
            return Ok(false);
        }
        if let Err(why) = check_result(job, s, &tensors) {
            let e = SchedError::Malformed {
                job: job_id,
                shard,
                why,
            };
            if active {
                self.requeue(job_id, shard, &e.to_string())?;
            }
            return Err(e);
        }
        job.shards[s].0 = ShardState::Done;
        job.shards[s].1.done = true;
        job.done_here += 1;
        self.store
            .put_result(job_id, shard, &job.shards[s].1, &tensors)?;
        if let Some(w) = self.workers.get_mut(worker) {
            w.shards_done += 1;
        }
        tracing::debug!("job {job_id} shard {shard} done by {worker}");
        if s == 0 {
            self.plan(job_id, &tensors)?;
        }
        self.finish_if_complete(job_id)?;
        Ok(true)
    }

    /// A failed attempt reported by the worker.
    pub fn fail(
        &mut self,
        worker: &str,
        lease: &str,
        retryable: bool,
        reason: &str,
    ) -> Result<(), SchedError> {
        let (job_id, shard) = self.lease_target(worker, lease)?;
        let active = self.leases.get(lease).is_some_and(|l| l.active);
        self.end_lease(lease);
        tracing::warn!("job {job_id} shard {shard} failed on {worker}: {reason}");
        if !active {
            // Revoked already: the shard was re-queued or its job ended.
            return Ok(());
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.shards[shard as usize].1.failures += 1;
        }
        self.requeue_or_fail(job_id, shard, reason, retryable)
    }

    /// A refused (malformed) result stream: the lease ends and its shard is queued again.
    pub fn refuse(&mut self, worker: &str, lease: &str, why: &str) -> Result<(), SchedError> {
        let (job_id, shard) = self.lease_target(worker, lease)?;
        let active = self.leases.get(lease).is_some_and(|l| l.active);
        self.end_lease(lease);
        tracing::warn!("refused a result of job {job_id} shard {shard} from {worker}: {why}");
        if active {
            self.requeue(job_id, shard, why)?;
        }
        Ok(())
    }

    /// The one path for a lost worker (heartbeat timeout, broken stream, drain): its leased
    /// shards go back to the queue.
    pub fn worker_lost(&mut self, worker: &str, why: &str) -> Result<(), SchedError> {
        let Some(w) = self.workers.remove(worker) else {
            return Ok(());
        };
        if why == "drained" {
            tracing::info!("worker {worker} ({}) drained", w.info.name);
        } else {
            tracing::warn!("worker {worker} ({}) lost: {why}", w.info.name);
        }
        for lease in w.leases {
            let Some(l) = self.leases.get_mut(&lease) else {
                continue;
            };
            l.active = false;
            let (job_id, shard) = (l.job, l.shard);
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if job.shards[shard as usize].0 == (ShardState::Leased { lease }) {
                job.shards[shard as usize].0 = ShardState::Queued;
                job.shards[shard as usize].1.requeued += 1;
                tracing::warn!(
                    "re-queued job {job_id} shard {shard} ({}): worker {worker} lost",
                    job.rec.shards[shard as usize].label()
                );
                self.store
                    .put_shards(None, &[(job_id, shard, &job.shards[shard as usize].1)])?;
            }
        }
        Ok(())
    }

    /// Declares lost every worker silent for longer than `lost_after`.
    pub fn tick(&mut self, now: Instant) -> Result<(), SchedError> {
        let late: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > self.cfg.lost_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.worker_lost(&id, "heartbeat timeout")?;
        }
        Ok(())
    }

    /// Cancels a job: nothing more is leased, leases in flight are revoked.
    pub fn cancel(&mut self, job_id: u64) -> Result<(), SchedError> {
        let job = self
            .jobs
            .get_mut(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        if job.rec.state.is_final() {
            return Ok(());
        }
        job.rec.state = JobState::Cancelled;
        job.rec.finished_unix = Some(now_unix());
        self.store.put_job(&job.rec, None)?;
        self.revoke_job(job_id);
        tracing::info!("job {job_id} cancelled");
        Ok(())
    }

    /// Status of one job (or every job) and of the workers.
    pub fn status(
        &self,
        job: Option<u64>,
        now: Instant,
    ) -> Result<(Vec<JobStatus>, Vec<WorkerStatus>), SchedError> {
        if let Some(id) = job
            && !self.jobs.contains_key(&id)
        {
            return Err(SchedError::UnknownJob(id));
        }
        let jobs = self
            .jobs
            .values()
            .filter(|j| job.is_none_or(|id| id == j.rec.id))
            .map(|j| {
                let count = |f: &dyn Fn(&ShardState) -> bool| {
                    j.shards.iter().filter(|s| f(&s.0)).count() as u32
                };
                let done = count(&|s| *s == ShardState::Done);
                let leased = count(&|s| matches!(s, ShardState::Leased { .. }));
                let queued = count(&|s| *s == ShardState::Queued);
                // For the ETA: time in this coordinator's lifetime (shards done here).
                let elapsed = now.duration_since(j.started).as_secs_f64();
                // Shown: since submission, across restarts, until the job ended.
                let wall = j.rec.finished_unix.unwrap_or_else(now_unix) - j.rec.submitted_unix;
                let total = j.shards.len() as u32;
                let eta = if j.rec.state.is_final() {
                    0.0
                } else if j.done_here > 0 && j.rec.meta.is_some() {
                    elapsed / j.done_here as f64 * (total - done) as f64
                } else {
                    -1.0
                };
                JobStatus {
                    job_id: j.rec.id,
                    name: j.rec.name.clone(),
                    state: j.rec.state.name().into(),
                    error: j.rec.error.clone().unwrap_or_default(),
                    shards_total: total,
                    shards_done: done,
                    shards_leased: leased,
                    shards_queued: queued,
                    requeued: j.shards.iter().map(|s| s.1.requeued).sum(),
                    elapsed_s: wall.max(0.0),
                    eta_s: eta,
                    kind: format!("{:?}", j.spec.sweep.kind).to_lowercase(),
                }
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                worker_id: id.clone(),
                name: w.info.name.clone(),
                device: w.info.device.clone(),
                threads: w.info.threads,
                leases: w.leases.iter().cloned().collect(),
                shards_done: w.shards_done,
                last_seen_ms: now.duration_since(w.last_seen).as_millis() as u64,
                models: w.info.models.clone(),
            })
            .collect();
        Ok((jobs, workers))
    }

    /// Shards of a job done so far (`None`: no such job).
    pub fn shards_done(&self, job_id: u64) -> Option<usize> {
        let job = self.jobs.get(&job_id)?;
        Some(
            job.shards
                .iter()
                .filter(|s| s.0 == ShardState::Done)
                .count(),
        )
    }

    /// What a job's finished shards hold so far (node scores, pruning runs), read back from the
    /// store: the dashboard draws it while the job runs.
    pub fn partial(&self, job_id: u64) -> Result<Partial, SchedError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        let mut p = Partial {
            kind: job.spec.sweep.kind,
            rule: job.spec.rule(),
            unit: circuit_sweep_common::metric::Unit::of(job.spec.ablation.metric),
            shards_done: 0,
            n_layers: job.rec.meta.as_ref().map_or(0, |m| m.n_layers),
            n_heads: job.rec.meta.as_ref().map_or(0, |m| m.n_heads),
            nodes: vec![],
            runs: vec![],
            orders_total: job.rec.orders.as_ref().map_or(0, Vec::len),
        };
        for (i, task) in job.rec.shards.iter().enumerate() {
            if job.shards.get(i).is_none_or(|s| s.0 != ShardState::Done) {
                continue;
            }
            p.shards_done += 1;
            let wanted = matches!(
                task,
                ShardTask::Nodes { .. } | ShardTask::Prune | ShardTask::Orders { .. }
            );
            let Some(ts) = wanted
                .then(|| self.store.result(job_id, i as u32))
                .transpose()?
                .flatten()
            else {
                continue;
            };
            match task {
                ShardTask::Nodes { .. } => p.nodes.push(decode_nodes(job, i, &ts)?),
                _ => p.runs.extend(decode_runs(&ts)?),
            }
        }
        Ok(p)
    }

    /// The results folder of a finished job.
    pub fn results_dir(&self, job_id: u64) -> Result<PathBuf, SchedError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        match job.rec.state {
            JobState::Done => Ok(self.cfg.results_dir.join(job_id.to_string())),
            JobState::Failed => Err(SchedError::NotReady(format!(
                "job {job_id} failed: {}",
                job.rec.error.clone().unwrap_or_default()
            ))),
            s => {
                let done = job
                    .shards
                    .iter()
                    .filter(|s| s.0 == ShardState::Done)
                    .count();
                Err(SchedError::NotReady(format!(
                    "job {job_id} is {}: {done} of {} shards done",
                    s.name(),
                    job.shards.len()
                )))
            }
        }
    }

    fn end_lease(&mut self, lease: &str) {
        if let Some(l) = self.leases.remove(lease)
            && let Some(w) = self.workers.get_mut(&l.worker)
        {
            w.leases.remove(lease);
        }
    }

    fn revoke_job(&mut self, job_id: u64) {
        for (id, l) in self.leases.iter_mut() {
            if l.job == job_id && l.active {
                l.active = false;
                if let Some(w) = self.workers.get_mut(&l.worker) {
                    w.leases.remove(id);
                }
            }
        }
    }

    fn requeue_or_fail(
        &mut self,
        job_id: u64,
        shard: u32,
        reason: &str,
        retryable: bool,
    ) -> Result<(), SchedError> {
        if !self.is_open(job_id, shard)? {
            return Ok(());
        }
        let job = self.jobs.get_mut(&job_id).expect("checked");
        let s = &mut job.shards[shard as usize];
        s.1.last_error = Some(reason.to_string());
        s.1.requeued += 1;
        let label = job.rec.shards[shard as usize].label();
        if !retryable || s.1.failures >= MAX_ATTEMPTS {
            let why = if retryable {
                format!(
                    "shard {shard} ({label}) failed {} times: {reason}",
                    s.1.failures
                )
            } else {
                format!("shard {shard} ({label}): {reason}")
            };
            tracing::error!("job {job_id} failed: {why}");
            job.rec.state = JobState::Failed;
            job.rec.finished_unix = Some(now_unix());
            job.rec.error = Some(why);
            let rec = s.1.clone();
            self.store
                .put_shards(Some(&job.rec), &[(job_id, shard, &rec)])?;
            self.revoke_job(job_id);
        } else {
            s.0 = ShardState::Queued;
            tracing::warn!("re-queued job {job_id} shard {shard} ({label}): {reason}");
            let rec = s.1.clone();
            self.store.put_shards(None, &[(job_id, shard, &rec)])?;
        }
        Ok(())
    }

    /// Whether a shard still needs a result (not done, its job not finished).
    fn is_open(&self, job_id: u64, shard: u32) -> Result<bool, SchedError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        Ok(job.shards[shard as usize].0 != ShardState::Done && !job.rec.state.is_final())
    }

    /// Puts a shard back in the queue without counting a failure (malformed result).
    fn requeue(&mut self, job_id: u64, shard: u32, reason: &str) -> Result<(), SchedError> {
        if !self.is_open(job_id, shard)? {
            return Ok(());
        }
        let job = self.jobs.get_mut(&job_id).expect("checked");
        let s = &mut job.shards[shard as usize];
        s.1.refused += 1;
        if s.1.refused >= MAX_REFUSALS {
            return self.requeue_or_fail(
                job_id,
                shard,
                &format!("{MAX_REFUSALS} malformed results, the last: {reason}"),
                false,
            );
        }
        s.0 = ShardState::Queued;
        s.1.requeued += 1;
        s.1.last_error = Some(reason.to_string());
        tracing::warn!("re-queued job {job_id} shard {shard}: {reason}");
        let rec = s.1.clone();
        self.store
            .put_shards(None, &[(job_id, shard, &rec)])
            .map_err(SchedError::from)
    }

    /// The text of a job's attachment `name` (submit checked that it is there).
    fn attachment_text(&self, job_id: u64, name: &std::path::Path) -> Result<String, SchedError> {
        let job = &self.jobs[&job_id];
        let name = name.display().to_string();
        let i = job
            .rec
            .attachments
            .iter()
            .position(|n| *n == name)
            .expect("submit checked the attachment");
        let data = self
            .store
            .attachments(job_id, job.rec.attachments.len())?
            .swap_remove(i);
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// The orders of an order study, the node circuit of an edge sweep and the number of edges
    /// in its graph; an error is the job's input at fault.
    #[allow(clippy::type_complexity)]
    fn plan_inputs(
        &self,
        job_id: u64,
        meta: &JobMeta,
    ) -> Result<
        Result<(Option<Vec<Vec<Component>>>, Option<Vec<Component>>, usize), String>,
        SchedError,
    > {
        let spec = self.jobs[&job_id].spec.clone();
        let orders = match (spec.sweep.kind, &spec.sweep.orders_file) {
            (SweepKind::Orders, Some(f)) => {
                let text = self.attachment_text(job_id, f)?;
                match orders::parse_orders(
                    &text,
                    &f.display().to_string(),
                    meta.n_layers,
                    meta.n_heads,
                ) {
                    Ok(o) => Some(o),
                    Err(e) => return Ok(Err(e)),
                }
            }
            (SweepKind::Orders, None) => Some(orders::random_orders(
                meta.n_layers,
                meta.n_heads,
                spec.sweep.orders.unwrap_or(100),
                spec.sweep.seed,
            )),
            _ => None,
        };
        let circuit = match (&spec.sweep.circuit, &spec.sweep.circuit_file) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(f)) => {
                let text = self.attachment_text(job_id, f)?;
                let name = f.display().to_string();
                match circuit::parse_circuit(&text, &name, meta.n_layers, meta.n_heads) {
                    Ok(c) => Some(c),
                    Err(e) => return Ok(Err(e)),
                }
            }
            (None, None) => None,
        };
        let n_edges = if spec.sweep.kind.is_edges() {
            let shape = meta.graph_shape(&spec);
            match &circuit {
                Some(c) => shape.edges_within(c).len(),
                None => shape.edges().len(),
            }
        } else {
            0
        };
        Ok(Ok((orders, circuit, n_edges)))
    }

    /// After `prepare`: plan the sweep from the model's shape.
    fn plan(&mut self, job_id: u64, tensors: &[WireTensor]) -> Result<(), SchedError> {
        let meta: JobMeta = decode_json(tensors, "meta").expect("checked by check_result");
        let inputs = self.plan_inputs(job_id, &meta)?;
        let job = self.jobs.get_mut(&job_id).expect("caller checked");
        let (orders, circuit, n_edges) = match inputs {
            Ok(x) => x,
            Err(e) => {
                job.rec.state = JobState::Failed;
                job.rec.finished_unix = Some(now_unix());
                job.rec.error = Some(e.clone());
                job.rec.meta = Some(meta);
                self.store.put_job(&job.rec, None)?;
                tracing::error!("job {job_id} failed: {e}");
                return Ok(());
            }
        };
        let edge_orders = match job.spec.sweep.kind {
            SweepKind::EdgePrune => job.spec.sweep.orders,
            _ => None,
        };
        let n_sets = match job.spec.sweep.kind {
            SweepKind::Downstream => downstream::study_sets(
                &job.spec.sweep,
                circuit.as_deref(),
                meta.n_layers,
                meta.n_heads,
            )
            .len(),
            _ => 0,
        };
        let planned = shard::plan(
            job.spec.sweep.kind,
            meta.n_layers,
            orders.as_deref(),
            n_edges,
            edge_orders,
            n_sets,
        );
        let first = job.rec.shards.len() as u32;
        job.rec.shards.extend(planned);
        job.rec.orders = orders;
        job.rec.circuit = circuit;
        job.rec.meta = Some(meta);
        job.rec.state = JobState::Running;
        let n = job.rec.shards.len() as u32 - first;
        let fresh: Vec<ShardRecord> = (0..n).map(|_| ShardRecord::default()).collect();
        for r in &fresh {
            job.shards.push((ShardState::Queued, r.clone()));
        }
        let rows: Vec<(u64, u32, &ShardRecord)> = fresh
            .iter()
            .enumerate()
            .map(|(i, r)| (job_id, first + i as u32, r))
            .collect();
        self.store.put_shards(Some(&job.rec), &rows)?;
        tracing::info!("job {job_id} planned: {n} shards");
        Ok(())
    }

    /// Aggregates a job whose shards are all done.
    fn finish_if_complete(&mut self, job_id: u64) -> Result<(), SchedError> {
        let job = self.jobs.get(&job_id).expect("caller checked");
        if job.rec.state != JobState::Running || job.shards.iter().any(|s| s.0 != ShardState::Done)
        {
            return Ok(());
        }
        let mut c = Collected {
            meta: job.rec.meta.clone(),
            circuit: job.rec.circuit.clone(),
            ..Default::default()
        };
        for (i, task) in job.rec.shards.iter().enumerate() {
            let ts = self
                .store
                .result(job_id, i as u32)?
                .ok_or_else(|| SchedError::NotReady(format!("shard {i} has no stored result")))?;
            match task {
                ShardTask::Prepare => {}
                ShardTask::Nodes { .. } => c.nodes.push(decode_nodes(job, i, &ts)?),
                ShardTask::Prune => c.prune = decode_runs(&ts)?,
                ShardTask::Orders { orders, .. } => {
                    c.orders
                        .extend(orders.iter().cloned().zip(decode_runs(&ts)?));
                }
                ShardTask::Edges { count, .. } => c.edges.extend(decode_edges(&ts, *count)?),
                ShardTask::EdgePrune | ShardTask::EdgeOrders { .. } => {
                    let runs: Vec<EdgePruneResult> =
                        decode_json(&ts, "edge_runs").map_err(SchedError::NotReady)?;
                    c.edge_prune.extend(runs);
                }
                ShardTask::Downstream { count, .. } => c.downstream.extend(decode_accuracy(
                    &ts,
                    *count,
                    job.spec.downstream.tasks.len(),
                )?),
            }
        }
        let attempts: u32 = job.shards.iter().map(|s| s.1.attempts).sum();
        let timing = serde_json::json!({
            "seconds": now_unix() - job.rec.submitted_unix,
            "shards": job.shards.len(),
            "shard_attempts": attempts,
        });
        let out = self.cfg.results_dir.join(job_id.to_string());
        let spec = job.spec.clone();
        let job = self.jobs.get_mut(&job_id).expect("checked");
        match aggregate::write(&spec, &c, timing, &out) {
            Ok(_) => {
                job.rec.state = JobState::Done;
                job.rec.finished_unix = Some(now_unix());
                tracing::info!("job {job_id} done: {}", out.display());
            }
            Err(e) => {
                job.rec.state = JobState::Failed;
                job.rec.finished_unix = Some(now_unix());
                job.rec.error = Some(e.to_string());
                tracing::error!("job {job_id} failed: {e}");
            }
        }
        self.store.put_job(&job.rec, None)?;
        Ok(())
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(ts: &[WireTensor], name: &str) -> Result<T, String> {
    let t = tensor::find(ts, name).map_err(|e| e.to_string())?;
    let text = t.to_json_text().map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| format!("tensor `{name}`: {e}"))
}

fn decode_nodes(job: &Job, i: usize, ts: &[WireTensor]) -> Result<NodeShard, SchedError> {
    let ShardTask::Nodes { layers } = &job.rec.shards[i] else {
        unreachable!("a node shard")
    };
    let n_heads = job.rec.meta.as_ref().map_or(0, |m| m.n_heads);
    let bad = |why: String| SchedError::Malformed {
        job: job.rec.id,
        shard: i as u32,
        why,
    };
    let heads = tensor::find(ts, "heads")
        .and_then(|t| t.to_f64(&[layers.len(), n_heads]))
        .map_err(|e| bad(e.to_string()))?;
    let mlps = tensor::find(ts, "mlps")
        .and_then(|t| t.to_f64(&[layers.len()]))
        .map_err(|e| bad(e.to_string()))?;
    Ok(NodeShard {
        layers: layers.clone(),
        heads: heads.chunks(n_heads.max(1)).map(<[f64]>::to_vec).collect(),
        mlps,
    })
}

fn decode_edges(ts: &[WireTensor], count: usize) -> Result<Vec<f64>, SchedError> {
    tensor::find(ts, "edges")
        .and_then(|t| t.to_f64(&[count]))
        .map_err(|e| SchedError::NotReady(e.to_string()))
}

/// `[sets][tasks]` accuracies of a downstream shard, each in 0..=100.
fn decode_accuracy(
    ts: &[WireTensor],
    count: usize,
    tasks: usize,
) -> Result<Vec<Vec<f64>>, SchedError> {
    let flat = tensor::find(ts, "accuracy")
        .and_then(|t| t.to_f64(&[count, tasks]))
        .map_err(|e| SchedError::NotReady(e.to_string()))?;
    if let Some(v) = flat.iter().find(|v| !(0.0..=100.0).contains(*v)) {
        return Err(SchedError::NotReady(format!(
            "accuracy {v} outside 0..=100"
        )));
    }
    Ok(flat.chunks(tasks.max(1)).map(<[f64]>::to_vec).collect())
}

fn decode_runs(ts: &[WireTensor]) -> Result<Vec<PruneResult>, SchedError> {
    decode_json(ts, "runs").map_err(SchedError::NotReady)
}

/// Checks that a result fits its shard before it is stored.
fn check_result(job: &Job, i: usize, ts: &[WireTensor]) -> Result<(), String> {
    for t in ts {
        t.validate().map_err(|e| e.to_string())?;
    }
    match &job.rec.shards[i] {
        ShardTask::Prepare => {
            let meta: JobMeta = decode_json(ts, "meta")?;
            if meta.n_layers == 0 || meta.n_heads == 0 {
                return Err(format!(
                    "model of {} layers and {} heads",
                    meta.n_layers, meta.n_heads
                ));
            }
            Ok(())
        }
        ShardTask::Nodes { .. } => decode_nodes(job, i, ts)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        ShardTask::Edges { count, .. } => decode_edges(ts, *count)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        ShardTask::Downstream { count, .. } => {
            decode_accuracy(ts, *count, job.spec.downstream.tasks.len())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        ShardTask::EdgePrune | ShardTask::EdgeOrders { .. } => {
            let want = match &job.rec.shards[i] {
                ShardTask::EdgeOrders { count, .. } => *count,
                _ => 1,
            };
            let runs: Vec<EdgePruneResult> = decode_json(ts, "edge_runs")?;
            let scores = tensor::find(ts, "scores")
                .and_then(|t| t.to_f64(&[want]))
                .map_err(|e| e.to_string())?;
            if runs.len() != want {
                return Err(format!("{} edge pruning runs, expected {want}", runs.len()));
            }
            let meta = job.rec.meta.as_ref().ok_or("no prepare result yet")?;
            let shape = meta.graph_shape(&job.spec);
            for (r, s) in runs.iter().zip(&scores) {
                if r.score.to_bits() != s.to_bits() {
                    return Err(format!(
                        "run score {} differs from score tensor {s}",
                        r.score
                    ));
                }
                for e in &r.edges {
                    let edge: circuit_sweep_common::edge::Edge =
                        e.parse().map_err(|x| format!("{x}"))?;
                    shape.check(&edge).map_err(|x| x.to_string())?;
                }
            }
            Ok(())
        }
        ShardTask::Prune | ShardTask::Orders { .. } => {
            let want = match &job.rec.shards[i] {
                ShardTask::Orders { orders, .. } => orders.len(),
                _ => job.spec.sweep.thresholds.as_ref().map_or(1, Vec::len),
            };
            let runs: Vec<PruneResult> = decode_json(ts, "runs")?;
            if runs.len() != want {
                return Err(format!("{} runs, expected {want}", runs.len()));
            }
            let scores = tensor::find(ts, "scores")
                .and_then(|t| t.to_f64(&[want]))
                .map_err(|e| e.to_string())?;
            let meta = job.rec.meta.as_ref().ok_or("no prepare result yet")?;
            for (r, s) in runs.iter().zip(&scores) {
                if r.score.to_bits() != s.to_bits() {
                    return Err(format!(
                        "run score {} differs from score tensor {s}",
                        r.score
                    ));
                }
                for c in r.heads.iter().chain(&r.mlps) {
                    let comp: circuit_sweep_common::Component =
                        c.parse().map_err(|e| format!("{e}"))?;
                    comp.check(meta.n_layers, meta.n_heads)
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }
    }
}
