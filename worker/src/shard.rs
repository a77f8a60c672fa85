//! Computing one shard on a prepared job: each task's arm calls the sweep code and returns its
//! typed [`ShardOutput`] (the wire codec lives with the type).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::{BTreeMap, HashMap};

use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, GraphShape, Sender};
use circuit_sweep_common::edge_prune::{EdgePruneResult, EdgePruner, random_edge_order};
use circuit_sweep_common::guided::Guidance;
use circuit_sweep_common::prune::{PassOrder, PruneResult, Pruner};
use circuit_sweep_common::shard::NodeShard;
use circuit_sweep_common::shard::ShardTask;
use circuit_sweep_common::spec::Candidates;
use circuit_sweep_common::spec::EdgeMethod;
use circuit_sweep_proto::shard_output::ShardOutput;

use crate::eval::EdgeCandidate;
use crate::job::{PreparedJob, ShardError};
use crate::sweep::{self, SweepError};

/// Progress of a shard: units done and units in all (layers, runs or decisions).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Runs `task`; stops with [`ShardError::Cancelled`] soon after `cancel` is set.
pub fn execute(
    job: &PreparedJob,
    task: &ShardTask,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<ShardOutput, ShardError> {
    let info = job.loaded.model.info();
    let (n_layers, n_heads) = (info.n_layers, info.n_heads);
    let check = || {
        if cancel.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    match task {
        ShardTask::Prepare => Ok(ShardOutput::Prepared(Box::new(job.meta.clone()))),
        ShardTask::Nodes { layers } => {
            if let Some(l) = layers.iter().find(|&&l| l >= n_layers) {
                return Err(ShardError::BadInput(format!(
                    "shard asks for layer {l} of a {n_layers}-layer model"
                )));
            }
            let total = layers.len() as u64;
            let mut done = 0;
            let scores =
                sweep::node_sweep_layers(job.ev()?, layers, n_layers, n_heads, &mut |_| {
                    done += 1;
                    progress(done, total);
                    check()
                })?;
            Ok(ShardOutput::Nodes(NodeShard {
                layers: layers.clone(),
                heads: scores.heads,
                mlps: scores.mlps,
            }))
        }
        ShardTask::Prune => {
            let spec = &job.spec;
            let mut runs: Vec<PruneResult> = vec![];
            let mut start: Option<Vec<Component>> = None;
            let mut start_score = job.ev()?.scores(&[vec![]])?[0];
            for rule in spec.rules() {
                let mut pruner = if spec.sweep.candidates == Candidates::Attribution {
                    // Attribution of the circuit this rule starts from.
                    let all = Component::all(n_layers, n_heads);
                    let outside: Vec<Component> = match &start {
                        Some(s) => all.iter().filter(|c| !s.contains(c)).copied().collect(),
                        None => vec![],
                    };
                    let changes = node_attribution(job, &outside, &mut *progress, &check)?;
                    let cost = sweep::estimated_harm(job.ev()?, rule, &changes);
                    Pruner::guided(
                        n_layers,
                        n_heads,
                        &cost,
                        rule,
                        start.as_deref(),
                        start_score,
                    )
                } else {
                    Pruner::new(
                        n_layers,
                        n_heads,
                        PassOrder::Schedule(spec.sweep.schedule),
                        rule,
                        start.as_deref(),
                        start_score,
                    )
                };
                sweep::prune_lockstep(
                    job.ev()?,
                    std::slice::from_mut(&mut pruner),
                    &mut |_, d| {
                        progress(d, 0);
                        check()
                    },
                )?;
                let mut r = pruner.result();
                if spec.sweep.candidates == Candidates::Attribution {
                    let (method, steps) = spec.sweep.attribution_steps();
                    r.guided = Some(Guidance {
                        method: method.name().into(),
                        steps,
                        blocks: pruner.blocks(),
                        greedy_at_least: start.as_ref().map_or(n_layers * (n_heads + 1), Vec::len),
                    });
                }
                tracing::info!(
                    "{}: {} heads, {} MLPs, score {:.4} after {} evaluations in {} passes",
                    rule.describe(),
                    r.heads.len(),
                    r.mlps.len(),
                    r.score,
                    r.evaluations,
                    r.passes
                );
                start_score = r.score;
                start = Some(pruner.circuit());
                runs.push(r);
            }
            Ok(ShardOutput::Runs(runs))
        }
        ShardTask::Orders { orders, .. } => {
            let full_score = job.ev()?.scores(&[vec![]])?[0];
            let rule = job.spec.rule();
            let mut pruners: Vec<Pruner> = orders
                .iter()
                .map(|o| {
                    Pruner::new(
                        n_layers,
                        n_heads,
                        PassOrder::Fixed(o.clone()),
                        rule,
                        None,
                        full_score,
                    )
                })
                .collect();
            // Progress in decisions (the orders of a shard end together, near its end), so
            // that a long shard keeps its lease.
            sweep::prune_lockstep(job.ev()?, &mut pruners, &mut |_, d| {
                progress(d, 0);
                check()
            })?;
            let runs: Vec<PruneResult> = pruners.iter().map(Pruner::result).collect();
            Ok(ShardOutput::Runs(runs))
        }
        ShardTask::Edges { first, count } => {
            let (first, count) = (*first, *count);
            if first + count > job.inputs.edges.len() {
                return Err(ShardError::BadInput(format!(
                    "shard asks for edges {first}..{} of a graph of {}",
                    first + count,
                    job.inputs.edges.len()
                )));
            }
            let edges = &job.inputs.edges[first..first + count];
            // Chunks that fill a few passes each: progress and cancellation in between.
            let chunk = 64;
            let method = job.spec.sweep.edge_method;
            let ev = job.ev()?;
            let scores =
                sweep::edge_sweep(ev, method, edges, &job.inputs.outside, chunk, &mut |done| {
                    progress(done as u64, count as u64);
                    check()
                })?;
            Ok(ShardOutput::Edges(scores))
        }
        ShardTask::Circuits { first, count } => {
            let curves = job.inputs.curves.as_ref().ok_or_else(|| {
                ShardError::BadInput("a circuits shard of a job with no curves".into())
            })?;
            let circuits = curves.circuits();
            let (first, count) = (*first, *count);
            if first + count > circuits.len() {
                return Err(ShardError::BadInput(format!(
                    "shard asks for circuits {first}..{} of {}",
                    first + count,
                    circuits.len()
                )));
            }
            let edges = &job.inputs.edges;
            let ev = job.ev()?;
            let (mut metrics, mut kept) = (vec![], vec![]);
            for (i, keep) in circuits[first..first + count].iter().enumerate() {
                // The full graph (circuit 1) keeps every edge; every other circuit, its own.
                let ablated = if first + i == 1 {
                    vec![]
                } else {
                    let mut inside = vec![false; edges.len()];
                    for &k in keep.iter() {
                        inside[k as usize] = true;
                    }
                    edges
                        .iter()
                        .zip(&inside)
                        .filter(|(_, k)| !**k)
                        .map(|(e, _)| *e)
                        .collect()
                };
                kept.push((edges.len() - ablated.len()) as u64);
                metrics.push(
                    ev.edge_metrics(&[EdgeCandidate {
                        nodes: vec![],
                        edges: ablated,
                        settled: vec![],
                    }])?[0],
                );
                progress(i as u64 + 1, count as u64);
                if check().is_break() {
                    return Err(ShardError::Cancelled);
                }
            }
            Ok(ShardOutput::Circuits { metrics, kept })
        }
        ShardTask::Consensus { components } => {
            if let Some(c) = components
                .iter()
                .find(|c| c.check(n_layers, n_heads).is_err())
            {
                return Err(ShardError::BadInput(format!(
                    "shard asks for {c}, not in a model of {n_layers} layers of {n_heads} heads"
                )));
            }
            let outside: Vec<Component> = Component::all(n_layers, n_heads)
                .into_iter()
                .filter(|c| !components.contains(c))
                .collect();
            let score = job.ev()?.scores(&[outside])?[0];
            tracing::info!(
                "the consensus of {} components scores {score:.4}",
                components.len()
            );
            Ok(ShardOutput::Score(score))
        }
        ShardTask::EdgeConsensus { edges } => {
            let graph = &job.inputs.edges;
            let mut inside = vec![false; graph.len()];
            for &i in edges {
                *inside.get_mut(i).ok_or_else(|| {
                    ShardError::BadInput(format!(
                        "shard asks for edge {i} of a graph of {}",
                        graph.len()
                    ))
                })? = true;
            }
            let ablated: Vec<Edge> = graph
                .iter()
                .zip(&inside)
                .filter(|(_, k)| !**k)
                .map(|(e, _)| *e)
                .collect();
            let score = job.ev()?.edge_scores(&[EdgeCandidate {
                nodes: job.inputs.outside.clone(),
                edges: ablated,
                settled: vec![],
            }])?[0];
            tracing::info!("the consensus of {} edges scores {score:.4}", edges.len());
            Ok(ShardOutput::Score(score))
        }
        ShardTask::Attribution { first, count } => {
            let ev = job.ev()?;
            let (first, count) = (*first, *count);
            if count == 0 || first + count > ev.prompts() {
                return Err(ShardError::BadInput(format!(
                    "shard asks for prompts {first}..{} of {}",
                    first + count,
                    ev.prompts()
                )));
            }
            let (_, steps) = job.spec.sweep.attribution_steps();
            let edges = job.spec.sweep.scores_edges();
            let sums =
                sweep::attribution(ev, steps, edges, &[], first..first + count, &mut |done| {
                    progress(done as u64, count as u64);
                    check()
                })?;
            Ok(ShardOutput::Attribution {
                edges: sums.edges,
                nodes: sums.nodes,
            })
        }
        ShardTask::Downstream { first, count } => {
            let ds = job.downstream.as_ref().ok_or_else(|| {
                ShardError::BadInput("a downstream shard of a job with no downstream tasks".into())
            })?;
            let sets = &job.inputs.sets;
            if first + count > sets.len() {
                return Err(ShardError::BadInput(format!(
                    "shard asks for sets {first}..{} of a study of {}",
                    first + count,
                    sets.len()
                )));
            }
            let chosen: Vec<Vec<Component>> = sets[*first..first + count]
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            let tok = job.loaded.tokenizer.as_ref().ok_or_else(|| {
                ShardError::BadInput(format!("{} has no tokenizer", job.loaded.source.display()))
            })?;
            let tasks = ds.tasks.len() as u64;
            let acc = ds.accuracy(&job.loaded.model, tok, &chosen, &mut |done| {
                progress(done as u64, tasks);
                check()
            })?;
            Ok(ShardOutput::Accuracy(acc))
        }
        ShardTask::EdgePrune if job.spec.sweep.edge_method == EdgeMethod::Path => {
            // The paper's one pass: every edge path-patched alone, kept when that costs more
            // than the rule allows; the kept circuit is then scored with every other edge
            // ablated.
            let ev = job.ev()?;
            let n = job.inputs.edges.len() as u64;
            let start = ev.edge_scores(&[EdgeCandidate {
                nodes: job.inputs.outside.clone(),
                edges: vec![],
                settled: vec![],
            }])?[0];
            let rule = job.spec.rule();
            let scores = sweep::edge_sweep(
                ev,
                EdgeMethod::Path,
                &job.inputs.edges,
                &job.inputs.outside,
                64,
                &mut |d| {
                    progress(d as u64, n);
                    check()
                },
            )?;
            let removed: Vec<_> = job
                .inputs
                .edges
                .iter()
                .zip(&scores)
                .filter(|(_, s)| rule.removes(**s, start))
                .map(|(e, _)| *e)
                .collect();
            let score = ev.edge_scores(&[EdgeCandidate {
                nodes: job.inputs.outside.clone(),
                edges: removed,
                settled: vec![],
            }])?[0];
            let r = EdgePruneResult::one_pass(&job.inputs.edges, &scores, rule, start, score);
            tracing::info!(
                "path patching at {}: {} of {} edges kept, their circuit scores {:.4}",
                rule.describe(),
                r.edges.len(),
                r.graph_edges,
                r.score
            );
            Ok(ShardOutput::EdgeRuns(vec![r]))
        }
        ShardTask::EdgePrune | ShardTask::EdgeOrders { .. } => {
            let start = job.ev()?.edge_scores(&[EdgeCandidate {
                nodes: job.inputs.outside.clone(),
                edges: vec![],
                settled: vec![],
            }])?[0];
            let rule = job.spec.rule();
            let orders: Vec<Option<Vec<_>>> = match task {
                ShardTask::EdgeOrders { first, count } => (*first..first + count)
                    .map(|i| Some(random_edge_order(&job.inputs.edges, job.spec.sweep.seed, i)))
                    .collect(),
                _ => vec![None],
            };
            let guided = job.spec.sweep.candidates == Candidates::Attribution;
            let mut pruners = if guided {
                let changes = edge_attribution(job, &mut *progress, &check)?;
                let cost = sweep::estimated_harm(job.ev()?, rule, &changes);
                vec![EdgePruner::guided(
                    job.inputs.edges.clone(),
                    &cost,
                    rule,
                    start,
                )]
            } else {
                orders
                    .iter()
                    .map(|o| EdgePruner::new(job.inputs.edges.clone(), o.as_deref(), rule, start))
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(ShardError::BadInput)?
            };
            let total = pruners.len() as u64;
            sweep::edge_prune_lockstep(
                job.ev()?,
                &job.inputs.outside,
                &mut pruners,
                &mut |ps, d| {
                    if total > 1 {
                        progress(ps.iter().filter(|p| p.is_done()).count() as u64, total);
                    } else {
                        progress(d, 0);
                    }
                    check()
                },
            )?;
            let mut runs: Vec<_> = pruners.iter().map(EdgePruner::result).collect();
            if guided {
                let (method, steps) = job.spec.sweep.attribution_steps();
                for (r, p) in runs.iter_mut().zip(&pruners) {
                    r.guided = Some(Guidance {
                        method: method.name().into(),
                        steps,
                        blocks: p.blocks(),
                        greedy_at_least: job.inputs.edges.len(),
                    });
                }
            }
            for r in &runs {
                tracing::info!(
                    "edge pruning at {}: {} of {} edges kept, score {:.4} after {} evaluations in {} passes",
                    rule.describe(),
                    r.edges.len(),
                    r.graph_edges,
                    r.score,
                    r.evaluations,
                    r.passes
                );
            }
            Ok(ShardOutput::EdgeRuns(runs))
        }
    }
}

/// Estimated metric change of ablating each component alone (in [`Component::all`] order),
/// with the nodes `outside` ablated outright, over all the job's prompts.
fn node_attribution(
    job: &PreparedJob,
    outside: &[Component],
    progress: Progress<'_>,
    check: &dyn Fn() -> ControlFlow<()>,
) -> Result<Vec<f64>, ShardError> {
    let ev = job.ev()?;
    let info = job.loaded.model.info();
    let (_, steps) = job.spec.sweep.attribution_steps();
    let n = ev.prompts();
    let sums = sweep::attribution(ev, steps, false, outside, 0..n, &mut |done| {
        progress(done as u64, n as u64);
        check()
    })?;
    let row: BTreeMap<Sender, usize> = GraphShape {
        embed: true,
        ..info.graph_shape()
    }
    .senders()
    .into_iter()
    .enumerate()
    .map(|(i, s)| (s, i))
    .collect();
    Ok(Component::all(info.n_layers, info.n_heads)
        .into_iter()
        .map(|c| sums.nodes[row[&Sender::Node(c)]])
        .collect())
}

/// Estimated metric change of ablating each edge of the job's graph alone (with every node
/// outside its node circuit ablated outright), over all the job's prompts.
fn edge_attribution(
    job: &PreparedJob,
    progress: Progress<'_>,
    check: &dyn Fn() -> ControlFlow<()>,
) -> Result<Vec<f64>, ShardError> {
    let ev = job.ev()?;
    let (_, steps) = job.spec.sweep.attribution_steps();
    let n = ev.prompts();
    let outside = &job.inputs.outside;
    let sums = sweep::attribution(ev, steps, true, outside, 0..n, &mut |done| {
        progress(done as u64, n as u64);
        check()
    })?;
    let at: HashMap<Edge, usize> = ev
        .graph_shape()
        .edges()
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, i))
        .collect();
    job.inputs
        .edges
        .iter()
        .map(|e| {
            at.get(e).map(|&i| sums.edges[i]).ok_or_else(|| {
                ShardError::BadInput(format!("edge {e} is not in the model's graph"))
            })
        })
        .collect()
}

impl From<SweepError> for ShardError {
    fn from(e: SweepError) -> Self {
        match e {
            SweepError::Cancelled => ShardError::Cancelled,
            SweepError::Model(m) => ShardError::Model(m),
        }
    }
}
