//! Aggregation outside the scheduler's lock: a job whose shards are all done is handed out as
//! a [`Finishing`] (what it needs, copied, and the shared store); whoever runs it reads the
//! stored results, writes the results folder and reports back with
//! [`Scheduler::finished`](super::Scheduler::finished). Heartbeats and leases go on meanwhile.

use std::path::PathBuf;
use std::sync::Arc;

use circuit_sweep_common::extension;
use circuit_sweep_common::results::Timing;
use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_proto::shard_output::ShardOutput;

use super::SchedError;
use super::job::Job;
use crate::aggregate::{self, Collected};
use crate::followup::{self, More};
use crate::store::{JobRecord, Store};

/// A job to aggregate.
#[derive(Debug)]
pub struct Finishing {
    /// The job.
    pub job: u64,
    rec: JobRecord,
    spec: SweepSpec,
    store: Arc<Store>,
    out: PathBuf,
    timing: Timing,
}

impl Finishing {
    pub(super) fn new(job: &Job, store: Arc<Store>, out: PathBuf, unix: f64) -> Self {
        let attempts: u32 = job.shards.iter().map(|s| s.rec.attempts).sum();
        Finishing {
            job: job.rec.id,
            rec: job.rec.clone(),
            spec: job.spec.clone(),
            store,
            out,
            timing: Timing {
                seconds: unix - job.rec.submitted_unix,
                shards: job.shards.len(),
                shard_attempts: attempts,
                profiles: profiles(job),
            },
        }
    }

    /// Writes the results folder, or plans the job's next shards when its results call for
    /// more (see [`crate::followup`]); returns which, or why it could not (the job's failure).
    pub fn run(self) -> Result<Finished, String> {
        let _span = tracing::info_span!("aggregate", job = self.job).entered();
        self.aggregate(true)
    }

    /// Writes a done job's results folder again, as it was (a lost folder).
    pub fn rewrite(self) -> Result<PathBuf, String> {
        let _span = tracing::info_span!("rewrite", job = self.job).entered();
        match self.aggregate(false)? {
            Finished::Written(dir) => Ok(dir),
            Finished::More(_) => Err("the job's stored results are incomplete".into()),
        }
    }

    fn aggregate(mut self, followups: bool) -> Result<Finished, String> {
        let mut c = Collected::default();
        for (i, task) in self.rec.shards.iter().enumerate() {
            let shard = Shard {
                job: self.job,
                index: i,
                task,
            };
            let out = stored_output(&self.store, shard, &self.spec, self.rec.meta.as_ref())
                .map_err(|e| e.to_string())?;
            c.push(task, out);
        }
        let meta = c
            .meta
            .clone()
            .ok_or_else(|| "incomplete results: no prepare result".to_string())?;
        let inputs = circuit_sweep_common::inputs::JobInputs::from_resolved(
            &self.spec,
            meta.model_shape(),
            self.rec.circuit.clone(),
            self.rec.orders.clone(),
        );
        if let Some(file) = &self.spec.sweep.extends {
            // Checked when the job was planned; read again from the file it came with.
            let name = file.display().to_string();
            let data = self
                .store
                .attachments(self.job, self.rec.attachments.len())
                .map_err(|e| e.to_string())?;
            let text = self
                .rec
                .attachments
                .iter()
                .zip(&data)
                .find(|(n, _)| **n == name)
                .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
                .ok_or_else(|| format!("{name}: not submitted with the job"))?;
            let profiles = match &inputs.orders {
                Some(orders) => {
                    let shape = (inputs.graph.n_layers, inputs.graph.n_heads);
                    let checked = extension::checked_orders(&self.spec, shape, orders);
                    let earlier =
                        extension::earlier_runs(&text, &name, &self.spec, &checked, &meta)?;
                    c.earlier = earlier.runs;
                    earlier.profiles
                }
                None => {
                    let most = self.spec.sweep.most_orders();
                    let earlier = extension::earlier_edge_runs(
                        &text,
                        &name,
                        &self.spec,
                        most,
                        &inputs.edges,
                        &meta,
                    )?;
                    c.earlier_edges = Some(earlier.study);
                    earlier.profiles
                }
            };
            // The profiles that computed the earlier runs computed this study too.
            self.timing.profiles.extend(profiles);
            self.timing.profiles.sort();
            self.timing.profiles.dedup();
        }
        if followups && let Some(more) = followup::more(&self.spec, &inputs, &c, &self.rec.shards)?
        {
            // Stored here, outside the lock (an order study's plan holds its orders): a
            // coordinator that stops before the shards' records are written queues them on
            // restart.
            let planned = [&self.rec.shards[1..], &more.shards[..]].concat();
            let orders = more.orders.as_ref().or(self.rec.orders.as_ref()).cloned();
            self.store
                .put_plan(self.job, &planned, &orders, &self.rec.circuit)
                .map_err(|e| format!("storing the next shards: {e}"))?;
            return Ok(Finished::More(more));
        }
        aggregate::write(&self.spec, &inputs, &c, self.timing, &self.out)
            .map(|_| Finished::Written(self.out))
            .map_err(|e| e.to_string())
    }
}

/// What a [`Finishing`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// Wrote the results folder, here.
    Written(PathBuf),
    /// Found the job needs more shards (an order study's next batch, or its consensus).
    More(More),
}

/// The numeric profiles that computed a job's shards, each once, sorted (an empty profile is a
/// worker that did not say).
fn profiles(job: &Job) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> = job
        .shards
        .iter()
        .filter_map(|s| s.rec.profile.as_ref())
        .filter(|p| !p.is_empty())
        .collect();
    all.into_iter().cloned().collect()
}

/// The stored output of shard `i` of a job, decoded again: it was checked when it arrived, so
/// a failure here is a damaged database.
pub(super) fn stored_output(
    store: &Store,
    job: Shard<'_>,
    spec: &SweepSpec,
    meta: Option<&JobMeta>,
) -> Result<ShardOutput, SchedError> {
    let corrupt = |why: String| SchedError::CorruptResult {
        job: job.job,
        shard: job.index as u32,
        why,
    };
    let ts = store
        .result(job.job, job.index as u32)?
        .ok_or_else(|| corrupt("no stored result".into()))?;
    ShardOutput::decode(job.task, spec, meta, &ts).map_err(|e| corrupt(e.0))
}

/// A shard of a job, by number.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shard<'a> {
    pub job: u64,
    pub index: usize,
    pub task: &'a ShardTask,
}
