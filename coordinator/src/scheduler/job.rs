//! One job's life as a state machine: each shard is queued, leased or done, with its attempts,
//! the failures workers reported and the malformed results refused (and from whom); the job is
//! queued (until its prepare shard is done), running, aggregating (every shard done, its results
//! folder being written), done, failed or cancelled. Transitions change memory only: the scheduler persists
//! what they changed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;

use crate::store::{JobRecord, JobState, ShardRecord};

/// Failures of one shard (reported by workers) before its job fails.
pub const MAX_ATTEMPTS: u32 = 3;

/// Refused (malformed) results of one shard before its job fails: a worker build that keeps
/// sending bad tensors must not loop forever.
pub const MAX_REFUSALS: u32 = 5;

/// Distinct workers whose results of one shard must be refused before its job fails: one bad
/// worker (dropped after a few refusals) must not fail everyone's job. Workers that registered
/// from one machine count as one, so that registering again does not make a second.
pub const MIN_REFUSING_WORKERS: usize = 2;

/// Workers lost (or leases expired) while holding one shard before its job fails: a shard that
/// kills or wedges every worker that takes it must not loop forever, while a worker lost for
/// its own reasons (a preempted node) costs the shard nothing.
pub const MAX_LOSSES: u32 = 3;

/// Refused results of one shard that fail its job even when they all came from one machine:
/// a cluster of one node whose worker build is broken must not loop forever, while a client
/// must register again and again to fail a job alone.
pub const MAX_REFUSALS_ONE_MACHINE: u32 = 20;

/// Where a shard stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ShardState {
    Queued,
    Leased { lease: String },
    Done,
}

/// A shard: its state and its stored record.
pub(super) struct Shard {
    pub state: ShardState,
    pub rec: ShardRecord,
    /// Workers (by machine, when known) whose results of it were refused (since this
    /// coordinator started).
    pub refused_by: BTreeSet<String>,
}

impl Shard {
    fn new(state: ShardState, rec: ShardRecord) -> Self {
        Shard {
            state,
            rec,
            refused_by: BTreeSet::new(),
        }
    }
}

/// What a failed or refused attempt did.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Retry {
    /// Nothing: the shard was done already or its job had ended.
    Closed,
    /// The shard is queued again.
    Requeued,
    /// The job failed, for this reason.
    JobFailed(String),
}

pub(super) struct Job {
    pub rec: JobRecord,
    pub spec: SweepSpec,
    pub shards: Vec<Shard>,
    /// When this coordinator took the job on (for the ETA).
    pub started: Instant,
    /// Shards done in this coordinator's lifetime, for the ETA.
    pub done_here: u32,
    /// Every shard is done and the results folder is being written.
    pub aggregating: bool,
    /// The longest a shard of it has taken from lease to result (in this coordinator's
    /// lifetime): what its leases' deadlines are derived from.
    pub longest: Duration,
    /// The hash of its spec and attachments: a worker that holds them is leased shards
    /// without them (empty for an ended job).
    pub inputs_hash: String,
    /// A [`Planning`](super::Planning) or [`Finishing`](super::Finishing) is out writing its
    /// plan or results folder: unlike `aggregating`, still set after a cancellation, until it
    /// reports back (the job is not deleted under it).
    pub writing: bool,
}

impl Job {
    /// A job as stored: shards with a stored result are done, the rest queued.
    pub fn new(rec: JobRecord, spec: SweepSpec, shards: Vec<ShardRecord>, now: Instant) -> Self {
        let shards = shards
            .into_iter()
            .map(|rec| {
                let state = if rec.done {
                    ShardState::Done
                } else {
                    ShardState::Queued
                };
                Shard::new(state, rec)
            })
            .collect();
        Job {
            rec,
            spec,
            shards,
            started: now,
            done_here: 0,
            aggregating: false,
            longest: Duration::ZERO,
            inputs_hash: String::new(),
            writing: false,
        }
    }

    /// Shards in a state.
    pub fn count(&self, f: impl Fn(&ShardState) -> bool) -> u32 {
        self.shards.iter().filter(|s| f(&s.state)).count() as u32
    }

    /// Shards done.
    pub fn done(&self) -> u32 {
        self.count(|s| *s == ShardState::Done)
    }

    /// Whether shard `i` still needs a result (not done, its job not ended).
    pub fn is_open(&self, i: usize) -> bool {
        self.shards[i].state != ShardState::Done && !self.rec.state.is_final()
    }

    /// The first queued shard, unless the job has ended.
    pub fn next_queued(&self) -> Option<usize> {
        if self.rec.state.is_final() {
            return None;
        }
        self.shards
            .iter()
            .position(|s| s.state == ShardState::Queued)
    }

    /// Shard `i` leased as `lease`; returns the attempt's number.
    pub fn lease(&mut self, i: usize, lease: String) -> u32 {
        let s = &mut self.shards[i];
        s.state = ShardState::Leased { lease };
        s.rec.attempts += 1;
        s.rec.attempts
    }

    /// Shard `i`'s result is accepted.
    pub fn accept(&mut self, i: usize) {
        let s = &mut self.shards[i];
        s.state = ShardState::Done;
        s.rec.done = true;
        self.done_here += 1;
    }

    /// A failure a worker reported for shard `i`: queued again, unless it is not retryable
    /// or the shard has failed [`MAX_ATTEMPTS`] times.
    pub fn failed(&mut self, i: usize, reason: &str, retryable: bool, unix: f64) -> Retry {
        if !self.is_open(i) {
            return Retry::Closed;
        }
        self.shards[i].rec.failures += 1;
        self.requeue_or_fail(i, reason, retryable, unix)
    }

    /// A malformed result of shard `i` from `worker`: queued again without counting a
    /// failure, until [`MAX_REFUSALS`] refusals from [`MIN_REFUSING_WORKERS`] workers or more,
    /// or [`MAX_REFUSALS_ONE_MACHINE`] from any, fail the job.
    pub fn refused(&mut self, i: usize, worker: &str, reason: &str, unix: f64) -> Retry {
        if !self.is_open(i) {
            return Retry::Closed;
        }
        let s = &mut self.shards[i];
        s.rec.refused += 1;
        s.refused_by.insert(worker.to_string());
        if (s.rec.refused >= MAX_REFUSALS && s.refused_by.len() >= MIN_REFUSING_WORKERS)
            || s.rec.refused >= MAX_REFUSALS_ONE_MACHINE
        {
            let why = format!(
                "{} malformed results from {} workers, the last: {reason}",
                s.rec.refused,
                s.refused_by.len()
            );
            return self.requeue_or_fail(i, &why, false, unix);
        }
        s.state = ShardState::Queued;
        s.rec.requeued += 1;
        s.rec.last_error = Some(reason.to_string());
        Retry::Requeued
    }

    /// The worker holding shard `i` as `lease` was lost, or the lease expired: the shard is
    /// queued again, unless `counts` (not a drain) and it is the shard's [`MAX_LOSSES`]th
    /// loss, which fails the job. Closed when the shard has moved on (done, or leased again).
    pub fn lost(&mut self, i: usize, lease: &str, counts: bool, why: &str, unix: f64) -> Retry {
        let s = &mut self.shards[i];
        if self.rec.state.is_final()
            || !matches!(&s.state, ShardState::Leased { lease: l } if l == lease)
        {
            return Retry::Closed;
        }
        if !counts {
            s.state = ShardState::Queued;
            s.rec.requeued += 1;
            return Retry::Requeued;
        }
        s.rec.losses += 1;
        if s.rec.losses >= MAX_LOSSES {
            let why = format!(
                "lost {} times, each time with the worker or lease holding it (the shard may \
                 crash or hang its worker), the last: {why}",
                s.rec.losses
            );
            return self.requeue_or_fail(i, &why, false, unix);
        }
        s.state = ShardState::Queued;
        s.rec.requeued += 1;
        s.rec.last_error = Some(why.to_string());
        Retry::Requeued
    }

    fn requeue_or_fail(&mut self, i: usize, reason: &str, retryable: bool, unix: f64) -> Retry {
        let label = self.rec.shards[i].label();
        let s = &mut self.shards[i];
        s.rec.last_error = Some(reason.to_string());
        s.rec.requeued += 1;
        if retryable && s.rec.failures < MAX_ATTEMPTS {
            s.state = ShardState::Queued;
            return Retry::Requeued;
        }
        let why = if retryable {
            format!(
                "shard {i} ({label}) failed {} times: {reason}",
                s.rec.failures
            )
        } else {
            format!("shard {i} ({label}): {reason}")
        };
        self.end(JobState::Failed, Some(why.clone()), unix);
        Retry::JobFailed(why)
    }

    /// Ends the job (done, failed or cancelled).
    pub fn end(&mut self, state: JobState, error: Option<String>, unix: f64) {
        self.rec.state = state;
        self.rec.error = error;
        self.rec.finished_unix = Some(unix);
        self.aggregating = false;
    }

    /// The prepare shard's report and the planned shards (queued); returns the new shards'
    /// numbers.
    pub fn planned(
        &mut self,
        meta: JobMeta,
        shards: Vec<ShardTask>,
        orders: Option<Vec<Vec<circuit_sweep_common::Component>>>,
        circuit: Option<Vec<circuit_sweep_common::Component>>,
    ) -> std::ops::Range<u32> {
        // Planned again after a restart: the plan stored before it may be there already.
        self.rec.shards.truncate(1);
        self.shards.truncate(1);
        let first = self.rec.shards.len() as u32;
        for task in shards {
            self.rec.shards.push(task);
            self.shards
                .push(Shard::new(ShardState::Queued, ShardRecord::default()));
        }
        self.rec.orders = orders;
        self.rec.circuit = circuit;
        self.rec.meta = Some(meta);
        self.rec.state = JobState::Running;
        first..self.rec.shards.len() as u32
    }

    /// Shards planned once the others were done (see [`crate::followup`]): queued, and the
    /// job runs again; returns their numbers.
    pub fn extend(&mut self, more: crate::followup::More) -> std::ops::Range<u32> {
        let first = self.rec.shards.len() as u32;
        for task in more.shards {
            self.rec.shards.push(task);
            self.shards
                .push(Shard::new(ShardState::Queued, ShardRecord::default()));
        }
        if let Some(orders) = more.orders {
            self.rec.orders = Some(orders);
        }
        self.aggregating = false;
        first..self.rec.shards.len() as u32
    }

    /// Whether every shard is done and nobody is writing its results folder yet.
    pub fn ready_to_aggregate(&self) -> bool {
        self.rec.state == JobState::Running
            && !self.aggregating
            && self.shards.iter().all(|s| s.state == ShardState::Done)
    }
}
