//! Workers and their leases: who is registered, when each was last heard from, which shard
//! each lease points at, and whether a lease is still active.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use circuit_sweep_proto::v1::{WorkerInfo, WorkerStatus};
use prost::Message;

use super::{SchedError, ids, limits};

/// Why a worker left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// Silent for longer than the heartbeat timeout.
    HeartbeatTimeout,
    /// Its result stream broke (the text is the transport's).
    StreamBroke(String),
    /// It said goodbye (drained or stopping).
    Drained,
    /// Too many of its results were refused.
    Refused(u32),
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            LostReason::StreamBroke(why) => write!(f, "result stream broke: {why}"),
            LostReason::Drained => f.write_str("drained"),
            LostReason::Refused(n) => write!(f, "dropped after {n} refused results"),
        }
    }
}

pub(super) struct Worker {
    pub info: WorkerInfo,
    /// The address it registered from, when known: refusals of a job's results are counted
    /// by machine, so that one client registering again and again counts once.
    pub host: Option<std::net::IpAddr>,
    pub last_seen: Instant,
    pub leases: BTreeSet<String>,
    pub shards_done: u32,
    /// Its results refused so far.
    pub refused: u32,
}

/// Where a lease points, and until when it may run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lease {
    pub job: u64,
    pub shard: u32,
    pub worker: String,
    /// False once revoked (worker lost, job cancelled, lease expired); a result may still
    /// arrive and is accepted if the shard is not done yet, since shards are idempotent.
    pub active: bool,
    /// When it was granted (how long its shard took, once done).
    pub granted: Instant,
    /// It expires at this time unless its worker reports progress first; once revoked, when
    /// it was revoked (it is forgotten a while later).
    pub deadline: Instant,
    /// The most progress its worker reported (units of work, counted by the worker).
    pub progress: u64,
}

/// Registered workers and the leases they hold.
pub(super) struct Workers {
    workers: BTreeMap<String, Worker>,
    leases: HashMap<String, Lease>,
    next_worker: u64,
    next_lease: u64,
    max_workers: usize,
}

impl Workers {
    pub fn new(max_workers: usize) -> Self {
        Workers {
            workers: BTreeMap::new(),
            leases: HashMap::new(),
            next_worker: 1,
            next_lease: 1,
            max_workers,
        }
    }

    /// Registers a worker and returns its id, unless it says too much about itself or too
    /// many workers are registered.
    pub fn register(
        &mut self,
        info: WorkerInfo,
        host: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<String, SchedError> {
        limits::check_info(&info)?;
        if self.workers.len() >= self.max_workers {
            return Err(SchedError::TooManyWorkers(self.max_workers));
        }
        let id = ids::secret('w', self.next_worker)?;
        self.next_worker += 1;
        tracing::info!(
            "worker {} ({}, {}, {} threads) registered",
            ids::label(&id),
            info.name,
            info.device,
            info.threads
        );
        self.workers.insert(
            id.clone(),
            Worker {
                info,
                host,
                last_seen: now,
                leases: BTreeSet::new(),
                shards_done: 0,
                refused: 0,
            },
        );
        Ok(id)
    }

    /// The worker, heard from now.
    pub fn touch(&mut self, worker: &str, now: Instant) -> Result<&mut Worker, SchedError> {
        let w = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| SchedError::UnknownWorker(worker.into()))?;
        w.last_seen = now;
        Ok(w)
    }

    /// Active leases `worker` holds.
    pub fn held(&self, worker: &str) -> usize {
        self.workers.get(worker).map_or(0, |w| w.leases.len())
    }

    /// A new lease of `(job, shard)` for `worker`, expiring after `allowance` without progress.
    pub fn grant(
        &mut self,
        worker: &str,
        (job, shard): (u64, u32),
        now: Instant,
        allowance: Duration,
    ) -> Result<String, SchedError> {
        let id = ids::secret('l', self.next_lease)?;
        self.next_lease += 1;
        if let Some(w) = self.workers.get_mut(worker) {
            w.leases.insert(id.clone());
        }
        self.leases.insert(
            id.clone(),
            Lease {
                job,
                shard,
                worker: worker.to_string(),
                active: true,
                granted: now,
                deadline: now + allowance,
                progress: 0,
            },
        );
        Ok(id)
    }

    /// The lease, if it is an active one of `worker` (to record its progress).
    pub fn active_lease_mut(&mut self, worker: &str, lease: &str) -> Option<&mut Lease> {
        self.leases
            .get_mut(lease)
            .filter(|l| l.worker == worker && l.active)
    }

    /// Active leases past their deadline.
    pub fn expired(&self, now: Instant) -> Vec<(String, Lease)> {
        self.leases
            .iter()
            .filter(|(_, l)| l.active && l.deadline < now)
            .map(|(id, l)| (id.clone(), l.clone()))
            .collect()
    }

    /// Revokes one lease: its worker is told to abandon it, and no longer holds it.
    pub fn revoke(&mut self, lease: &str, now: Instant) {
        if let Some(l) = self.leases.get_mut(lease) {
            l.active = false;
            l.deadline = now;
            if let Some(w) = self.workers.get_mut(&l.worker) {
                w.leases.remove(lease);
            }
        }
    }

    /// Revokes every active lease of one shard (its result was accepted).
    pub fn revoke_shard(&mut self, job: u64, shard: u32, now: Instant) {
        let ids: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.active && l.job == job && l.shard == shard)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.revoke(&id, now);
        }
    }

    /// Gives back `stall`, a time during which this coordinator could not hear its workers:
    /// silences and lease deadlines do not count it.
    pub fn forgive(&mut self, stall: Duration, now: Instant) {
        for w in self.workers.values_mut() {
            w.last_seen = (w.last_seen + stall).min(now);
        }
        for l in self.leases.values_mut().filter(|l| l.active) {
            l.deadline += stall;
        }
    }

    /// The lease, if it belongs to `worker`.
    pub fn lease(&self, worker: &str, lease: &str) -> Result<&Lease, SchedError> {
        match self.leases.get(lease) {
            Some(l) if l.worker == worker => Ok(l),
            _ => Err(SchedError::NotYourLease(lease.into())),
        }
    }

    /// Ends a lease (its result or failure arrived).
    pub fn end(&mut self, lease: &str) {
        if let Some(l) = self.leases.remove(lease)
            && let Some(w) = self.workers.get_mut(&l.worker)
        {
            w.leases.remove(lease);
        }
    }

    /// Who `worker` counts as among a shard's refusals: its machine when known, else itself.
    pub fn refuser(&self, worker: &str) -> String {
        match self.workers.get(worker).and_then(|w| w.host) {
            Some(ip) => format!("host {ip}"),
            None => worker.to_string(),
        }
    }

    /// The numeric profile `worker` registered with (empty when unknown).
    pub fn profile(&self, worker: &str) -> &str {
        self.workers
            .get(worker)
            .map_or("", |w| w.info.profile.as_str())
    }

    /// Counts a shard done by `worker`.
    pub fn credit(&mut self, worker: &str) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.shards_done += 1;
        }
    }

    /// Counts a refused result of `worker`; returns its refusals so far.
    pub fn refused(&mut self, worker: &str) -> u32 {
        self.workers.get_mut(worker).map_or(0, |w| {
            w.refused += 1;
            w.refused
        })
    }

    /// Revokes every active lease of a job: their workers are told to abandon them.
    pub fn revoke_job(&mut self, job: u64, now: Instant) {
        for (id, l) in self.leases.iter_mut() {
            if l.job == job && l.active {
                l.active = false;
                l.deadline = now;
                if let Some(w) = self.workers.get_mut(&l.worker) {
                    w.leases.remove(id);
                }
            }
        }
    }

    /// Forgets a worker; returns its name and the leases it held (now revoked), if it was
    /// registered.
    pub fn remove(&mut self, worker: &str, now: Instant) -> Option<(String, Vec<(String, Lease)>)> {
        let w = self.workers.remove(worker)?;
        let held = w
            .leases
            .into_iter()
            .filter_map(|id| {
                let l = self.leases.get_mut(&id)?;
                l.active = false;
                l.deadline = now;
                Some((id, l.clone()))
            })
            .collect();
        Some((w.info.name, held))
    }

    /// Voids every lease `worker` was given, even revoked ones: a result sent on one is
    /// refused rather than accepted late.
    pub fn void_leases(&mut self, worker: &str) {
        self.leases.retain(|_, l| l.worker != worker);
    }

    /// Forgets leases revoked more than `keep` ago: a result in flight on one has had its
    /// time, and a worker told to abandon it sends nothing more.
    pub fn prune_revoked(&mut self, now: Instant, keep: Duration) {
        self.leases
            .retain(|_, l| l.active || now.duration_since(l.deadline) <= keep);
    }

    /// Workers silent for longer than `lost_after`.
    pub fn late(&self, now: Instant, lost_after: Duration) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > lost_after)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What `status` shows of the workers, by label, as many as fit in `max_bytes` encoded;
    /// and how many were left out.
    pub fn status(&self, now: Instant, max_bytes: usize) -> (Vec<WorkerStatus>, u32) {
        let mut shown = vec![];
        let mut bytes = 0;
        for (id, w) in &self.workers {
            let s = WorkerStatus {
                worker_id: ids::label(id).to_string(),
                name: w.info.name.clone(),
                device: w.info.device.clone(),
                threads: w.info.threads,
                leases: w.leases.iter().map(|l| ids::label(l).to_string()).collect(),
                shards_done: w.shards_done,
                last_seen_ms: now.duration_since(w.last_seen).as_millis() as u64,
                models: w.info.models.clone(),
                profile: w.info.profile.clone(),
            };
            // A repeated field's element costs its length, a tag and a length prefix.
            bytes += s.encoded_len() + 6;
            if bytes > max_bytes {
                break;
            }
            shown.push(s);
        }
        let omitted = (self.workers.len() - shown.len()) as u32;
        (shown, omitted)
    }
}
