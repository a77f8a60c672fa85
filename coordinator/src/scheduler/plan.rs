//! Planning a job once its prepare shard is done: its inputs resolved against the model's
//! shape (from the files submitted with it), and the shards cut from them.

use std::collections::BTreeMap;

use circuit_sweep_common::Component;
use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::shard::{JobMeta, ShardTask};
use circuit_sweep_common::spec::SweepSpec;

/// What planning decided.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    /// The shards after `prepare`.
    pub shards: Vec<ShardTask>,
    /// The order study's orders (stored with the job).
    pub orders: Option<Vec<Vec<Component>>>,
    /// The node circuit the spec names (stored with the job).
    pub circuit: Option<Vec<Component>>,
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
    let inputs = JobInputs::resolve(spec, meta.model_shape(), &mut read)?;
    Ok(Planned {
        shards: inputs.plan(spec),
        orders: inputs.orders,
        circuit: inputs.circuit,
    })
}
