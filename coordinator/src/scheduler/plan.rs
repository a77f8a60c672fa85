//! Planning a job once its prepare shard is done: its inputs resolved against the model's
//! shape (from the files submitted with it), and the shards cut from them. It runs outside the
//! scheduler's lock (an order study's orders are generated and stored here), handed out as a
//! [`Planning`]; [`Scheduler::planned`](super::Scheduler::planned) takes the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;

use circuit_sweep_common::Component;
use circuit_sweep_common::edge_prune::EdgeRun;
use circuit_sweep_common::extension;
use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::orders::run_set;
use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_common::spec::{OrderCount, SweepKind};

use super::SchedError;
use crate::store::Store;

/// What planning decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The shards after `prepare`.
    pub shards: Vec<ShardTask>,
    /// The order study's orders (stored with the job).
    pub orders: Option<Vec<Vec<Component>>>,
    /// The node circuit the spec names (stored with the job).
    pub circuit: Option<Vec<Component>>,
}

/// A job to plan, outside the lock.
#[derive(Debug)]
pub struct Planning {
    /// The job.
    pub job: u64,
    /// The prepare shard's report.
    pub meta: JobMeta,
    spec: SweepSpec,
    attachments: Vec<String>,
    store: Arc<Store>,
}

/// A planning's outcome: the plan (stored already), or why the job's inputs cannot be
/// planned (the job's failure).
pub type PlanOutcome = Result<Result<Planned, String>, SchedError>;

impl Planning {
    pub(super) fn new(
        job: u64,
        meta: JobMeta,
        spec: SweepSpec,
        attachments: Vec<String>,
        store: Arc<Store>,
    ) -> Self {
        Planning {
            job,
            meta,
            spec,
            attachments,
            store,
        }
    }

    /// Plans the job and stores its plan (a job that is cancelled meanwhile keeps a plan it
    /// will not run; one whose coordinator stops meanwhile is planned again on restart).
    pub fn run(&self) -> PlanOutcome {
        let _span = tracing::info_span!("plan", job = self.job).entered();
        let data = self.store.attachments(self.job, self.attachments.len())?;
        let files: BTreeMap<String, Vec<u8>> = self.attachments.iter().cloned().zip(data).collect();
        let planned = match plan(&self.spec, &self.meta, &files) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        self.store
            .put_plan(self.job, &planned.shards, &planned.orders, &planned.circuit)?;
        Ok(Ok(planned))
    }
}

/// Plans a job of `spec` on the model `meta` describes, reading the files the spec names from
/// `files` (submitted with it, by name); an error is the job's input at fault.
pub(super) fn plan(
    spec: &SweepSpec,
    meta: &JobMeta,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Planned, String> {
    let mut read = |p: &std::path::Path| {
        let name = p.display().to_string();
        files
            .get(&name)
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .ok_or_else(|| format!("{name}: not submitted with the job"))
    };
    let mut inputs = JobInputs::resolve(spec, meta.model_shape(), &mut read)?;
    if let (Some(file), Some(orders)) = (&spec.sweep.extends, &mut inputs.orders) {
        let shape = (inputs.graph.n_layers, inputs.graph.n_heads);
        let checked = extension::checked_orders(spec, shape, orders).into_owned();
        let earlier = extension::earlier_runs(
            &read(file)?,
            &file.display().to_string(),
            spec,
            &checked,
            meta,
        )?;
        inputs.earlier_orders = earlier.runs.len();
        if spec.sweep.orders == Some(OrderCount::Auto) {
            // Its first batch follows the earlier orders, as many as its rule asks for.
            let k = earlier.runs.len();
            *orders = checked;
            let sets: Vec<_> = earlier.runs.iter().map(run_set).collect();
            orders.truncate(k + extension::first_batch(spec, &sets));
        }
    }
    if let (Some(file), SweepKind::EdgePrune) = (&spec.sweep.extends, spec.sweep.kind) {
        let earlier = extension::earlier_edge_runs(
            &read(file)?,
            &file.display().to_string(),
            spec,
            spec.sweep.most_orders(),
            &inputs.edges,
            meta,
        )?;
        let k = earlier.study.runs.len();
        inputs.earlier_orders = k;
        inputs.edge_orders = Some(match spec.sweep.orders {
            Some(OrderCount::Auto) => {
                let sets: Vec<_> = earlier.study.runs.iter().map(EdgeRun::edge_set).collect();
                k + extension::first_batch(spec, &sets)
            }
            _ => spec.sweep.first_orders(),
        });
    }
    let prompts = meta.dataset["prompts"].as_u64().unwrap_or(0) as usize;
    if spec.sweep.kind == SweepKind::Attribution && prompts == 0 {
        return Err("the prepare shard reported no prompts to attribute over".into());
    }
    Ok(Planned {
        shards: inputs.plan(spec, prompts),
        orders: inputs.orders,
        circuit: inputs.circuit,
    })
}
