//! What clients and the dashboard see: every job's progress and ETA, the workers, the results
//! folder of a finished job, and a job's partial results (read outside the lock from a
//! [`PartialSource`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use circuit_sweep_common::convergence::AutoRule;
use circuit_sweep_common::greedy::Rule;
use circuit_sweep_common::metric::Unit;
use circuit_sweep_common::prune::PruneResult;
use circuit_sweep_common::results::ResultDoc;
use circuit_sweep_common::shard::{JobMeta, NodeShard, ShardTask};
use circuit_sweep_common::spec::{SweepKind, SweepSpec};
use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::v1::{JobStatus, StatusReply};

use super::job::ShardState;
use super::{Finishing, SchedError, Scheduler, finish};
use crate::store::{JobState, Store};

/// Where a done job's results are (see [`Scheduler::results`]).
#[derive(Debug)]
pub enum ResultsAt {
    /// In this folder.
    Ready(PathBuf),
    /// Its folder is lost: write it again (outside the lock), then call
    /// [`Scheduler::rebuilt`].
    Rebuild(Box<Finishing>),
}

/// A job's results so far (see [`Scheduler::partial`]).
#[derive(Debug, Clone)]
pub struct Partial {
    /// The sweep kind.
    pub kind: SweepKind,
    /// The pruning rule (a % threshold, or KL's tau).
    pub rule: Rule,
    /// What scores are measured in.
    pub unit: Unit,
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
    /// Orders in an order study (0 for other kinds): planned so far, for `auto`; an
    /// extension's earlier orders included.
    pub orders_total: usize,
    /// Orders of the earlier study an extension goes on from: the first of `runs`.
    pub earlier: usize,
    /// `orders = "auto"`: the half-width its intervals run to.
    pub ci_width: Option<f64>,
}

/// What reading a job's partial results needs, taken under the lock and read outside it.
pub struct PartialSource {
    job: u64,
    spec: SweepSpec,
    meta: Option<JobMeta>,
    orders_total: usize,
    shards_done: usize,
    /// The finished shards that hold node scores or pruning runs.
    shown: Vec<(usize, ShardTask)>,
    /// An order study's extension: the attachment holding the earlier study, and how many
    /// attachments the job has.
    extends: Option<(usize, usize)>,
    store: Arc<Store>,
}

impl PartialSource {
    /// Reads the finished shards' node scores and pruning runs from the store.
    pub fn read(&self) -> Result<Partial, SchedError> {
        let meta = self.meta.as_ref();
        let mut p = Partial {
            kind: self.spec.sweep.kind,
            rule: self.spec.rule(),
            unit: Unit::of(self.spec.ablation.metric),
            shards_done: self.shards_done,
            n_layers: meta.map_or(0, |m| m.n_layers),
            n_heads: meta.map_or(0, |m| m.n_heads),
            nodes: vec![],
            runs: vec![],
            orders_total: self.orders_total,
            earlier: 0,
            ci_width: AutoRule::of(&self.spec.sweep, 1).map(|r| r.ci_width),
        };
        if let Some((index, n)) = self.extends {
            // The earlier orders count as the larger study will count them: first.
            let runs = self.earlier_runs(index, n)?;
            p.earlier = runs.len();
            p.orders_total += runs.len();
            p.runs = runs;
        }
        for (index, task) in &self.shown {
            let shard = finish::Shard {
                job: self.job,
                index: *index,
                task,
            };
            match finish::stored_output(&self.store, shard, &self.spec, meta)? {
                ShardOutput::Nodes(n) => p.nodes.push(n),
                ShardOutput::Runs(r) => p.runs.extend(r),
                _ => {}
            }
        }
        Ok(p)
    }

    /// The runs of the study this one extends, from the file submitted with the job (checked
    /// when the job was planned).
    fn earlier_runs(&self, index: usize, n: usize) -> Result<Vec<PruneResult>, SchedError> {
        let data = self.store.attachments(self.job, n)?;
        let name = self.spec.sweep.extends.as_deref().unwrap_or(Path::new(""));
        let text = String::from_utf8_lossy(&data[index]);
        let doc = ResultDoc::parse(&text, name)
            .map_err(|e| SchedError::BadSpec(format!("[sweep] extends: {e}")))?;
        let runs = doc.orders.map(|o| o.runs).unwrap_or_default();
        let rule = self.spec.rule();
        Ok(runs
            .into_iter()
            .map(|r| PruneResult {
                threshold: rule.threshold(),
                tau: rule.tau(),
                heads: r.heads,
                mlps: r.mlps,
                score: r.score,
                evaluations: r.evaluations,
                passes: 0,
                decisions: vec![],
                guided: None,
            })
            .collect())
    }
}

impl Scheduler {
    /// Status of one job (or every job) and of the workers (as many as fit in
    /// `status_worker_bytes`; the reply counts the rest).
    pub fn status(&self, job: Option<u64>) -> Result<StatusReply, SchedError> {
        if let Some(id) = job
            && !self.jobs.contains_key(&id)
        {
            return Err(SchedError::UnknownJob(id));
        }
        let now = self.clock.now();
        let unix = self.clock.unix();
        let jobs = self
            .jobs
            .values()
            .filter(|j| job.is_none_or(|id| id == j.rec.id))
            .map(|j| {
                let done = j.done();
                // An ended job has nothing leased or queued, whatever its shards were doing.
                let (leased, queued) = if j.rec.state.is_final() {
                    (0, 0)
                } else {
                    (
                        j.count(|s| matches!(s, ShardState::Leased { .. })),
                        j.count(|s| *s == ShardState::Queued),
                    )
                };
                // For the ETA: time in this coordinator's lifetime (shards done here).
                let elapsed = now.duration_since(j.started).as_secs_f64();
                // Shown: since submission, across restarts, until the job ended.
                let wall = j.rec.finished_unix.unwrap_or(unix) - j.rec.submitted_unix;
                let total = j.shards.len() as u32;
                let eta = if j.rec.state.is_final() {
                    0.0
                } else if AutoRule::of(&j.spec.sweep, 1).is_some() {
                    // Its batches are planned from its results: the end is not known.
                    -1.0
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
                    requeued: j.shards.iter().map(|s| s.rec.requeued).sum(),
                    elapsed_s: wall.max(0.0),
                    eta_s: eta,
                    kind: format!("{:?}", j.spec.sweep.kind).to_lowercase(),
                }
            })
            .collect();
        let (workers, workers_omitted) = self.workers.status(now, self.cfg.status_worker_bytes);
        Ok(StatusReply {
            jobs,
            workers,
            workers_omitted,
        })
    }

    /// Shards of a job done so far, and planned so far (`None`: no such job).
    pub fn shard_counts(&self, job_id: u64) -> Option<(usize, usize)> {
        let job = self.jobs.get(&job_id)?;
        Some((job.done() as usize, job.shards.len()))
    }

    /// What a job's finished shards hold so far, to read outside the lock (the dashboard
    /// draws it while the job runs).
    pub fn partial(&self, job_id: u64) -> Result<PartialSource, SchedError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        let shown = job
            .rec
            .shards
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                // An order study's paper-schedule run is not one of its orders.
                let shown = match t {
                    ShardTask::Nodes { .. } | ShardTask::Orders { .. } => true,
                    ShardTask::Prune => job.spec.sweep.kind == SweepKind::Prune,
                    _ => false,
                };
                job.shards[*i].state == ShardState::Done && shown
            })
            .map(|(i, t)| (i, t.clone()))
            .collect();
        Ok(PartialSource {
            job: job_id,
            spec: job.spec.clone(),
            meta: job.rec.meta.clone(),
            // The orders this job runs (an extension's earlier orders are not its own).
            orders_total: job
                .rec
                .shards
                .iter()
                .map(|t| match t {
                    ShardTask::Orders { orders, .. } => orders.len(),
                    _ => 0,
                })
                .sum(),
            shards_done: job.done() as usize,
            shown,
            extends: match (&job.spec.sweep.extends, job.spec.sweep.kind) {
                (Some(file), SweepKind::Orders) => {
                    let name = file.display().to_string();
                    let n = job.rec.attachments.len();
                    job.rec
                        .attachments
                        .iter()
                        .position(|a| *a == name)
                        .map(|i| (i, n))
                }
                _ => None,
            },
            store: self.store.clone(),
        })
    }

    /// Where a done job's results are: its folder, or, when the folder was lost (removed by
    /// hand, a disk replaced), the aggregation that writes it again from the stored shards.
    pub fn results(&mut self, job_id: u64) -> Result<ResultsAt, SchedError> {
        let dir = self.results_dir(job_id)?;
        if dir.join("result.json").is_file() {
            return Ok(ResultsAt::Ready(dir));
        }
        let unix = self.clock.unix();
        let job = self.jobs.get_mut(&job_id).expect("found by results_dir");
        if job.writing {
            return Err(SchedError::NotReady(format!(
                "job {job_id}'s results folder is being written again: ask in a moment"
            )));
        }
        tracing::warn!("job {job_id}'s results folder is missing: writing it again");
        job.writing = true;
        // The folder's timing counts to when the job ended, not to now.
        let ended = job.rec.finished_unix.unwrap_or(unix);
        Ok(ResultsAt::Rebuild(Box::new(Finishing::new(
            job,
            self.store.clone(),
            dir,
            ended,
        ))))
    }

    /// A results folder written again (or not): the job may be deleted again.
    pub fn rebuilt(&mut self, job_id: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.writing = false;
        }
    }

    /// The results folder of a done job.
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
            s => Err(SchedError::NotReady(format!(
                "job {job_id} is {}: {} of {} shards done",
                s.name(),
                job.done(),
                job.shards.len()
            ))),
        }
    }
}
