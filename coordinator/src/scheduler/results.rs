//! A complete result stream, in three steps so that the database write leaves the lock:
//! [`Scheduler::receive`] checks it against its lease and shard (under the lock),
//! [`Received::store`] writes it (outside), and [`Scheduler::accept`] marks the shard done
//! (under the lock again). The first result of a shard to be accepted wins; a late duplicate
//! is dropped (shards are idempotent, so a duplicate stored meanwhile is the same result).

use std::sync::Arc;

use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::tensor::WireTensor;

use super::job::ShardState;
use super::{Completion, SchedError, Scheduler, ids::label, job_in};
use crate::store::{ShardRecord, Store};

/// A result checked against its shard, to store outside the lock.
#[derive(Debug)]
pub struct Received {
    worker: String,
    lease: String,
    job: u64,
    shard: u32,
    rec: ShardRecord,
    tensors: Vec<WireTensor>,
    output: ShardOutput,
    store: Arc<Store>,
}

impl Received {
    /// Writes the result and its shard's record, marked done.
    pub fn store(&self) -> Result<(), SchedError> {
        let s = &self.store;
        Ok(s.put_result(self.job, self.shard, &self.rec, &self.tensors)?)
    }
}

impl Scheduler {
    /// Checks a complete result stream of `lease`: `None` when its shard needs it no more (a
    /// late duplicate, or its job ended). A result that does not fit its shard is refused and
    /// the shard queued again.
    pub fn receive(
        &mut self,
        worker: &str,
        lease: &str,
        tensors: Vec<WireTensor>,
    ) -> Result<Option<Received>, SchedError> {
        let (job_id, shard, active) = self.end_lease(worker, lease)?;
        let s = shard as usize;
        let job = self.jobs.get_mut(&job_id).expect("checked by end_lease");
        if !job.is_open(s) {
            tracing::info!(
                "dropped a late duplicate result of job {job_id} shard {shard} from {}",
                label(worker)
            );
            return Ok(None);
        }
        let task = &job.rec.shards[s];
        let output = match ShardOutput::decode(task, &job.spec, job.rec.meta.as_ref(), &tensors) {
            Ok(o) => o,
            Err(why) => {
                let e = SchedError::Malformed {
                    job: job_id,
                    shard,
                    why: why.0,
                };
                let holds = active && self.holds(job_id, shard, lease);
                self.refused(worker, (job_id, shard, holds), &e.to_string())?;
                return Err(e);
            }
        };
        // Until it is accepted, the shard stays with this lease: nobody else takes it.
        job.shards[s].state = ShardState::Leased {
            lease: lease.to_string(),
        };
        let mut rec = job.shards[s].rec.clone();
        rec.done = true;
        rec.profile = Some(self.workers.profile(worker).to_string());
        Ok(Some(Received {
            worker: worker.to_string(),
            lease: lease.to_string(),
            job: job_id,
            shard,
            rec,
            tensors,
            output,
            store: self.store.clone(),
        }))
    }

    /// Marks a received result's shard done, once `stored` says it was written; what the job
    /// needs next comes back (planning after `prepare`, aggregation after the last shard).
    pub fn accept(
        &mut self,
        r: Received,
        stored: Result<(), SchedError>,
    ) -> Result<Completion, SchedError> {
        let s = r.shard as usize;
        let job = job_in(&mut self.jobs, r.job)?;
        let ours =
            matches!(&job.shards[s].state, ShardState::Leased { lease } if *lease == r.lease);
        if let Err(e) = stored {
            if ours {
                job.shards[s].state = ShardState::Queued;
            }
            return Err(e);
        }
        // Stored: the first result accepted wins, whichever lease claimed the shard last.
        if !job.is_open(s) {
            return Ok(Completion::Duplicate);
        }
        job.accept(s);
        job.shards[s].rec.profile = r.rec.profile.clone();
        self.workers.credit(&r.worker);
        // Another worker still computing it (leased again after this lease was revoked) stops.
        self.workers.revoke_shard(r.job, r.shard, self.clock.now());
        tracing::debug!(
            "job {} shard {} done by {}",
            r.job,
            r.shard,
            label(&r.worker)
        );
        if let ShardOutput::Prepared(meta) = r.output {
            return Ok(self
                .planning(r.job, *meta)
                .map_or(Completion::Stored, |p| Completion::Planning(Box::new(p))));
        }
        Ok(match self.finishing(r.job) {
            Some(f) => Completion::Finishing(Box::new(f)),
            None => Completion::Stored,
        })
    }

    /// The three steps at once, planning included (for a caller that holds the scheduler
    /// alone: tests, and tools that drive it by hand).
    pub fn complete(
        &mut self,
        worker: &str,
        lease: &str,
        tensors: Vec<WireTensor>,
    ) -> Result<Completion, SchedError> {
        let Some(r) = self.receive(worker, lease, tensors)? else {
            return Ok(Completion::Duplicate);
        };
        let stored = r.store();
        match self.accept(r, stored)? {
            Completion::Planning(p) => {
                let outcome = p.run();
                Ok(match self.planned(p.job, p.meta, outcome)? {
                    Some(f) => Completion::Finishing(Box::new(f)),
                    None => Completion::Stored,
                })
            }
            c => Ok(c),
        }
    }
}
