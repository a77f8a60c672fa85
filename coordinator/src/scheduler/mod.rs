//! The scheduler: jobs, shards, workers and leases. One owner (a mutex the server holds
//! briefly) changes this state; heavy work leaves the lock: a job whose shards are all done is
//! handed out as a [`Finishing`] to aggregate, and a job's partial results are read from a
//! [`PartialSource`]. Every way a worker can be lost (heartbeat timeout, broken result stream,
//! drain, too many refused results) goes through [`Scheduler::worker_lost`], which re-queues its
//! shards.
//!
//! The parts: [`workers`] (registrations and leases), [`ids`] (their unguessable ids),
//! [`limits`] (what a worker token may cost), [`job`] (one job's state machine), [`plan`] (the
//! shards after `prepare`), [`finish`] (aggregation outside the lock) and [`status`] (what
//! clients and the dashboard see).

mod clock;
mod finish;
mod ids;
mod job;
pub mod limits;
mod plan;
mod results;
mod retention;
mod status;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_proto::auth::MAX_MESSAGE_BYTES;
use circuit_sweep_proto::job_inputs::{self, MAX_HELD_INPUTS};
use circuit_sweep_proto::output_size::max_output_bytes;
use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::v1::{LeaseProgress, ShardLease, WorkerInfo};

pub use clock::{Clock, ManualClock, SystemClock};
pub use finish::{Finished, Finishing};
use ids::label;
pub use job::{
    MAX_ATTEMPTS, MAX_LOSSES, MAX_REFUSALS, MAX_REFUSALS_ONE_MACHINE, MIN_REFUSING_WORKERS,
};
pub use plan::{PlanOutcome, Planning};
pub use results::Received;
pub use status::{Partial, PartialSource, ResultsAt};
pub use workers::LostReason;

use crate::store::{JobRecord, JobState, ShardRecord, Store, StoreError};
use job::{Job, Retry, ShardState};
use workers::Workers;

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
    /// Only a finished job (done, failed, cancelled) can be deleted.
    #[error("job {job} is {state}: cancel it first (`circuit-sweep cancel {job}`), then delete it")]
    NotFinal {
        /// Job.
        job: u64,
        /// Its state's name.
        state: &'static str,
    },
    /// A stored shard result no longer decodes.
    #[error("stored result of job {job} shard {shard} is corrupt: {why}")]
    CorruptResult {
        /// Job.
        job: u64,
        /// Shard.
        shard: u32,
        /// What was wrong.
        why: String,
    },
    /// A worker that says too much about itself.
    #[error("registration refused: {0}")]
    WorkerInfo(String),
    /// As many workers as allowed are registered.
    #[error("registration refused: {0} workers are registered, the most this coordinator takes")]
    TooManyWorkers(usize),
    /// The OS's random source failed.
    #[error("no random id: {0}")]
    Random(String),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Registered workers at most.
    pub max_workers: usize,
    /// The most a result stream may take, whatever its shard can produce.
    pub max_result_bytes: u64,
    /// The most the workers of a `status` reply may take, encoded (the rest are counted).
    pub status_worker_bytes: usize,
    /// Active leases one worker may hold.
    pub max_leases: usize,
    /// How long a lease may go without progress (at least; see [`Scheduler::allowance`]).
    pub lease_timeout: Duration,
    /// Finished jobs (done, failed, cancelled) are deleted this long after they ended;
    /// `None`: kept forever.
    pub keep_finished: Option<Duration>,
}

impl SchedConfig {
    /// Defaults: 1 s heartbeats, lost after 10 s, and the limits of [`limits`].
    pub fn new(results_dir: PathBuf) -> Self {
        SchedConfig {
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(10),
            results_dir,
            max_workers: limits::DEFAULT_MAX_WORKERS,
            max_result_bytes: limits::DEFAULT_MAX_RESULT_BYTES,
            // A quarter of a message: jobs share the reply.
            status_worker_bytes: MAX_MESSAGE_BYTES / 4,
            max_leases: limits::DEFAULT_MAX_LEASES,
            lease_timeout: limits::DEFAULT_LEASE_TIMEOUT,
            keep_finished: None,
        }
    }
}

/// What became of a complete result stream.
#[derive(Debug)]
pub enum Completion {
    /// The shard was done already (or its job ended): the result was dropped.
    Duplicate,
    /// Stored; the job goes on.
    Stored,
    /// Stored, and it was the prepare shard: plan the job (outside the lock).
    Planning(Box<Planning>),
    /// Stored, and it was the job's last shard: aggregate it (outside the lock).
    Finishing(Box<Finishing>),
}

/// The scheduler state.
pub struct Scheduler {
    cfg: SchedConfig,
    clock: Arc<dyn Clock>,
    store: Arc<Store>,
    jobs: BTreeMap<u64, Job>,
    workers: Workers,
    /// The highest job id ever given (deleted jobs' included): ids are never reused.
    last_id: u64,
}

impl Scheduler {
    /// Opens the state under `state_dir`, resuming every unfinished job: shards whose results
    /// are stored stay done, the rest are queued again. Returns the jobs whose shards were all
    /// done but whose results folder was not written (to run before serving).
    pub fn open(
        state_dir: &Path,
        cfg: SchedConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Vec<Finishing>), SchedError> {
        let store = Arc::new(Store::open(state_dir)?);
        let mut jobs = BTreeMap::new();
        for (rec, shard_recs) in store.load()? {
            let spec = SweepSpec::parse(&rec.spec_toml, Path::new("spec.toml"))
                .map_err(|e| SchedError::BadSpec(format!("stored job {}: {e}", rec.id)))?;
            let mut job = Job::new(rec, spec, shard_recs, clock.now());
            if !job.rec.state.is_final() {
                let data = store.attachments(job.rec.id, job.rec.attachments.len())?;
                job.inputs_hash = inputs_hash(&job.rec, &data);
                tracing::info!(
                    "resuming job {} ({}): {} of {} shards done",
                    job.rec.id,
                    job.rec.name,
                    job.done(),
                    job.shards.len()
                );
            }
            jobs.insert(job.rec.id, job);
        }
        let mut s = Scheduler {
            workers: Workers::new(cfg.max_workers),
            last_id: store.last_job_id()?,
            cfg,
            clock,
            store,
            jobs,
        };
        let ids: Vec<u64> = s.jobs.keys().copied().collect();
        let mut finishing = vec![];
        for id in ids {
            // A prepare shard stored before a crash but never planned.
            let job = &s.jobs[&id];
            if job.rec.state == JobState::Queued
                && job.shards[0].state == ShardState::Done
                && let ShardOutput::Prepared(meta) = s.stored_output(job, 0)?
                && let Some(p) = s.planning(id, *meta)
            {
                let outcome = p.run();
                finishing.extend(s.planned(id, p.meta, outcome)?);
            }
            // A job whose last shard was stored before a crash but not aggregated.
            finishing.extend(s.finishing(id));
        }
        Ok((s, finishing))
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
        let id = self.last_id + 1;
        let rec = JobRecord {
            id,
            name: name.to_string(),
            spec_toml: spec_toml.to_string(),
            attachments: attachments.iter().map(|(n, _)| n.clone()).collect(),
            state: JobState::Queued,
            error: None,
            submitted_unix: self.clock.unix(),
            finished_unix: None,
            meta: None,
            shards: vec![ShardTask::Prepare],
            orders: None,
            circuit: None,
        };
        let data: Vec<Vec<u8>> = attachments.into_iter().map(|(_, d)| d).collect();
        self.store.put_job(&rec, Some(&data))?;
        let hash = inputs_hash(&rec, &data);
        let shard_rec = ShardRecord::default();
        self.store.put_shards(None, &[(id, 0, &shard_rec)])?;
        tracing::info!("job {id} ({name}) submitted: {:?} sweep", spec.sweep.kind);
        let mut job = Job::new(rec, spec, vec![shard_rec], self.clock.now());
        job.inputs_hash = hash;
        self.jobs.insert(id, job);
        self.last_id = id;
        Ok(id)
    }

    /// Registers a worker and returns its id (secret: the worker calls with it).
    pub fn register(&mut self, info: WorkerInfo) -> Result<String, SchedError> {
        self.workers.register(info, None, self.clock.now())
    }

    /// Registers a worker that connected from `host`: a shard's refused results are counted
    /// by machine (see [`MIN_REFUSING_WORKERS`]).
    pub fn register_from(
        &mut self,
        info: WorkerInfo,
        host: std::net::IpAddr,
    ) -> Result<String, SchedError> {
        self.workers.register(info, Some(host), self.clock.now())
    }

    /// A heartbeat: records the progress of the worker's leases (each advance pushes the
    /// lease's deadline out by its allowance) and returns the leases it should abandon.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        holding: &[String],
        models: Vec<String>,
        progress: &[LeaseProgress],
    ) -> Result<Vec<String>, SchedError> {
        limits::check_models(&models)?;
        let now = self.clock.now();
        let w = self.workers.touch(worker, now)?;
        w.info.models = models;
        let revoked = holding
            .iter()
            .filter(|l| !w.leases.contains(*l))
            .cloned()
            .collect();
        for p in progress {
            let Some(l) = self.workers.active_lease_mut(worker, &p.lease_id) else {
                continue;
            };
            if p.done > l.progress
                && let Some(job) = self.jobs.get(&l.job)
            {
                l.progress = p.done;
                l.deadline = now + allowance(&self.cfg, job);
            }
        }
        Ok(revoked)
    }

    /// The next queued shard for `worker`, if any: oldest job first, shards in plan order,
    /// of the jobs that accept the worker's numeric profile. The job's spec and attachments come with it unless `held` (what the worker holds)
    /// names them.
    pub fn lease(
        &mut self,
        worker: &str,
        held: &[String],
    ) -> Result<Option<ShardLease>, SchedError> {
        let now = self.clock.now();
        self.workers.touch(worker, now)?;
        if self.workers.held(worker) >= self.cfg.max_leases {
            tracing::debug!(
                "{} holds {} leases already",
                label(worker),
                self.cfg.max_leases
            );
            return Ok(None);
        }
        let profile = self.workers.profile(worker);
        let Some((job_id, i)) = self
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.run.profile.as_deref().is_none_or(|p| p == profile))
            .find_map(|(&id, j)| j.next_queued().map(|i| (id, i)))
        else {
            return Ok(None);
        };
        let allowance = allowance(&self.cfg, &self.jobs[&job_id]);
        let lease_id = self
            .workers
            .grant(worker, (job_id, i as u32), now, allowance)?;
        let job = self.jobs.get_mut(&job_id).expect("found above");
        let attempt = job.lease(i, lease_id.clone());
        let task = job.rec.shards[i].clone();
        self.store
            .put_shards(None, &[(job_id, i as u32, &job.shards[i].rec)])?;
        let sent = !held
            .iter()
            .take(MAX_HELD_INPUTS)
            .any(|h| *h == job.inputs_hash);
        let attachments = if sent {
            self.store
                .attachments(job_id, job.rec.attachments.len())?
                .into_iter()
                .zip(&job.rec.attachments)
                .map(|(data, name)| circuit_sweep_proto::v1::Attachment {
                    name: name.clone(),
                    data,
                })
                .collect()
        } else {
            vec![]
        };
        tracing::debug!(
            "job {job_id} shard {i} ({}) leased to {}, attempt {attempt}",
            task.label(),
            label(worker)
        );
        Ok(Some(ShardLease {
            lease_id,
            job_id,
            shard: i as u32,
            attempt,
            spec_toml: if sent {
                job.rec.spec_toml.clone()
            } else {
                String::new()
            },
            attachments,
            task_json: serde_json::to_string(&task).expect("tasks serialize"),
            inputs_hash: job.inputs_hash.clone(),
        }))
    }

    /// The most bytes a result stream of `lease` may take: what its shard can produce, with a
    /// margin, within the configured ceiling; refused unless the lease belongs to `worker`.
    pub fn result_limit(&self, worker: &str, lease: &str) -> Result<u64, SchedError> {
        let l = self.workers.lease(worker, lease)?;
        let job = self.jobs.get(&l.job).ok_or(SchedError::UnknownJob(l.job))?;
        let task = &job.rec.shards[l.shard as usize];
        let most = max_output_bytes(task, &job.spec, job.rec.meta.as_ref());
        Ok(most
            .saturating_add(limits::RESULT_MARGIN)
            .min(self.cfg.max_result_bytes))
    }

    /// Ends a lease of `worker`; returns its target and whether it was still active.
    fn end_lease(&mut self, worker: &str, lease: &str) -> Result<(u64, u32, bool), SchedError> {
        let l = self.workers.lease(worker, lease)?;
        let target = (l.job, l.shard, l.active);
        let took = self.clock.now().saturating_duration_since(l.granted);
        self.workers.end(lease);
        let job = job_in(&mut self.jobs, target.0)?;
        job.longest = job.longest.max(took);
        Ok(target)
    }

    /// A failed attempt reported by the worker.
    pub fn fail(
        &mut self,
        worker: &str,
        lease: &str,
        retryable: bool,
        reason: &str,
    ) -> Result<(), SchedError> {
        let (job_id, shard, active) = self.end_lease(worker, lease)?;
        let reason = limits::reason(reason);
        tracing::warn!(
            "job {job_id} shard {shard} failed on {}: {reason}",
            label(worker)
        );
        if !active || !self.holds(job_id, shard, lease) {
            // Revoked already (the shard was re-queued or its job ended), or another lease's
            // result is being stored for it.
            return Ok(());
        }
        self.retry(job_id, shard, None, |j, unix| {
            j.failed(shard as usize, &reason, retryable, unix)
        })
    }

    /// Whether shard `shard` of `job` is leased as `lease` (not re-queued, done, or claimed by
    /// another lease's result since).
    fn holds(&self, job: u64, shard: u32, lease: &str) -> bool {
        self.jobs.get(&job).is_some_and(|j| {
            matches!(&j.shards[shard as usize].state, ShardState::Leased { lease: l } if l == lease)
        })
    }

    /// A refused (malformed) result stream: the lease ends and its shard is queued again.
    pub fn refuse(&mut self, worker: &str, lease: &str, why: &str) -> Result<(), SchedError> {
        let (job, shard, active) = self.end_lease(worker, lease)?;
        let holds = active && self.holds(job, shard, lease);
        self.refused(worker, (job, shard, holds), why)
    }

    /// Counts a refused result of `worker` for `(job, shard, the lease still holds it)` against
    /// the shard (queued again) and against the worker (dropped after
    /// [`limits::MAX_WORKER_REFUSALS`]).
    fn refused(
        &mut self,
        worker: &str,
        (job_id, shard, active): (u64, u32, bool),
        why: &str,
    ) -> Result<(), SchedError> {
        let why = limits::reason(why);
        tracing::warn!(
            "refused a result of job {job_id} shard {shard} from {}: {why}",
            label(worker)
        );
        if active {
            let who = self.workers.refuser(worker);
            self.retry(job_id, shard, None, |j, unix| {
                j.refused(shard as usize, &who, &why, unix)
            })?;
        }
        let n = self.workers.refused(worker);
        if n >= limits::MAX_WORKER_REFUSALS {
            self.worker_lost(worker, LostReason::Refused(n))?;
            // Unlike a lost worker's, its late results are not wanted.
            self.workers.void_leases(worker);
        }
        Ok(())
    }

    /// Applies a failed, refused or lost attempt to a shard and persists what it changed; a
    /// re-queue is logged with `why`, or the shard's last error.
    fn retry(
        &mut self,
        job_id: u64,
        shard: u32,
        why: Option<&str>,
        f: impl FnOnce(&mut Job, f64) -> Retry,
    ) -> Result<(), SchedError> {
        let unix = self.clock.unix();
        let job = job_in(&mut self.jobs, job_id)?;
        let rec = |j: &Job| j.shards[shard as usize].rec.clone();
        match f(job, unix) {
            Retry::Closed => {}
            Retry::Requeued => {
                let label = job.rec.shards[shard as usize].label();
                let last = job.shards[shard as usize].rec.last_error.as_deref();
                let why = why.or(last).unwrap_or_default();
                tracing::warn!("re-queued job {job_id} shard {shard} ({label}): {why}");
                self.store.put_shards(None, &[(job_id, shard, &rec(job))])?;
            }
            Retry::JobFailed(why) => {
                tracing::error!("job {job_id} failed: {why}");
                self.store
                    .put_shards(Some(&job.rec), &[(job_id, shard, &rec(job))])?;
                self.workers.revoke_job(job_id, self.clock.now());
            }
        }
        Ok(())
    }

    /// The one path for a lost worker (heartbeat timeout, broken stream, drain, refusals): its
    /// leased shards go back to the queue, and its id is unknown from now on. Each shard counts
    /// the loss (unless the worker drained) and fails its job at [`MAX_LOSSES`].
    pub fn worker_lost(&mut self, worker: &str, why: LostReason) -> Result<(), SchedError> {
        let Some((name, held)) = self.workers.remove(worker, self.clock.now()) else {
            return Ok(());
        };
        let worker = label(worker);
        match &why {
            LostReason::Drained => tracing::info!("worker {worker} ({name}) drained"),
            _ => tracing::warn!("worker {worker} ({name}) lost: {why}"),
        }
        let counts = why != LostReason::Drained;
        let reason = format!("worker {worker} ({name}) {why}");
        // Every shard goes back even if storing one fails: none may stay with a lost lease.
        let mut first_error = Ok(());
        for (lease, l) in held {
            let r = self.shard_lost(&lease, (l.job, l.shard), counts, &reason);
            if first_error.is_ok() {
                first_error = r;
            }
        }
        first_error
    }

    /// A shard whose lease ended without a result (its worker lost, or the lease expired):
    /// queued again, or its job failed; what changed is persisted.
    fn shard_lost(
        &mut self,
        lease: &str,
        (job_id, shard): (u64, u32),
        counts: bool,
        why: &str,
    ) -> Result<(), SchedError> {
        if !self.jobs.contains_key(&job_id) {
            return Ok(());
        }
        self.retry(job_id, shard, Some(why), |j, unix| {
            j.lost(shard as usize, lease, counts, why, unix)
        })
    }

    /// Declares lost every worker silent for longer than `lost_after`, expires every lease
    /// past its deadline (its shard is queued again, its worker told to abandon it), forgets
    /// leases revoked a while ago, and deletes the finished jobs older than `keep_finished`.
    /// Returns the deleted jobs' results folders, for the caller to remove outside the lock.
    pub fn tick(&mut self) -> Result<Vec<PathBuf>, SchedError> {
        let now = self.clock.now();
        for id in self.workers.late(now, self.cfg.lost_after) {
            self.worker_lost(&id, LostReason::HeartbeatTimeout)?;
        }
        for (lease, l) in self.workers.expired(now) {
            self.workers.revoke(&lease, now);
            let allowed = self
                .jobs
                .get(&l.job)
                .map_or(self.cfg.lease_timeout, |j| allowance(&self.cfg, j));
            let why = format!(
                "lease expired on worker {}: no progress reported for {allowed:.0?}",
                label(&l.worker),
            );
            self.shard_lost(&lease, (l.job, l.shard), true, &why)?;
        }
        self.workers.prune_revoked(now, self.cfg.lost_after * 2);
        Ok(self.delete_old_jobs())
    }

    /// Gives back a stall of this coordinator's own making (the lock held, the process
    /// paused): workers it could not hear in that time are not lost for it, and lease
    /// deadlines move out by it.
    pub fn forgive(&mut self, stall: Duration) {
        tracing::warn!(
            "the coordinator stalled for {stall:.1?}: its workers are given that time back"
        );
        self.workers.forgive(stall, self.clock.now());
    }

    /// Cancels a job: nothing more is leased, leases in flight are revoked.
    pub fn cancel(&mut self, job_id: u64) -> Result<(), SchedError> {
        let unix = self.clock.unix();
        let job = job_in(&mut self.jobs, job_id)?;
        if job.rec.state.is_final() {
            return Ok(());
        }
        job.end(JobState::Cancelled, None, unix);
        self.store.put_job(&job.rec, None)?;
        self.workers.revoke_job(job_id, self.clock.now());
        tracing::info!("job {job_id} cancelled");
        Ok(())
    }

    /// A job to plan once its prepare shard is done (outside the lock).
    fn planning(&mut self, job_id: u64, meta: JobMeta) -> Option<Planning> {
        let job = self.jobs.get_mut(&job_id)?;
        job.writing = true;
        Some(Planning::new(
            job_id,
            meta,
            job.spec.clone(),
            job.rec.attachments.clone(),
            self.store.clone(),
        ))
    }

    /// The outcome of a [`Planning`]: the job's shards are queued, or it failed with the
    /// reason. Returns the job to aggregate, should the plan hold no shard to run.
    pub fn planned(
        &mut self,
        job_id: u64,
        meta: JobMeta,
        outcome: PlanOutcome,
    ) -> Result<Option<Finishing>, SchedError> {
        let unix = self.clock.unix();
        let job = job_in(&mut self.jobs, job_id)?;
        job.writing = false;
        if job.rec.state != JobState::Queued {
            // Cancelled (or deleted) while it was planned.
            return Ok(None);
        }
        match outcome {
            Ok(Ok(p)) => {
                let new = job.planned(meta, p.shards, p.orders, p.circuit);
                let rows: Vec<(u64, u32, &ShardRecord)> = new
                    .clone()
                    .map(|i| (job_id, i, &job.shards[i as usize].rec))
                    .collect();
                self.store.put_shards(Some(&job.rec), &rows)?;
                tracing::info!("job {job_id} planned: {} shards", new.len());
            }
            Ok(Err(e)) => {
                job.rec.meta = Some(meta);
                job.end(JobState::Failed, Some(e.clone()), unix);
                self.store.put_job(&job.rec, None)?;
                tracing::error!("job {job_id} failed: {e}");
            }
            Err(e) => {
                // The database failed: the job cannot go on without its plan.
                job.rec.meta = Some(meta);
                job.end(JobState::Failed, Some(format!("planning: {e}")), unix);
                self.store.put_job(&job.rec, None)?;
                tracing::error!("job {job_id} failed: planning: {e}");
            }
        }
        Ok(self.finishing(job_id))
    }

    /// A job whose shards are all done, handed out to aggregate (once).
    fn finishing(&mut self, job_id: u64) -> Option<Finishing> {
        let unix = self.clock.unix();
        let job = self.jobs.get_mut(&job_id)?;
        if !job.ready_to_aggregate() {
            return None;
        }
        job.aggregating = true;
        job.writing = true;
        Some(Finishing::new(
            job,
            self.store.clone(),
            self.cfg.results_dir.join(job_id.to_string()),
            unix,
        ))
    }

    /// The outcome of a [`Finishing`]: the job is done, goes on with more shards, or failed
    /// with the reason.
    pub fn finished(
        &mut self,
        job_id: u64,
        outcome: Result<Finished, String>,
    ) -> Result<(), SchedError> {
        let unix = self.clock.unix();
        let job = job_in(&mut self.jobs, job_id)?;
        job.writing = false;
        if !job.aggregating {
            // Cancelled while it aggregated: the cancellation stands.
            return Ok(());
        }
        match outcome {
            Ok(Finished::More(more)) if !more.shards.is_empty() => {
                // Their plan is stored already (by the Finishing, outside the lock).
                let labels: Vec<String> = more.shards.iter().map(ShardTask::label).collect();
                let new = job.extend(more);
                let rows: Vec<(u64, u32, &ShardRecord)> = new
                    .map(|i| (job_id, i, &job.shards[i as usize].rec))
                    .collect();
                self.store.put_shards(Some(&job.rec), &rows)?;
                tracing::info!("job {job_id} goes on: {}", labels.join(", "));
                return Ok(());
            }
            Ok(Finished::Written(out)) => {
                job.end(JobState::Done, None, unix);
                tracing::info!("job {job_id} done: {}", out.display());
            }
            Ok(Finished::More(_)) => {
                // A job with nothing queued would wait for nothing.
                let e = "internal: its results called for more shards, but none".to_string();
                tracing::error!("job {job_id} failed: {e}");
                job.end(JobState::Failed, Some(e), unix);
            }
            Err(e) => {
                tracing::error!("job {job_id} failed: {e}");
                job.end(JobState::Failed, Some(e), unix);
            }
        }
        self.store.put_job(&job.rec, None)?;
        Ok(())
    }

    /// The stored output of shard `i` of `job`, which must be done.
    fn stored_output(&self, job: &Job, i: usize) -> Result<ShardOutput, SchedError> {
        let shard = finish::Shard {
            job: job.rec.id,
            index: i,
            task: &job.rec.shards[i],
        };
        finish::stored_output(&self.store, shard, &job.spec, job.rec.meta.as_ref())
    }
}

/// How long a lease of `job` may go without progress: the configured timeout, or
/// [`limits::LEASE_SLACK`] times the longest shard of the job so far if that is longer.
fn allowance(cfg: &SchedConfig, job: &Job) -> Duration {
    cfg.lease_timeout.max(job.longest * limits::LEASE_SLACK)
}

/// The hash of a job's spec and attachments, as workers compute it.
fn inputs_hash(rec: &JobRecord, data: &[Vec<u8>]) -> String {
    let files = rec.attachments.iter().map(String::as_str);
    job_inputs::inputs_hash(&rec.spec_toml, files.zip(data.iter().map(Vec::as_slice)))
}

/// A job by id (a free function, so that the store stays borrowable beside it).
fn job_in(jobs: &mut BTreeMap<u64, Job>, job_id: u64) -> Result<&mut Job, SchedError> {
    jobs.get_mut(&job_id).ok_or(SchedError::UnknownJob(job_id))
}
