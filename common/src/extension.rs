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
use crate::edge_prune::EdgeRun;
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
    let doc = same_study(text, file, spec, meta)?;
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
    }
    Ok(Earlier {
        runs: study.runs,
        profiles: doc.timing.profiles,
    })
}

/// What an edge order study's extension keeps of the study it extends.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlierEdges {
    /// Its runs, in study order.
    pub runs: Vec<EdgeRun>,
    /// The numeric profiles that computed them.
    pub profiles: Vec<String>,
}

/// The earlier edge order study's runs, checked as [`earlier_runs`] checks a node study's,
/// against at most `most` orders and the job's edge graph `edges` (the graph its orders
/// permute: the same graph and seed give the same orders).
pub fn earlier_edge_runs(
    text: &str,
    file: &str,
    spec: &SweepSpec,
    most: usize,
    edges: &[Edge],
    meta: &JobMeta,
) -> Result<EarlierEdges, String> {
    let refuse = |why: String| Err(format!("[sweep] extends: {file}: {why}"));
    let doc = same_study(text, file, spec, meta)?;
    let Some(study) = doc.edge_orders else {
        return refuse("not the result of an edge order study (it has no `edge_orders`)".into());
    };
    let names: Vec<String> = edges.iter().map(Edge::to_string).collect();
    if doc.edges.as_ref().map(|e| &e.names) != Some(&names) {
        return refuse(
            "its edge graph is not this job's (another node circuit, or no graph recorded)".into(),
        );
    }
    let k = study.runs.len();
    if k >= most {
        return refuse(too_few(spec, k, most));
    }
    if let Some(i) = study.runs.iter().position(|r| r.costs.is_empty()) {
        return refuse(no_costs(i));
    }
    Ok(EarlierEdges {
        runs: study.runs,
        profiles: doc.timing.profiles,
    })
}

/// The earlier study's document, refused unless it is of the same spec (but for the number of
/// orders), model, dataset and unablated metrics.
fn same_study(
    text: &str,
    file: &str,
    spec: &SweepSpec,
    meta: &JobMeta,
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
