//! Aggregation: the shards' results of a finished job become the results folder:
//! `result.json`, the prompts, score tables and plots.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use circuit_sweep_common::Component;
use circuit_sweep_common::convergence::Next;
use circuit_sweep_common::downstream;
use circuit_sweep_common::edge::{Edge, GraphShape};
use circuit_sweep_common::edge_prune::{self, EdgeOrderStudy, EdgePruneResult};
use circuit_sweep_common::inputs::JobInputs;
use circuit_sweep_common::metric::{self, Unit};
use circuit_sweep_common::orders;
use circuit_sweep_common::prune::PruneResult;
use circuit_sweep_common::results::{
    self, AttributionScores, DownstreamSet, DownstreamStudy, EdgeScores, FaithfulnessCurve,
    FaithfulnessCurves, ModelRecord, NamedScores, NodeScores, PruneRuns, ResultDoc, Timing,
    WriteError,
};
use circuit_sweep_common::shard::{JobMeta, NodeShard, ShardTask};
use circuit_sweep_common::spec::{AttributionMethod, Candidates, SweepKind, SweepSpec};
use circuit_sweep_proto::shard_output::ShardOutput;

/// Everything the shards returned, in plan order.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// From the prepare shard.
    pub meta: Option<JobMeta>,
    /// Node shards.
    pub nodes: Vec<NodeShard>,
    /// The pruning runs (one per threshold).
    pub prune: Vec<PruneResult>,
    /// The order study's orders and runs.
    pub orders: Vec<(Vec<Component>, PruneResult)>,
    /// The runs of the earlier study an order study extends (`[sweep] extends`).
    pub earlier: Vec<orders::OrderRun>,
    /// The earlier study an edge order study extends.
    pub earlier_edges: Option<EdgeOrderStudy>,
    /// Edge scores in graph order.
    pub edges: Vec<f64>,
    /// The edge pruning run.
    pub edge_prune: Vec<EdgePruneResult>,
    /// Downstream accuracy `[set][task]` in % (sets in study order).
    pub downstream: Vec<Vec<f64>>,
    /// Attribution sums over the prompts, added shard by shard in plan order.
    pub attribution: Option<AttributionSums>,
    /// Attribution shards added.
    pub attribution_shards: usize,
    /// Faithfulness: every circuit's metric and kept edges, in circuit order.
    pub circuits: Vec<(f64, u64)>,
    /// An order study's consensus circuit and its score.
    pub consensus: Option<(ShardTask, f64)>,
}

/// Attribution sums: estimated metric changes per edge and per node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributionSums {
    /// Per edge of the graph.
    pub edges: Vec<f64>,
    /// Per node (the embedding, heads and MLPs).
    pub nodes: Vec<f64>,
}

impl Collected {
    /// Runs of the earlier edge order study this one extends.
    pub fn earlier_edge_runs(&self) -> usize {
        self.earlier_edges.as_ref().map_or(0, |e| e.runs.len())
    }

    /// Adds the output of a shard of `task` (shards in plan order).
    pub fn push(&mut self, task: &ShardTask, out: ShardOutput) {
        match (task, out) {
            (_, ShardOutput::Prepared(meta)) => self.meta = Some(*meta),
            (_, ShardOutput::Nodes(n)) => self.nodes.push(n),
            (ShardTask::Orders { orders, .. }, ShardOutput::Runs(runs)) => {
                self.orders.extend(orders.iter().cloned().zip(runs));
            }
            (_, ShardOutput::Runs(runs)) => self.prune = runs,
            (_, ShardOutput::Edges(scores)) => self.edges.extend(scores),
            (_, ShardOutput::EdgeRuns(runs)) => self.edge_prune.extend(runs),
            (_, ShardOutput::Accuracy(acc)) => self.downstream.extend(acc),
            (_, ShardOutput::Score(score)) => self.consensus = Some((task.clone(), score)),
            (_, ShardOutput::Circuits { metrics, kept }) => {
                self.circuits.extend(metrics.into_iter().zip(kept));
            }
            (_, ShardOutput::Attribution { edges, nodes }) => {
                self.attribution_shards += 1;
                match &mut self.attribution {
                    None => self.attribution = Some(AttributionSums { edges, nodes }),
                    Some(t) => {
                        for (a, b) in t.edges.iter_mut().zip(&edges) {
                            *a += b;
                        }
                        for (a, b) in t.nodes.iter_mut().zip(&nodes) {
                            *a += b;
                        }
                    }
                }
            }
        }
    }
}

/// Why a results folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The shards do not add up (a planner bug, never a worker's input).
    #[error("incomplete results: {0}")]
    Incomplete(String),
    /// The results do not make the asked-for numbers (a curve between two equal baselines).
    #[error("{0}")]
    Unsound(String),
}

fn model_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Writes `NAME.svg` and `NAME.dot` of a node circuit.
fn write_circuit(
    out: &Path,
    name: &str,
    circuit: &[Component],
    meta: &JobMeta,
    title: &str,
    sub: &str,
) -> Result<(), WriteError> {
    let kept = |c: &Component| if circuit.contains(c) { 1.0 } else { 0.0 };
    results::write_file(
        out,
        &format!("{name}.svg"),
        &results::circuit_svg(meta.n_layers, meta.n_heads, &kept, title, sub),
    )?;
    results::write_file(
        out,
        &format!("{name}.dot"),
        &results::circuit_dot(circuit, title),
    )
}

fn circuit_of(r: &PruneResult) -> Vec<Component> {
    r.heads
        .iter()
        .chain(&r.mlps)
        .map(|c| c.parse().expect("names a worker wrote and we checked"))
        .collect()
}

/// Writes `edges.csv` and a drawing of the most important edges; returns `result.json`'s
/// `edges`.
fn write_edges(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    meta: &JobMeta,
    name: &str,
    out: &Path,
) -> Result<EdgeScores, AggregateError> {
    let edges = &inputs.edges;
    if edges.len() != c.edges.len() {
        return Err(AggregateError::Incomplete(format!(
            "{} edge scores for a graph of {} edges",
            c.edges.len(),
            edges.len()
        )));
    }
    results::write_file(out, "edges.csv", &results::edges_csv(edges, &c.edges))?;
    let unit = Unit::of(spec.ablation.metric);
    let cost = edge_cost(spec, meta);
    // The drawing of a whole graph is unreadable: the 60 edges whose ablation costs most.
    let (top, importance) = costliest(edges, &c.edges, cost, 60);
    let title = format!(
        "{name}: the {} most important of {} edges ({:?} ablation)",
        top.len(),
        edges.len(),
        spec.ablation.kind
    );
    let sub = match (&inputs.circuit, meta.circuit_score) {
        (Some(circuit), Some(s)) => format!(
            "graph restricted to a {}-node circuit scoring {}; width: {}",
            circuit.len(),
            unit.show(s),
            width_legend(unit)
        ),
        _ => format!("width: {}", width_legend(unit)),
    };
    write_edge_drawing(out, "edges", &inputs.graph, &top, &importance, &title, &sub)?;
    Ok(EdgeScores {
        names: edges.iter().map(Edge::to_string).collect(),
        scores: c.edges.clone(),
        circuit: inputs.circuit.clone(),
        circuit_score: meta.circuit_score,
    })
}

/// The `n` edges whose scores cost most (ties to the earlier edge), in graph order, with their
/// costs.
fn costliest(
    edges: &[Edge],
    scores: &[f64],
    cost: impl Fn(f64) -> f64,
    n: usize,
) -> (Vec<Edge>, Vec<f64>) {
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.sort_by(|&a, &b| cost(scores[b]).total_cmp(&cost(scores[a])).then(a.cmp(&b)));
    order.truncate(n);
    order.sort_unstable();
    (
        order.iter().map(|&i| edges[i]).collect(),
        order.iter().map(|&i| cost(scores[i])).collect(),
    )
}

/// What an edge's single-edge score costs: `|100 - score|` in %, or the KL it adds (nats) to
/// the graph it was ablated from (the node circuit's, when the graph is restricted to one).
fn edge_cost(spec: &SweepSpec, meta: &JobMeta) -> impl Fn(f64) -> f64 {
    let unit = Unit::of(spec.ablation.metric);
    let base = match unit {
        Unit::Percent => 100.0,
        Unit::Nats => meta.circuit_score.unwrap_or(0.0),
    };
    move |s| unit.cost(s, base)
}

/// What line widths of edge drawings say.
fn width_legend(unit: Unit) -> &'static str {
    match unit {
        Unit::Percent => "100 - score of the edge ablated alone",
        Unit::Nats => "KL (nats) the edge adds when ablated alone",
    }
}

/// Writes `edge-circuit.svg` and `.dot`: the kept edges, widths by their single-edge scores.
fn write_edge_circuit(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    meta: &JobMeta,
    name: &str,
    r: &EdgePruneResult,
    out: &Path,
) -> Result<(), AggregateError> {
    let edges = &inputs.edges;
    let kept: Vec<Edge> = r
        .edges
        .iter()
        .map(|e| e.parse().expect("names the coordinator checked"))
        .collect();
    let unit = Unit::of(spec.ablation.metric);
    let cost = edge_cost(spec, meta);
    let importance: Vec<f64> = if r.guided.is_some() {
        // No single-edge sweep: the last pass scored every kept edge removed from the final
        // circuit, exactly.
        let last: HashMap<&str, f64> = r
            .decisions
            .iter()
            .map(|d| (d.edge.as_str(), d.score))
            .collect();
        r.edges
            .iter()
            .map(|k| last.get(k.as_str()).map_or(0.0, |&s| unit.cost(s, r.score)))
            .collect()
    } else {
        kept.iter()
            .map(|k| {
                edges
                    .iter()
                    .position(|e| e == k)
                    .map_or(0.0, |i| cost(c.edges[i]))
            })
            .collect()
    };
    let title = format!(
        "{name}: edge circuit at {} ({} of {} edges, score {})",
        r.rule().describe(),
        kept.len(),
        r.graph_edges,
        unit.show(r.score)
    );
    let sub = match &r.guided {
        Some(g) => format!(
            "{} evaluations in {} passes, candidates by {} ({} blocks); width: {}",
            r.evaluations,
            r.passes,
            g.method,
            g.blocks,
            match unit {
                Unit::Percent => "score lost when removed from the circuit",
                Unit::Nats => "KL (nats) added when removed from the circuit",
            }
        ),
        None => format!(
            "{} evaluations, {} passes; width: {}",
            r.evaluations,
            r.passes,
            width_legend(unit)
        ),
    };
    write_edge_drawing(
        out,
        "edge-circuit",
        &inputs.graph,
        &kept,
        &importance,
        &title,
        &sub,
    )
}

/// The score pruning starts from: the node circuit's when the graph is restricted to one, else
/// the full model's (100 %, or KL 0).
/// The score of an order study's consensus `want`, when it was scored (results stored before
/// it was are aggregated without); refused when another circuit was.
fn consensus_score(c: &Collected, want: &ShardTask) -> Result<Option<f64>, AggregateError> {
    match &c.consensus {
        None => Ok(None),
        Some((task, score)) if task == want => Ok(Some(*score)),
        Some((task, _)) => Err(AggregateError::Incomplete(format!(
            "the circuit scored as the consensus ({}) is not the runs' consensus ({})",
            task.label(),
            want.label()
        ))),
    }
}

/// Where an `auto` order study stopped; refused when its runs say it should go on.
fn auto_stop(
    spec: &SweepSpec,
    c: &Collected,
) -> Result<Option<circuit_sweep_common::convergence::AutoState>, AggregateError> {
    match crate::followup::auto_state(spec, c) {
        None => Ok(None),
        Some((_, Next::Stop(s))) => Ok(Some(s)),
        Some((_, Next::More(k))) => Err(AggregateError::Incomplete(format!(
            "the study's intervals are not yet narrow enough: {k} more orders are due"
        ))),
    }
}

fn start_score(spec: &SweepSpec, meta: &JobMeta) -> f64 {
    meta.circuit_score
        .unwrap_or(match Unit::of(spec.ablation.metric) {
            Unit::Percent => 100.0,
            Unit::Nats => 0.0,
        })
}

/// The edge order study: `edge-frequency.svg` / `.dot` (every edge kept by any order, widths
/// by the share of orders keeping it); returns `result.json`'s `edge_orders`.
fn write_edge_study(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    meta: &JobMeta,
    name: &str,
    out: &Path,
) -> Result<EdgeOrderStudy, AggregateError> {
    let start = start_score(spec, meta);
    // The orders the workers drew, run `i` in order `i` of the seed.
    let first = c.earlier_edge_runs();
    let orders: Vec<String> = (first..first + c.edge_prune.len())
        .map(|i| edge_prune::seeded_order_fingerprint(&inputs.edges, spec.sweep.seed, i))
        .collect();
    let mut study =
        edge_prune::summarize_edge_study(c.earlier_edges.as_ref(), &c.edge_prune, &orders, start);
    let at: std::collections::HashMap<&Edge, usize> = inputs.edges.iter().zip(0..).collect();
    let edges = study
        .stats
        .consensus
        .components
        .iter()
        .map(|e| {
            let e: Edge = e.parse().expect("names we wrote");
            at.get(&e).copied().ok_or_else(|| {
                AggregateError::Incomplete(format!("a run kept {e}, not in the job's graph"))
            })
        })
        .collect::<Result<_, _>>()?;
    study.stats.consensus.score = consensus_score(c, &ShardTask::EdgeConsensus { edges })?;
    study.auto = auto_stop(spec, c)?;
    tracing::info!(
        "{} edge orders: circuit sizes {}..{}, mean Jaccard {:.3}, core {} edges, union {}",
        study.runs.len(),
        study.stats.sizes.iter().min().unwrap_or(&0),
        study.stats.sizes.iter().max().unwrap_or(&0),
        study.stats.jaccard_mean,
        study.stats.core.len(),
        study.stats.union.len()
    );
    let union: Vec<Edge> = study
        .stats
        .union
        .iter()
        .map(|e| e.parse().expect("names we wrote"))
        .collect();
    let share: Vec<f64> = study
        .stats
        .union
        .iter()
        .map(|e| study.stats.frequency[e])
        .collect();
    let title = format!(
        "{name}: edge order study, {} orders at {}",
        study.runs.len(),
        spec.rule().describe()
    );
    let sub = format!(
        "{} edges in any circuit, {} in every one; mean Jaccard {:.3}; width: share of orders keeping the edge",
        union.len(),
        study.stats.core.len(),
        study.stats.jaccard_mean
    );
    write_edge_drawing(
        out,
        "edge-frequency",
        &inputs.graph,
        &union,
        &share,
        &title,
        &sub,
    )?;
    write_study_figures(out, spec, &study.stats, &study.scores, &[], "edges", &title)?;
    Ok(study)
}

/// An order study's `jaccard.svg` and `size-score.svg`.
fn write_study_figures(
    out: &Path,
    spec: &SweepSpec,
    stats: &orders::SetStats,
    scores: &[f64],
    marks: &[results::Mark],
    unit: &str,
    title: &str,
) -> Result<(), AggregateError> {
    results::write_file(out, "jaccard.svg", &results::jaccard_svg(stats, title))?;
    let label = match spec.rule().tau() {
        Some(_) => "KL divergence from the full model (nats)",
        None => "score (% of the full model)",
    };
    results::write_file(
        out,
        "size-score.svg",
        &results::size_score_svg(
            &stats.sizes,
            scores,
            marks,
            spec.rule().threshold(),
            unit,
            label,
            title,
        ),
    )?;
    Ok(())
}

/// Writes `NAME.svg` and `NAME.dot` of some edges.
fn write_edge_drawing(
    out: &Path,
    name: &str,
    shape: &GraphShape,
    edges: &[Edge],
    importance: &[f64],
    title: &str,
    sub: &str,
) -> Result<(), AggregateError> {
    // Key/value receivers of key/value heads are drawn at their group's first query head.
    let group = if shape.kv_per_query {
        1
    } else {
        shape.n_heads / shape.n_kv_heads.max(1)
    };
    let svg = results::edge_svg(
        shape.n_layers,
        shape.n_heads,
        group,
        edges,
        importance,
        title,
        sub,
    );
    results::write_file(out, &format!("{name}.svg"), &svg)?;
    let dot = results::edge_dot(edges, importance, group, title);
    results::write_file(out, &format!("{name}.dot"), &dot)?;
    Ok(())
}

/// Writes `attribution.csv` (and with edges `attribution-nodes.csv` and a drawing of the 60
/// edges estimated to matter most); returns `result.json`'s `attribution`: sums of estimated
/// metric changes turned into scores as exact ones are (`full + change`).
fn write_attribution(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    meta: &JobMeta,
    name: &str,
    out: &Path,
) -> Result<AttributionScores, AggregateError> {
    let sums = c
        .attribution
        .as_ref()
        .ok_or_else(|| AggregateError::Incomplete("no attribution shard".into()))?;
    let prompts = meta.dataset["prompts"].as_u64().unwrap_or(0) as usize;
    let shards = circuit_sweep_common::shard::prompts_per_shard(prompts);
    if c.attribution_shards != prompts.div_ceil(shards) {
        return Err(AggregateError::Incomplete(format!(
            "{} attribution shards of {}",
            c.attribution_shards,
            prompts.div_ceil(shards)
        )));
    }
    let a = &spec.ablation;
    let score = |d: &f64| {
        metric::score(
            a.metric,
            a.normalize,
            meta.full + d,
            meta.full,
            meta.corrupt,
            meta.empty,
        )
    };
    let (method, steps) = spec.sweep.attribution_steps();
    let senders = GraphShape {
        embed: true,
        ..inputs.graph
    }
    .senders();
    if sums.nodes.len() != senders.len() {
        return Err(AggregateError::Incomplete(format!(
            "{} node sums for {} nodes",
            sums.nodes.len(),
            senders.len()
        )));
    }
    let nodes = NamedScores {
        names: senders.iter().map(|s| s.to_string()).collect(),
        scores: sums.nodes.iter().map(score).collect(),
    };
    let node_csv = |n: &NamedScores| {
        let mut csv = String::from("node,score\n");
        for (x, s) in n.names.iter().zip(&n.scores) {
            csv.push_str(&format!("{x},{s}\n"));
        }
        csv
    };
    if !spec.sweep.scores_edges() {
        results::write_file(out, "attribution.csv", &node_csv(&nodes))?;
        return Ok(AttributionScores {
            method,
            steps,
            names: nodes.names,
            scores: nodes.scores,
            nodes: None,
        });
    }
    let edges = &inputs.edges;
    if edges.len() != sums.edges.len() {
        return Err(AggregateError::Incomplete(format!(
            "{} attribution sums for a graph of {} edges",
            sums.edges.len(),
            edges.len()
        )));
    }
    let scores: Vec<f64> = sums.edges.iter().map(score).collect();
    results::write_file(out, "attribution.csv", &results::edges_csv(edges, &scores))?;
    results::write_file(out, "attribution-nodes.csv", &node_csv(&nodes))?;
    let unit = Unit::of(a.metric);
    let cost = edge_cost(spec, meta);
    let (top, importance) = costliest(edges, &scores, cost, 60);
    let title = format!(
        "{name}: the {} of {} edges {} estimates to matter most ({:?} ablation)",
        top.len(),
        edges.len(),
        match method {
            AttributionMethod::Eap => "EAP".to_string(),
            AttributionMethod::EapIg => format!("EAP-IG ({steps} steps)"),
        },
        a.kind
    );
    let sub = format!("width: estimated {}", width_legend(unit));
    write_edge_drawing(
        out,
        "attribution",
        &inputs.graph,
        &top,
        &importance,
        &title,
        &sub,
    )?;
    Ok(AttributionScores {
        method,
        steps,
        names: edges.iter().map(Edge::to_string).collect(),
        scores,
        nodes: Some(nodes),
    })
}

/// Writes `faithfulness.csv` and `faithfulness.svg`; returns `result.json`'s `faithfulness`.
fn write_faithfulness(
    spec: &SweepSpec,
    c: &Collected,
    name: &str,
    out: &Path,
) -> Result<FaithfulnessCurves, AggregateError> {
    use circuit_sweep_common::faithfulness as fa;
    let want = spec.sweep.faithfulness_circuits();
    if c.circuits.len() != want {
        return Err(AggregateError::Incomplete(format!(
            "{} circuit results of {want}",
            c.circuits.len()
        )));
    }
    let fractions = spec.sweep.fractions();
    let (empty, full) = (c.circuits[0].0, c.circuits[1].0);
    let total = c.circuits[1].1 as usize;
    let files = spec.sweep.scores_files.as_deref().unwrap_or_default();
    let mut curves = vec![];
    let mut csv = String::from("file,selection,fraction,edges,metric,faithfulness\n");
    let mut rest = c.circuits[2..].chunks(fractions.len());
    for file in files {
        for absolute in [false, true] {
            let part = rest.next().ok_or_else(|| {
                AggregateError::Incomplete("fewer curves than score files".into())
            })?;
            let f: Vec<f64> = part
                .iter()
                .map(|(m, _)| fa::faithfulness(*m, empty, full))
                .collect::<Result<_, _>>()
                .map_err(|e| AggregateError::Unsound(e.to_string()))?;
            let points: Vec<(f64, f64)> =
                fractions.iter().copied().zip(f.iter().copied()).collect();
            let file = file.display().to_string();
            for ((x, fx), (m, k)) in points.iter().zip(part) {
                csv.push_str(&format!(
                    "{file},{},{x},{k},{m},{fx}\n",
                    if absolute { "absolute" } else { "signed" }
                ));
            }
            curves.push(FaithfulnessCurve {
                file,
                absolute,
                edges: part.iter().map(|p| p.1).collect(),
                metrics: part.iter().map(|p| p.0).collect(),
                cpr: fa::cpr(&points),
                cmd: fa::cmd(&points),
                faithfulness: f,
            });
        }
    }
    results::write_file(out, "faithfulness.csv", &csv)?;
    let lines: Vec<results::CurveLine> = curves
        .iter()
        .map(|cv| {
            let label = if cv.absolute {
                format!("{} |score| (CMD {:.3})", cv.file, cv.cmd)
            } else {
                format!("{} (CPR {:.3})", cv.file, cv.cpr)
            };
            let pts = fractions
                .iter()
                .copied()
                .zip(cv.faithfulness.iter().copied());
            (label, cv.absolute, pts.collect())
        })
        .collect();
    let sub = format!(
        "faithfulness (m(C) - m(empty)) / (m(full) - m(empty)) by exact patching; {total} edges; empty {empty:.4}, full {full:.4}; dashed: by absolute score"
    );
    results::write_file(
        out,
        "faithfulness.svg",
        &results::curves_svg(
            &lines,
            "edges kept (share of the graph)",
            &format!(
                "{name}: faithfulness curves ({:?} ablation)",
                spec.ablation.kind
            ),
            &sub,
        ),
    )?;
    Ok(FaithfulnessCurves {
        fractions,
        graph_edges: total,
        empty,
        full,
        curves,
    })
}

/// Writes `downstream.csv` and `downstream.svg`; returns `result.json`'s `downstream`: the
/// ablation (and for mean ablation what the mean is over), every set with its components and
/// accuracy per task, the random sets' spread per task, and per task the share of random sets
/// that do no better than the circuit (a one-sided empirical p-value: small when the circuit
/// hurts more than chance).
fn write_downstream(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    name: &str,
    out: &Path,
) -> Result<DownstreamStudy, AggregateError> {
    let sets = &inputs.sets;
    if sets.len() != c.downstream.len() {
        return Err(AggregateError::Incomplete(format!(
            "{} downstream results for {} sets",
            c.downstream.len(),
            sets.len()
        )));
    }
    let tasks: Vec<String> = spec
        .downstream
        .tasks
        .iter()
        .map(|t| t.to_string())
        .collect();
    let random: Vec<usize> = (0..sets.len())
        .filter(|&i| sets[i].0.starts_with("random"))
        .collect();
    let ablation = downstream::ablation_record(spec.ablation.kind);
    let kind = ablation["ablation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut csv = format!("set,components,{},ablation\n", tasks.join(","));
    let mut rows = vec![];
    for ((set_name, comps), acc) in sets.iter().zip(&c.downstream) {
        let names: Vec<String> = comps.iter().map(|x| x.to_string()).collect();
        let cells: Vec<String> = acc.iter().map(|v| v.to_string()).collect();
        csv.push_str(&format!(
            "{set_name},{},{},{kind}\n",
            names.join(" "),
            cells.join(",")
        ));
        rows.push(DownstreamSet {
            name: set_name.clone(),
            components: names,
            accuracy: tasks.iter().cloned().zip(acc.iter().copied()).collect(),
        });
    }
    results::write_file(out, "downstream.csv", &csv)?;
    let mut spread = BTreeMap::new();
    let mut p_values = BTreeMap::new();
    let circuit = sets.iter().position(|s| s.0 == "circuit heads");
    for (t, task) in tasks.iter().enumerate() {
        let xs: Vec<f64> = random.iter().map(|&i| c.downstream[i][t]).collect();
        spread.insert(task.clone(), downstream::Spread::of(&xs));
        if let (Some(ci), false) = (circuit, xs.is_empty()) {
            let at_most = xs.iter().filter(|&&x| x <= c.downstream[ci][t]).count();
            p_values.insert(task.clone(), at_most as f64 / xs.len() as f64);
        }
    }
    let dots: Vec<Vec<f64>> = random.iter().map(|&i| c.downstream[i].clone()).collect();
    let marks: Vec<(String, Vec<f64>)> = sets
        .iter()
        .zip(&c.downstream)
        .filter(|(s, _)| !s.0.starts_with("random"))
        .map(|(s, acc)| (s.0.clone(), acc.clone()))
        .collect();
    let size = sets
        .get(random.first().copied().unwrap_or(0))
        .map_or(0, |s| s.1.len());
    results::write_file(
        out,
        "downstream.svg",
        &results::strip_svg(
            &tasks,
            &dots,
            &marks,
            &format!("{name}: downstream accuracy with heads {kind}-ablated"),
            &format!(
                "exact match of greedy generation, {} prompts per task; dots: {} random sets of {size} heads",
                spec.downstream.n,
                random.len()
            ),
        ),
    )?;
    Ok(DownstreamStudy {
        tasks,
        sets: rows,
        random: spread,
        circuit_p_value: p_values,
        ablation: ablation
            .as_object()
            .expect("an object")
            .clone()
            .into_iter()
            .collect(),
    })
}

/// Writes the results folder of a job into `out` and returns `result.json` (whose `timing`
/// is `timing`, the only field that differs between two runs of the same spec).
pub fn write(
    spec: &SweepSpec,
    inputs: &JobInputs,
    c: &Collected,
    timing: Timing,
    out: &Path,
) -> Result<ResultDoc, AggregateError> {
    let meta = c
        .meta
        .as_ref()
        .ok_or_else(|| AggregateError::Incomplete("no prepare result".into()))?;
    let name = model_name(&meta.model_path);
    // No prompt pairs in a downstream study: no full or corrupt metric (the study's first set
    // is the full model).
    let pairs = spec.sweep.kind != SweepKind::Downstream;
    let mut doc = ResultDoc {
        schema: results::SCHEMA,
        spec: spec.clone(),
        model: ModelRecord {
            path: meta.model_path.clone(),
            info: meta.info.clone(),
        },
        dataset: meta.dataset.clone(),
        full: pairs.then_some(meta.full),
        corrupt: pairs.then_some(meta.corrupt),
        empty: meta.empty,
        nodes: None,
        prune: None,
        orders: None,
        edges: None,
        edge_prune: None,
        edge_orders: None,
        downstream: None,
        attribution: None,
        faithfulness: None,
        timing,
    };
    std::fs::create_dir_all(out).map_err(|e| WriteError {
        path: out.to_path_buf(),
        source: e,
    })?;
    results::write_file(out, "prompts.jsonl", &meta.prompts_jsonl)?;
    if matches!(spec.sweep.kind, SweepKind::Nodes | SweepKind::Prune) {
        let mut scores = NodeScores {
            heads: vec![vec![]; meta.n_layers],
            mlps: vec![f64::NAN; meta.n_layers],
        };
        for s in &c.nodes {
            for (i, &l) in s.layers.iter().enumerate() {
                scores.heads[l] = s.heads[i].clone();
                scores.mlps[l] = s.mlps[i];
            }
        }
        if let Some(l) = (0..meta.n_layers).find(|&l| scores.heads[l].len() != meta.n_heads) {
            return Err(AggregateError::Incomplete(format!(
                "no node scores for layer {l}"
            )));
        }
        let title = format!(
            "{name} — node sweep ({:?} ablation, {} prompts)",
            spec.ablation.kind, meta.dataset["prompts"]
        );
        results::write_node_scores(out, &scores, &title, Unit::of(spec.ablation.metric))?;
        doc.nodes = Some(scores);
    }
    match spec.sweep.kind {
        SweepKind::Nodes => {}
        SweepKind::Attribution => {
            doc.attribution = Some(write_attribution(spec, inputs, c, meta, &name, out)?);
        }
        SweepKind::Faithfulness => {
            doc.faithfulness = Some(write_faithfulness(spec, c, &name, out)?);
        }
        SweepKind::Downstream => {
            doc.downstream = Some(write_downstream(spec, inputs, c, &name, out)?);
        }
        SweepKind::Prune => {
            if c.prune.is_empty() {
                return Err(AggregateError::Incomplete("no pruning result".into()));
            }
            let unit = Unit::of(spec.ablation.metric);
            for r in &c.prune {
                let circuit = circuit_of(r);
                let title = format!(
                    "{name}: circuit at {} ({} heads, {} MLPs, score {})",
                    r.rule().describe(),
                    r.heads.len(),
                    r.mlps.len(),
                    unit.show(r.score)
                );
                let sub = match &r.guided {
                    Some(g) => format!(
                        "candidates by {} ({} blocks), {} evaluations, {} passes",
                        g.method, g.blocks, r.evaluations, r.passes
                    ),
                    None => format!(
                        "{:?} schedule, {} evaluations, {} passes",
                        spec.sweep.schedule, r.evaluations, r.passes
                    ),
                };
                // Nested thresholds each get their own drawing; KL runs have one rule.
                if let Some(t) = r.threshold {
                    write_circuit(out, &format!("circuit-{t}"), &circuit, meta, &title, &sub)?;
                }
                write_circuit(out, "circuit", &circuit, meta, &title, &sub)?;
            }
            doc.prune = Some(PruneRuns::of(c.prune.clone()));
        }
        SweepKind::Edges | SweepKind::EdgePrune => {
            if spec.sweep.candidates == Candidates::All {
                doc.edges = Some(write_edges(spec, inputs, c, meta, &name, out)?);
            }
            match (spec.sweep.kind, spec.sweep.orders) {
                (SweepKind::EdgePrune, None) => {
                    let r = c.edge_prune.first().ok_or_else(|| {
                        AggregateError::Incomplete("no edge pruning result".into())
                    })?;
                    write_edge_circuit(spec, inputs, c, meta, &name, r, out)?;
                    doc.edge_prune = Some(r.clone());
                }
                (SweepKind::EdgePrune, Some(count)) => {
                    if let Some(k) = count.fixed()
                        && c.earlier_edge_runs() + c.edge_prune.len() != k
                    {
                        return Err(AggregateError::Incomplete(format!(
                            "{} edge order runs of {k}",
                            c.earlier_edge_runs() + c.edge_prune.len()
                        )));
                    }
                    doc.edge_orders = Some(write_edge_study(spec, inputs, c, meta, &name, out)?);
                }
                _ => {}
            }
        }
        SweepKind::Orders => {
            let rule = spec.rule().describe();
            let start = start_score(spec, meta);
            let mut runs = c.earlier.clone();
            runs.extend(c.orders.iter().map(|(o, r)| orders::order_run(o, r, start)));
            let mut study = orders::summarize_runs(runs, c.prune.first());
            let consensus: Vec<Component> = study
                .stats
                .consensus
                .components
                .iter()
                .map(|x| x.parse().expect("names we wrote"))
                .collect();
            study.stats.consensus.score = consensus_score(
                c,
                &ShardTask::Consensus {
                    components: consensus.clone(),
                },
            )?;
            study.auto = auto_stop(spec, c)?;
            let k = study.runs.len();
            let heads_jaccard = study.stats.jaccard_heads_mean.unwrap_or(f64::NAN);
            tracing::info!(
                "{} orders: circuit sizes {}..{}, mean Jaccard {:.3} (heads only {:.3}), core {} components, union {}",
                k,
                study.stats.sizes.iter().min().unwrap_or(&0),
                study.stats.sizes.iter().max().unwrap_or(&0),
                study.stats.jaccard_mean,
                heads_jaccard,
                study.stats.core.len(),
                study.stats.union.len()
            );
            if let Some(p) = &study.paper {
                tracing::info!(
                    "the paper schedule's circuit: {} components, score {:.4}; at least as large as {:.0} % of the orders' circuits, scoring at least as high as {:.0} % of them; mean Jaccard with them {:.3}",
                    p.components.len(),
                    p.score,
                    100.0 * p.size_quantile,
                    100.0 * p.score_quantile,
                    p.jaccard_mean
                );
            }
            let title = format!("{name}: order study, {k} orders at {rule}");
            results::write_file(
                out,
                "frequency.svg",
                &results::frequency_svg(&study.stats.frequency, &study.stats.frequency_ci, &title),
            )?;
            let marks: Vec<results::Mark> = study
                .paper
                .iter()
                .map(|p| ("paper schedule".into(), p.components.len() as f64, p.score))
                .collect();
            write_study_figures(
                out,
                spec,
                &study.stats,
                &study.scores,
                &marks,
                "components",
                &title,
            )?;
            let freq = study.stats.frequency.clone();
            let shade = move |c: &Component| freq.get(&c.to_string()).copied().unwrap_or(0.0);
            let sub = format!(
                "shade: share of orders keeping the component; mean Jaccard {:.3} (heads only {:.3})",
                study.stats.jaccard_mean, heads_jaccard
            );
            results::write_file(
                out,
                "frequency-grid.svg",
                &results::circuit_svg(meta.n_layers, meta.n_heads, &shade, &title, &sub),
            )?;
            let names = |list: &[String]| -> Vec<Component> {
                list.iter()
                    .map(|c| c.parse().expect("names we wrote"))
                    .collect()
            };
            for (what, circuit) in [
                ("core", names(&study.stats.core)),
                ("consensus", consensus.clone()),
            ] {
                results::write_file(
                    out,
                    &format!("{what}.dot"),
                    &results::circuit_dot(&circuit, &format!("{title}: {what}")),
                )?;
            }
            let freq = study.stats.frequency.clone();
            let members = consensus.clone();
            let shade = move |c: &Component| match members.contains(c) {
                true => freq.get(&c.to_string()).copied().unwrap_or(0.0),
                false => 0.0,
            };
            let unit = Unit::of(spec.ablation.metric);
            let scored = match study.stats.consensus.score {
                Some(x) => format!(", scoring {}", unit.show(x)),
                None => String::new(),
            };
            let sub = format!(
                "the consensus: {} components kept by at least half of the orders{scored} (shade: their share), against {} in every circuit and {} in any",
                consensus.len(),
                study.stats.core.len(),
                study.stats.union.len()
            );
            if let Some(x) = study.stats.consensus.score {
                tracing::info!(
                    "the consensus: {} components, score {}",
                    consensus.len(),
                    unit.show(x)
                );
            }
            if let Some(a) = &study.auto {
                tracing::info!(
                    "orders = \"auto\": {} after {k} orders, widest interval half-width {:.4} (asked {}, cap {})",
                    if a.converged {
                        "converged"
                    } else {
                        "stopped at the cap"
                    },
                    a.widest,
                    a.ci_width,
                    a.max_orders
                );
            }
            results::write_file(
                out,
                "consensus.svg",
                &results::circuit_svg(meta.n_layers, meta.n_heads, &shade, &title, &sub),
            )?;
            doc.orders = Some(study);
        }
    }
    doc.write(out)?;
    Ok(doc)
}
