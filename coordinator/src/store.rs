//! The coordinator's durable state in an embedded database (redb) under `--state`: jobs, their
//! shards and every received shard result, so a restarted coordinator resumes every job and
//! recomputes no finished shard. Deleting a job removes its rows from every table; job ids are
//! never reused (the highest ever written is kept in `meta`).

use std::path::{Path, PathBuf};

use circuit_sweep_common::Component;
use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_proto::tensor::WireTensor;
use circuit_sweep_proto::v1::Dtype;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

const JOBS: TableDefinition<u64, &str> = TableDefinition::new("jobs");
const SHARDS: TableDefinition<(u64, u32), &str> = TableDefinition::new("shards");
const RESULTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("results");
const ATTACHMENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attachments");
/// A job's plan (its shard tasks, orders and circuit), apart from its record: the plan can be
/// large (an order study's orders) and is written once, the record on every change of state.
const PLANS: TableDefinition<u64, &str> = TableDefinition::new("plans");
/// Small facts about the store as a whole, by name.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The highest job id ever written, so that a deleted job's id is never given again.
const LAST_JOB_ID: &str = "last_job_id";

/// Life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its prepare shard.
    Queued,
    /// Shards planned and running.
    Running,
    /// Every shard done; results written.
    Done,
    /// Stopped by a failure that retrying cannot fix.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// Done, failed or cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }

    /// The name shown by `status`.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id (from 1).
    pub id: u64,
    /// A name (the spec file's stem).
    pub name: String,
    /// The spec as submitted.
    pub spec_toml: String,
    /// Names of the attachments, by index.
    pub attachments: Vec<String>,
    /// State.
    pub state: JobState,
    /// Why it failed.
    pub error: Option<String>,
    /// Seconds since the Unix epoch at submission.
    pub submitted_unix: f64,
    /// Seconds since the Unix epoch when the job ended (done, failed, cancelled).
    #[serde(default)]
    pub finished_unix: Option<f64>,
    /// The prepare shard's report.
    pub meta: Option<JobMeta>,
    /// The plan: shard 0 is `prepare`, the rest follow once it is done. (This and the next
    /// two are stored apart, in the plans table; records written before that hold them.)
    #[serde(default, skip_serializing)]
    pub shards: Vec<ShardTask>,
    /// The order study's orders (all of them, in study order).
    #[serde(default, skip_serializing)]
    pub orders: Option<Vec<Vec<Component>>>,
    /// Edge sweeps: the node circuit the graph is restricted to.
    #[serde(default, skip_serializing)]
    pub circuit: Option<Vec<Component>>,
}

/// A job's plan as stored (the fields of [`JobRecord`] kept apart from it). An order study's
/// orders are written once: in its shards' tasks, from which they are read back.
#[derive(Serialize)]
struct PlanRow<'a> {
    shards: Shards<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orders: Option<&'a Vec<Vec<Component>>>,
    circuit: &'a Option<Vec<Component>>,
}

/// Shard tasks, `prepare` first when asked (written without copying the planned ones).
struct Shards<'a> {
    prepare: bool,
    rest: &'a [ShardTask],
}

impl Serialize for Shards<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let prepare = ShardTask::Prepare;
        let first = self.prepare.then_some(&prepare);
        s.collect_seq(first.into_iter().chain(self.rest))
    }
}

/// The orders the order tasks of `shards` hold, in study order.
fn task_orders(shards: &[ShardTask]) -> impl Iterator<Item = &Vec<Component>> {
    shards.iter().flat_map(|t| match t {
        ShardTask::Orders { orders, .. } => orders.as_slice(),
        _ => &[],
    })
}

/// A job's plan, read back.
#[derive(Deserialize)]
struct Plan {
    shards: Vec<ShardTask>,
    #[serde(default)]
    orders: Option<Vec<Vec<Component>>>,
    circuit: Option<Vec<Component>>,
}

impl<'a> PlanRow<'a> {
    fn of(job: &'a JobRecord) -> Self {
        Self::new(false, &job.shards, &job.orders, &job.circuit)
    }

    fn new(
        prepare: bool,
        rest: &'a [ShardTask],
        orders: &'a Option<Vec<Vec<Component>>>,
        circuit: &'a Option<Vec<Component>>,
    ) -> Self {
        // Kept only when the tasks do not hold them already.
        let orders = orders.as_ref().filter(|o| !task_orders(rest).eq(o.iter()));
        PlanRow {
            shards: Shards { prepare, rest },
            orders,
            circuit,
        }
    }
}

/// A shard as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Its result is stored.
    pub done: bool,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts that failed, were lost or sent a malformed result.
    pub requeued: u32,
    /// Failures the workers reported (what the retry limit counts: a lost worker or a
    /// malformed result says nothing about the shard).
    #[serde(default)]
    pub failures: u32,
    /// Malformed results refused.
    #[serde(default)]
    pub refused: u32,
    /// Workers lost, and leases expired, while it was leased (a drain does not count).
    #[serde(default)]
    pub losses: u32,
    /// The numeric profile of the worker whose result was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Why the state database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database (redb) failed.
    #[error("state database {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A stored record cannot be read back.
    #[error("state database {path}: corrupt record: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The state database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) `state.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.redb");
        guarded(&path, || Self::open_at(dir, &path))
    }

    fn open_at(dir: &Path, path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let err = |m: String| StoreError::Db {
            path: path.clone(),
            message: m,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        // Create the tables so that readers never meet a missing one.
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            tx.open_table(JOBS).map_err(|e| err(e.to_string()))?;
            tx.open_table(SHARDS).map_err(|e| err(e.to_string()))?;
            tx.open_table(RESULTS).map_err(|e| err(e.to_string()))?;
            tx.open_table(ATTACHMENTS).map_err(|e| err(e.to_string()))?;
            tx.open_table(PLANS).map_err(|e| err(e.to_string()))?;
            tx.open_table(META).map_err(|e| err(e.to_string()))?;
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        let store = Store { db, path };
        store.move_plans_apart()?;
        Ok(store)
    }

    /// Moves the plans of records written when they held them into the plans table, once:
    /// from then on a record is rewritten without its plan.
    fn move_plans_apart(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            let mut plans = tx.open_table(PLANS).map_err(|e| self.err(e))?;
            for row in jobs.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let id = k.value();
                if plans.get(id).map_err(|e| self.err(e))?.is_some() {
                    continue;
                }
                let job: JobRecord =
                    serde_json::from_str(v.value()).map_err(|e| self.corrupt(e))?;
                let text = serde_json::to_string(&PlanRow::of(&job)).expect("plans serialize");
                plans.insert(id, text.as_str()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Writes a job record (not its plan), and its attachments and plan when given (at
    /// submission), in one transaction.
    pub fn put_job(
        &self,
        job: &JobRecord,
        attachments: Option<&[Vec<u8>]>,
    ) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let text = serde_json::to_string(job).expect("job records serialize");
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut t = tx.open_table(JOBS).map_err(|e| self.err(e))?;
                t.insert(job.id, text.as_str()).map_err(|e| self.err(e))?;
                self.raise_last_job_id(&tx, job.id)?;
                if let Some(files) = attachments {
                    let plan = serde_json::to_string(&PlanRow::of(job)).expect("plans serialize");
                    let mut p = tx.open_table(PLANS).map_err(|e| self.err(e))?;
                    p.insert(job.id, plan.as_str()).map_err(|e| self.err(e))?;
                    let mut a = tx.open_table(ATTACHMENTS).map_err(|e| self.err(e))?;
                    for (i, data) in files.iter().enumerate() {
                        a.insert((job.id, i as u32), data.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Writes a job's plan once its prepare shard is done: `prepare`, then `planned`.
    pub fn put_plan(
        &self,
        job: u64,
        planned: &[ShardTask],
        orders: &Option<Vec<Vec<Component>>>,
        circuit: &Option<Vec<Component>>,
    ) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let row = PlanRow::new(true, planned, orders, circuit);
            let plan = serde_json::to_string(&row).expect("plans serialize");
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut p = tx.open_table(PLANS).map_err(|e| self.err(e))?;
                p.insert(job, plan.as_str()).map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// The highest job id ever written (0 for none): a deleted job's id included, and a
    /// database written before deletions existed read from its jobs.
    pub fn last_job_id(&self) -> Result<u64, StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let m = tx.open_table(META).map_err(|e| self.err(e))?;
            let kept = m
                .get(LAST_JOB_ID)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            let jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            let newest = jobs
                .last()
                .map_err(|e| self.err(e))?
                .map_or(0, |(k, _)| k.value());
            Ok(kept.max(newest))
        })
    }

    /// Removes every row of `job` from every table, in one transaction.
    pub fn delete_job(&self, job: u64) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            // A database of a version before deletions has no last id yet: this one is it.
            self.raise_last_job_id(&tx, job)?;
            // One line per table keyed by job id: a new table joins here.
            remove_job(&tx, JOBS, job).map_err(|e| self.err(e))?;
            remove_job(&tx, PLANS, job).map_err(|e| self.err(e))?;
            remove_rows(&tx, SHARDS, job).map_err(|e| self.err(e))?;
            remove_rows(&tx, RESULTS, job).map_err(|e| self.err(e))?;
            remove_rows(&tx, ATTACHMENTS, job).map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Records `id` as the highest job id ever written, unless a higher one is.
    fn raise_last_job_id(&self, tx: &WriteTransaction, id: u64) -> Result<(), StoreError> {
        let mut m = tx.open_table(META).map_err(|e| self.err(e))?;
        let last = m
            .get(LAST_JOB_ID)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value());
        if last < id {
            m.insert(LAST_JOB_ID, id).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Writes shard records (and a job record) in one transaction.
    pub fn put_shards(
        &self,
        job: Option<&JobRecord>,
        shards: &[(u64, u32, &ShardRecord)],
    ) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            self.write_shards(&tx, job, shards)?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    fn write_shards(
        &self,
        tx: &redb::WriteTransaction,
        job: Option<&JobRecord>,
        shards: &[(u64, u32, &ShardRecord)],
    ) -> Result<(), StoreError> {
        if let Some(job) = job {
            let text = serde_json::to_string(job).expect("job records serialize");
            let mut t = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            t.insert(job.id, text.as_str()).map_err(|e| self.err(e))?;
        }
        let mut t = tx.open_table(SHARDS).map_err(|e| self.err(e))?;
        for (j, s, r) in shards {
            let text = serde_json::to_string(r).expect("shard records serialize");
            t.insert((*j, *s), text.as_str()).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Stores a shard's result and marks it done, in one transaction.
    pub fn put_result(
        &self,
        job: u64,
        shard: u32,
        record: &ShardRecord,
        tensors: &[WireTensor],
    ) -> Result<(), StoreError> {
        guarded(&self.path, || {
            let bytes = encode(tensors);
            let text = serde_json::to_string(record).expect("shard records serialize");
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                // Written outside the scheduler's lock: the job may have been deleted since.
                let jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
                if jobs.get(job).map_err(|e| self.err(e))?.is_none() {
                    return Ok(());
                }
                drop(jobs);
                let mut r = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
                r.insert((job, shard), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                let mut t = tx.open_table(SHARDS).map_err(|e| self.err(e))?;
                t.insert((job, shard), text.as_str())
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Every job with its shard records.
    pub fn load(&self) -> Result<Vec<(JobRecord, Vec<ShardRecord>)>, StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            let shards = tx.open_table(SHARDS).map_err(|e| self.err(e))?;
            let plans = tx.open_table(PLANS).map_err(|e| self.err(e))?;
            let mut out = vec![];
            for row in jobs.iter().map_err(|e| self.err(e))? {
                let (_, v) = row.map_err(|e| self.err(e))?;
                let mut job: JobRecord =
                    serde_json::from_str(v.value()).map_err(|e| self.corrupt(e))?;
                let plan = plans
                    .get(job.id)
                    .map_err(|e| self.err(e))?
                    .ok_or_else(|| self.corrupt(format!("job {} has no plan", job.id)))?;
                let plan: Plan = serde_json::from_str(plan.value()).map_err(|e| self.corrupt(e))?;
                job.orders = match plan.orders {
                    Some(o) => Some(o),
                    None if task_orders(&plan.shards).next().is_some() => {
                        Some(task_orders(&plan.shards).cloned().collect())
                    }
                    None => None,
                };
                job.shards = plan.shards;
                job.circuit = plan.circuit;
                let mut recs = vec![ShardRecord::default(); job.shards.len()];
                for row in shards
                    .range((job.id, 0)..=(job.id, u32::MAX))
                    .map_err(|e| self.err(e))?
                {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    let (_, s) = k.value();
                    let r: ShardRecord =
                        serde_json::from_str(v.value()).map_err(|e| self.corrupt(e))?;
                    if let Some(slot) = recs.get_mut(s as usize) {
                        *slot = r;
                    }
                }
                out.push((job, recs));
            }
            Ok(out)
        })
    }

    /// A stored shard result.
    pub fn result(&self, job: u64, shard: u32) -> Result<Option<Vec<WireTensor>>, StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
            match t.get((job, shard)).map_err(|e| self.err(e))? {
                Some(v) => decode(v.value())
                    .map(Some)
                    .ok_or_else(|| self.corrupt(format!("result of job {job} shard {shard}"))),
                None => Ok(None),
            }
        })
    }

    /// A job's attachments, by index.
    pub fn attachments(&self, job: u64, n: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        guarded(&self.path, || {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(ATTACHMENTS).map_err(|e| self.err(e))?;
            (0..n as u32)
                .map(|i| {
                    t.get((job, i))
                        .map_err(|e| self.err(e))?
                        .map(|v| v.value().to_vec())
                        .ok_or_else(|| self.corrupt(format!("attachment {i} of job {job}")))
                })
                .collect()
        })
    }
}

/// Removes `job`'s row of a table keyed by job id.
fn remove_job<V: redb::Value + 'static>(
    tx: &WriteTransaction,
    table: TableDefinition<u64, V>,
    job: u64,
) -> Result<(), redb::Error> {
    tx.open_table(table)?.remove(job)?;
    Ok(())
}

/// Removes `job`'s rows of a table keyed by (job id, index).
fn remove_rows<V: redb::Value + 'static>(
    tx: &WriteTransaction,
    table: TableDefinition<(u64, u32), V>,
    job: u64,
) -> Result<(), redb::Error> {
    tx.open_table(table)?
        .retain_in((job, 0)..=(job, u32::MAX), |_, _| false)?;
    Ok(())
}

/// Runs a database call, turning a panic into an error: redb panics on some damaged pages, and
/// a damaged file must be an error that names it, never a crashed coordinator.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "the file is damaged ({why}): restore it from a backup, or move it aside to start afresh"
            ),
        })
    })
}

/// Tensors as bytes: per tensor, name length, name, dtype, rank, shape, data length, data.
fn encode(ts: &[WireTensor]) -> Vec<u8> {
    let mut b = vec![];
    b.extend((ts.len() as u32).to_le_bytes());
    for t in ts {
        b.extend((t.name.len() as u32).to_le_bytes());
        b.extend(t.name.as_bytes());
        b.extend((t.dtype as i32).to_le_bytes());
        b.extend((t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            b.extend(d.to_le_bytes());
        }
        b.extend((t.data.len() as u64).to_le_bytes());
        b.extend(&t.data);
    }
    b
}

fn decode(mut b: &[u8]) -> Option<Vec<WireTensor>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    let u32_ = |b: &mut &[u8]| Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?));
    let u64_ = |b: &mut &[u8]| Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?));
    let n = u32_(&mut b)?;
    let mut out = vec![];
    for _ in 0..n {
        let len = u32_(&mut b)? as usize;
        let name = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
        let dtype = Dtype::try_from(u32_(&mut b)? as i32).ok()?;
        let rank = u32_(&mut b)? as usize;
        let shape = (0..rank)
            .map(|_| u64_(&mut b))
            .collect::<Option<Vec<_>>>()?;
        let len = u64_(&mut b)? as usize;
        let data = take(&mut b, len)?.to_vec();
        out.push(WireTensor {
            name,
            dtype,
            shape,
            data,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running node sweep's record, with one attachment and one node shard.
    fn running(id: u64) -> JobRecord {
        JobRecord {
            id,
            name: format!("job{id}"),
            spec_toml: "[sweep]\nkind = \"nodes\"\n".into(),
            attachments: vec!["a.jsonl".into()],
            state: JobState::Running,
            error: None,
            submitted_unix: 1.0,
            finished_unix: None,
            meta: None,
            shards: vec![ShardTask::Prepare, ShardTask::Nodes { layers: vec![0] }],
            orders: None,
            circuit: None,
        }
    }

    #[test]
    fn jobs_shards_and_results_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobRecord {
            id: 7,
            name: "months".into(),
            spec_toml: "[sweep]\nkind = \"nodes\"\n".into(),
            attachments: vec!["prompts.jsonl".into()],
            state: JobState::Running,
            error: None,
            submitted_unix: 1.5,
            finished_unix: None,
            meta: None,
            shards: vec![ShardTask::Prepare, ShardTask::Nodes { layers: vec![0, 1] }],
            orders: None,
            circuit: None,
        };
        let ts = vec![
            WireTensor::f64("heads", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            WireTensor::json("runs", "[]".into()),
        ];
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_job(&job, Some(&[b"{\"clean\": 1}\n".to_vec()]))
                .unwrap();
            let rec = ShardRecord {
                done: true,
                attempts: 2,
                requeued: 1,
                failures: 0,
                refused: 0,
                losses: 1,
                profile: None,
                last_error: None,
            };
            s.put_result(7, 1, &rec, &ts).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.shards, job.shards);
        assert!(!all[0].1[0].done);
        assert!(all[0].1[1].done);
        assert_eq!((all[0].1[1].attempts, all[0].1[1].losses), (2, 1));
        assert_eq!(s.result(7, 1).unwrap().unwrap(), ts);
        assert_eq!(s.result(7, 0).unwrap(), None);
        assert_eq!(s.attachments(7, 1).unwrap()[0], b"{\"clean\": 1}\n");
    }

    #[test]
    fn deleting_a_job_removes_its_rows_only_and_its_id_stays_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_job_id().unwrap(), 0);
        let done = ShardRecord {
            done: true,
            ..Default::default()
        };
        let ts = vec![WireTensor::f64("heads", &[1], &[1.0])];
        for id in 1..=3 {
            s.put_job(&running(id), Some(&[b"x".to_vec()])).unwrap();
            s.put_result(id, 0, &done, &ts).unwrap();
            s.put_result(id, 1, &done, &ts).unwrap();
        }
        // The newest and a middle one: neighbours' rows at (id ± 1, *) stay.
        s.delete_job(3).unwrap();
        s.delete_job(2).unwrap();
        let ids: Vec<u64> = s.load().unwrap().iter().map(|(j, _)| j.id).collect();
        assert_eq!(ids, [1]);
        for id in [2, 3] {
            assert_eq!(s.result(id, 0).unwrap(), None);
            assert_eq!(s.result(id, 1).unwrap(), None);
            assert!(s.attachments(id, 1).is_err());
        }
        assert_eq!(s.result(1, 1).unwrap().unwrap(), ts);
        assert_eq!(s.attachments(1, 1).unwrap()[0], b"x");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_job_id().unwrap(), 3);
    }

    #[test]
    fn a_deleted_job_s_id_stays_used_even_from_an_old_database_and_gets_no_late_result() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // A record as a version before deletions wrote it: no last id kept.
        let tx = s.db.begin_write().unwrap();
        let old = serde_json::to_string(&running(5)).unwrap();
        tx.open_table(JOBS)
            .unwrap()
            .insert(5, old.as_str())
            .unwrap();
        tx.commit().unwrap();
        s.delete_job(5).unwrap();
        assert_eq!(s.last_job_id().unwrap(), 5);
        // A result stored after its job was deleted (outside the scheduler's lock) is dropped.
        let ts = vec![WireTensor::f64("heads", &[1], &[1.0])];
        s.put_result(5, 1, &ShardRecord::default(), &ts).unwrap();
        assert_eq!(s.result(5, 1).unwrap(), None);
    }

    #[test]
    fn a_state_change_rewrites_the_record_not_the_plan_and_old_records_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let orders = vec![vec![Component::Mlp { layer: 1 }; 50]; 2000];
        let mut job = JobRecord {
            orders: Some(orders.clone()),
            ..running(3)
        };
        let record = |s: &Store, id: u64| {
            let tx = s.db.begin_read().unwrap();
            let t = tx.open_table(JOBS).unwrap();
            t.get(id).unwrap().unwrap().value().to_string()
        };
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_plan(3, &job.shards[1..], &job.orders, &job.circuit)
                .unwrap();
            s.put_job(&job, None).unwrap();
            job.state = JobState::Cancelled;
            s.put_job(&job, None).unwrap();
            assert!(record(&s, 3).len() < 500, "{}", record(&s, 3));
            // A record as written before plans were kept apart: the plan inside it.
            let mut old = serde_json::to_value(&job).unwrap();
            old["id"] = 4.into();
            old["shards"] = serde_json::to_value(&job.shards).unwrap();
            old["orders"] = serde_json::to_value(&job.orders).unwrap();
            let tx = s.db.begin_write().unwrap();
            tx.open_table(JOBS)
                .unwrap()
                .insert(4, old.to_string().as_str())
                .unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all.len(), 2);
        for (rec, _) in &all {
            assert_eq!(rec.state, JobState::Cancelled);
            assert_eq!(rec.orders.as_ref(), Some(&orders), "job {}", rec.id);
        }
        // Rewritten, the old record keeps its plan apart.
        s.put_job(&all[1].0, None).unwrap();
        assert!(record(&s, 4).len() < 500);
        assert_eq!(s.load().unwrap()[1].0.orders.as_ref(), Some(&orders));
    }

    #[test]
    fn an_order_study_s_orders_are_stored_once_in_its_tasks_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let orders: Vec<Vec<Component>> = (0..40)
            .map(|i| vec![Component::Head { layer: i, head: 1 }; 30])
            .collect();
        let tasks: Vec<ShardTask> = orders
            .chunks(4)
            .enumerate()
            .map(|(i, o)| ShardTask::Orders {
                first: 4 * i,
                orders: o.to_vec(),
            })
            .collect();
        let s = Store::open(dir.path()).unwrap();
        s.put_job(&running(1), Some(&[b"x".to_vec()])).unwrap();
        s.put_plan(1, &tasks, &Some(orders.clone()), &None).unwrap();
        let once = serde_json::to_string(&orders).unwrap().len();
        let tx = s.db.begin_read().unwrap();
        let row = tx.open_table(PLANS).unwrap().get(1).unwrap().unwrap();
        assert!(
            row.value().len() < once * 3 / 2,
            "{} for {once}",
            row.value().len()
        );
        let (job, _) = s.load().unwrap().remove(0);
        assert_eq!(job.orders, Some(orders));
        assert_eq!(job.shards[0], ShardTask::Prepare);
        assert_eq!(&job.shards[1..], tasks.as_slice());
    }

    #[test]
    fn a_corrupted_database_is_an_error_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        {
            let s = Store::open(&good).unwrap();
            for id in 1..=20 {
                let job = running(id);
                s.put_job(&job, None).unwrap();
                let rec = ShardRecord {
                    done: true,
                    attempts: 1,
                    requeued: 0,
                    failures: 0,
                    refused: 0,
                    losses: 0,
                    profile: None,
                    last_error: None,
                };
                let ts = vec![WireTensor::f64("heads", &[1, 64], &[id as f64; 64])];
                s.put_result(id, 0, &rec, &ts).unwrap();
            }
        }
        let bytes = std::fs::read(good.join("state.redb")).unwrap();
        let mut panics = vec![];
        let step = (bytes.len() / 200).max(1);
        for at in (0..bytes.len()).step_by(step) {
            let d = dir.path().join(format!("bad{at}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut b = bytes.clone();
            for x in &mut b[at..(at + 32).min(bytes.len())] {
                *x ^= 0x5a;
            }
            std::fs::write(d.join("state.redb"), &b).unwrap();
            let r = std::panic::catch_unwind(|| {
                let s = Store::open(&d)?;
                let all = s.load()?;
                for (j, _) in &all {
                    s.result(j.id, 0)?;
                }
                Ok::<_, StoreError>(all.len())
            });
            if r.is_err() {
                panics.push(at);
            }
        }
        assert!(
            panics.is_empty(),
            "panicked with bytes flipped at {panics:?}"
        );
    }
}
