//! An order study that extends an earlier one (`[sweep] extends`): the earlier study's runs are
//! kept and only the orders after them are run. Orders are drawn one after another from the
//! spec's seed, so the earlier study's orders are the first ones of the larger study, and the
//! extension gives the numbers the larger study would give at once. The earlier study must be
//! of the same spec (but for `orders`), model and dataset, and say so.

use std::borrow::Cow;
use std::path::Path;

use crate::Component;
use crate::convergence::{AutoRule, Next};
use crate::edge::Edge;
use crate::edge_prune::{EdgeOrderStudy, seeded_order_fingerprint};
use crate::orders::OrderRun;
use crate::results::ResultDoc;
use crate::shard::JobMeta;
use crate::spec::{OrderCount, SweepSpec};

/// What an extension keeps of the study it extends.
#[derive(Debug, Clone, PartialEq)]
pub struct Earlier {
    /// Its runs, in study order.
    pub runs: Vec<OrderRun>,
    /// The numeric profiles that computed them.
    pub profiles: Vec<String>,
}

/// The orders an extension's earlier study is checked against: every order it may run (an
/// `auto` study's, up to its cap), else the job's `orders`.
pub fn checked_orders<'a>(
    spec: &SweepSpec,
    (n_layers, n_heads): (usize, usize),
    orders: &'a [Vec<Component>],
) -> Cow<'a, [Vec<Component>]> {
    match spec.sweep.orders {
        Some(OrderCount::Auto) => Cow::Owned(crate::orders::random_orders(
            n_layers,
            n_heads,
            spec.sweep.most_orders(),
            spec.sweep.seed,
        )),
        _ => Cow::Borrowed(orders),
    }
}

/// The orders an `auto` extension runs first after the earlier study's circuits `sets`: what
/// its rule asks for given them (none when they are already narrow enough).
pub fn first_batch<T: Ord + Clone>(
    spec: &SweepSpec,
    sets: &[std::collections::BTreeSet<T>],
) -> usize {
    let Some(rule) = AutoRule::of(&spec.sweep, spec.sweep.orders_per_shard()) else {
        return 0;
    };
    let counts: Vec<usize> = crate::orders::item_counts(sets).into_values().collect();
    match rule.next(&counts, sets.len()) {
        Next::More(k) => k,
        Next::Stop(_) => 0,
    }
}

/// The earlier study's runs, from its `result.json` text (`file` names it in errors), checked
/// against the extension's `spec`, its `orders` (all of them, the earlier ones first) and the
/// model, dataset and unablated metrics its prepare shard reported (equal bit for bit: a worker
/// of another numeric profile computes other last bits, and so could decide otherwise).
pub fn earlier_runs(
    text: &str,
    file: &str,
    spec: &SweepSpec,
    orders: &[Vec<Component>],
    meta: &JobMeta,
) -> Result<Earlier, String> {
    let refuse = |why: String| Err(format!("[sweep] extends: {file}: {why}"));
    let doc = same_study(text, file, spec, meta, false)?;
    let Some(study) = doc.orders else {
        return refuse("not the result of an order study (it has no `orders`)".into());
    };
    let k = study.runs.len();
    if k >= orders.len() {
        return refuse(too_few(spec, k, orders.len()));
    }
    for (i, (run, order)) in study.runs.iter().zip(orders).enumerate() {
        let names: Vec<String> = order.iter().map(Component::to_string).collect();
        if run.order != names {
            return refuse(format!(
                "its order {i} is not order {i} of seed {}",
                spec.sweep.seed
            ));
        }
        if run.costs.is_empty() {
            return refuse(no_costs(i));
        }
        if let Some(c) = run
            .heads
            .iter()
            .chain(&run.mlps)
            .find(|c| !names.contains(c))
        {
            return refuse(format!(
                "its run {i} keeps {c}, not a component of this model"
            ));
        }
    }
    Ok(Earlier {
        runs: study.runs,
        profiles: doc.timing.profiles,
    })
}

/// What an edge order study's extension keeps of the study it extends.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlierEdges {
    /// Its aggregates: its runs, in study order, and the marginal effects to go on from.
    pub study: EdgeOrderStudy,
    /// The numeric profiles that computed them.
    pub profiles: Vec<String>,
}

/// The earlier edge order study, checked as [`earlier_runs`] checks a node study (but for its
/// orders, which are not recorded: each index's order is drawn from the seed and the graph, so
/// the graph must be this job's, `edges`, and its restricted node circuit score the same bits),
/// against at most `most` orders.
pub fn earlier_edge_runs(
    text: &str,
    file: &str,
    spec: &SweepSpec,
    most: usize,
    edges: &[Edge],
    meta: &JobMeta,
) -> Result<EarlierEdges, String> {
    let refuse = |why: String| Err(format!("[sweep] extends: {file}: {why}"));
    let doc = same_study(text, file, spec, meta, true)?;
    let Some(study) = doc.edge_orders else {
        return refuse("not the result of an edge order study (it has no `edge_orders`)".into());
    };
    let names: Vec<String> = edges.iter().map(Edge::to_string).collect();
    let Some(graph) = doc.edges.as_ref().filter(|e| e.names == names) else {
        return refuse(
            "its edge graph is not this job's (another node circuit, or no graph recorded)".into(),
        );
    };
    let bits = |x: Option<f64>| x.map(f64::to_bits);
    if bits(graph.circuit_score) != bits(meta.circuit_score) {
        return refuse(format!(
            "its node circuit scored {:?}, this run's {:?}: not the same bits",
            graph.circuit_score, meta.circuit_score
        ));
    }
    let k = study.runs.len();
    if k >= most {
        return refuse(too_few(spec, k, most));
    }
    let known: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for (i, r) in study.runs.iter().enumerate() {
        if let Some(e) = r.edges.iter().find(|e| !known.contains(e.as_str())) {
            return refuse(format!("its run {i} keeps {e}, not an edge of this graph"));
        }
        // Runs written before orders were fingerprinted have the graph and seed checks alone.
        if let Some(print) = &r.order
            && *print != seeded_order_fingerprint(edges, spec.sweep.seed, i)
        {
            return refuse(format!(
                "its run {i} was not pruned in order {i} of seed {} over this graph",
                spec.sweep.seed
            ));
        }
    }
    if let Some(e) = study.marginal.keys().find(|e| !known.contains(e.as_str())) {
        return refuse(format!(
            "its marginal effects name {e}, not an edge of this graph"
        ));
    }
    if k > 0 && (study.marginal.is_empty() || study.marginal.values().any(|m| m.m2.is_none())) {
        return refuse(
            "its marginal effects have no `m2` (it was written by an older build); run the study again".into(),
        );
    }
    Ok(EarlierEdges {
        study,
        profiles: doc.timing.profiles,
    })
}

/// The earlier study's document, refused unless it is of the same spec (but for the number of
/// orders), model, dataset and unablated metrics. With `graph_checked` the caller compares the
/// edge graph itself, so how its node circuit was given (`circuit`, or a `circuit_file` that
/// may have moved since) does not matter.
fn same_study(
    text: &str,
    file: &str,
    spec: &SweepSpec,
    meta: &JobMeta,
    graph_checked: bool,
) -> Result<ResultDoc, String> {
    let refuse = |why: String| Err(format!("[sweep] extends: {file}: {why}"));
    let doc =
        ResultDoc::parse(text, Path::new(file)).map_err(|e| format!("[sweep] extends: {e}"))?;
    // The same spec, but for the number of orders (and what it extended itself).
    let mut same = doc.spec.clone();
    same.sweep.orders = spec.sweep.orders;
    same.sweep.ci_width = spec.sweep.ci_width;
    same.sweep.max_orders = spec.sweep.max_orders;
    same.sweep.extends = spec.sweep.extends.clone();
    same.data.file = spec.data.file.clone();
    same.run = spec.run.clone();
    if graph_checked {
        same.sweep.circuit = spec.sweep.circuit.clone();
        same.sweep.circuit_file = spec.sweep.circuit_file.clone();
    }
    for (table, differs) in [
        ("[model]", same.model != spec.model),
        ("[data]", same.data != spec.data),
        ("[ablation]", same.ablation != spec.ablation),
        ("[sweep]", same.sweep != spec.sweep),
    ] {
        if differs {
            return refuse(format!(
                "its {table} differs from this spec's; an extension runs the same study with more orders"
            ));
        }
    }
    if doc.model.info != meta.info {
        return refuse(format!(
            "it was run on another model ({} against {})",
            doc.model.info, meta.info
        ));
    }
    if doc.dataset.get("sha256") != meta.dataset.get("sha256") {
        return refuse(format!(
            "it was run on another dataset (sha256 {} against {})",
            doc.dataset["sha256"], meta.dataset["sha256"]
        ));
    }
    let same_bits = |a: Option<f64>, b: f64| a.is_some_and(|a| a.to_bits() == b.to_bits());
    if !same_bits(doc.full, meta.full) || !same_bits(doc.corrupt, meta.corrupt) {
        return refuse(format!(
            "its full and corrupt metrics ({:?}, {:?}) are not this run's ({}, {}) bit for bit: it was computed by workers of another numeric profile ({}); require one profile ([run] profile) for both",
            doc.full,
            doc.corrupt,
            meta.full,
            meta.corrupt,
            doc.timing.profiles.join(", ")
        ));
    }
    Ok(doc)
}

/// Why an earlier study of `k` orders cannot be extended to `n`.
fn too_few(spec: &SweepSpec, k: usize, n: usize) -> String {
    match spec.sweep.orders {
        Some(OrderCount::Auto) => {
            format!("it already has {k} orders, as many as `max_orders = {n}` allows; raise it")
        }
        _ => format!(
            "it already has {k} orders; ask for more than that (`orders = {n}` asks for {n})"
        ),
    }
}

fn no_costs(i: usize) -> String {
    format!("its run {i} has no `costs` (it was written by an older build); run the study again")
}
