//! The dashboard's JSON: jobs and workers, and a job's results so far (the head heatmap with
//! the cells not yet computed left empty, the order study's inclusion frequencies).

use std::collections::{BTreeMap, BTreeSet};

use circuit_sweep_common::Component;
use circuit_sweep_common::orders::{component_stats, wilson};
use circuit_sweep_common::spec::SweepKind;
use circuit_sweep_proto::v1::StatusReply;
use serde_json::{Value, json};

use crate::scheduler::Partial;

/// Circuits the live view compares pairwise at most (the first ones done): the pairs grow as
/// the square of the orders, and a poll must stay cheap; the results folder has them all.
pub const LIVE_JACCARD_SETS: usize = 2000;

/// `/api/status`: every job (newest first), the workers the reply holds and how many more
/// there are.
pub fn status_view(st: &StatusReply) -> Value {
    let jobs: Vec<Value> = st
        .jobs
        .iter()
        .rev()
        .map(|j| {
            json!({
                "id": j.job_id, "name": j.name, "kind": j.kind, "state": j.state,
                "error": j.error,
                "shards": {"total": j.shards_total, "done": j.shards_done,
                    "leased": j.shards_leased, "queued": j.shards_queued,
                    "requeued": j.requeued},
                "elapsed_s": j.elapsed_s,
                "eta_s": (j.eta_s >= 0.0).then_some(j.eta_s),
            })
        })
        .collect();
    let workers: Vec<Value> = st
        .workers
        .iter()
        .map(|w| {
            json!({
                "id": w.worker_id, "name": w.name, "device": w.device, "threads": w.threads,
                "leases": w.leases.len(), "shards_done": w.shards_done,
                "last_seen_ms": w.last_seen_ms, "models": w.models, "profile": w.profile,
            })
        })
        .collect();
    json!({"version": env!("CARGO_PKG_VERSION"), "jobs": jobs, "workers": workers,
        "workers_omitted": st.workers_omitted})
}

/// `/api/jobs/{id}`: the job's results so far.
///
/// `heads` is `[layer][head]` and `mlps` `[layer]`: a score in `unit` (% of the full model, or
/// KL in nats), or null while the layer's shard is not done. `circuit` is the pruning run's
/// circuit (by the spec's rule: `rule`) once it is done. `orders` has the inclusion frequency of
/// every component over the orders done so far (an extension's earlier ones first: `earlier`),
/// and the mean Jaccard similarity of their circuits (and of their heads).
pub fn live_view(p: &Partial) -> Value {
    let mut heads: Vec<Vec<Option<f64>>> = vec![vec![None; p.n_heads]; p.n_layers];
    let mut mlps: Vec<Option<f64>> = vec![None; p.n_layers];
    for s in &p.nodes {
        for (i, &l) in s.layers.iter().enumerate() {
            if l < p.n_layers {
                heads[l] = s.heads[i]
                    .iter()
                    .map(|v| v.is_finite().then_some(*v))
                    .collect();
                mlps[l] = s.mlps.get(i).copied().filter(|v| v.is_finite());
            }
        }
    }
    let mut v = json!({
        "kind": format!("{:?}", p.kind).to_lowercase(),
        "rule": p.rule.describe(),
        "unit": p.unit.name(),
        "shards_done": p.shards_done,
        "n_layers": p.n_layers,
        "n_heads": p.n_heads,
    });
    if matches!(p.kind, SweepKind::Nodes | SweepKind::Prune) {
        v["heads"] = json!(heads);
        v["mlps"] = json!(mlps);
    }
    if p.kind == SweepKind::Prune
        && let Some(r) = p.runs.iter().find(|r| r.rule() == p.rule).or(p.runs.last())
    {
        v["circuit"] = json!(r.heads.iter().chain(&r.mlps).collect::<Vec<_>>());
        v["circuit_score"] = json!(r.score);
    }
    if p.kind == SweepKind::Orders {
        let sets: Vec<BTreeSet<Component>> = p
            .runs
            .iter()
            .map(|r| {
                r.heads
                    .iter()
                    .chain(&r.mlps)
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .collect();
        let compared = &sets[..sets.len().min(LIVE_JACCARD_SETS)];
        let stats = component_stats(compared);
        let mut counts: BTreeMap<Component, usize> = BTreeMap::new();
        for c in sets.iter().flatten() {
            *counts.entry(*c).or_default() += 1;
        }
        let k = sets.len();
        let frequency: BTreeMap<String, f64> = counts
            .iter()
            .map(|(c, n)| (c.to_string(), *n as f64 / k as f64))
            .collect();
        // 95 % Wilson intervals: they narrow as orders come in.
        let frequency_ci: BTreeMap<String, [f64; 2]> = counts
            .iter()
            .map(|(c, n)| (c.to_string(), wilson(*n, k)))
            .collect();
        let core: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n == k)
            .map(|(c, _)| c.to_string())
            .collect();
        v["orders"] = json!({
            "done": p.runs.len(),
            "total": p.orders_total,
            "earlier": p.earlier,
            "ci_width": p.ci_width,
            "frequency": frequency,
            "frequency_ci": frequency_ci,
            "jaccard_mean": (!sets.is_empty()).then_some(stats.jaccard_mean),
            "jaccard_heads_mean": stats.jaccard_heads_mean.filter(|_| !sets.is_empty()),
            "jaccard_over": compared.len(),
            "core": core,
            "scores": p.runs.iter().map(|r| r.score).collect::<Vec<_>>(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use circuit_sweep_common::prune::PruneResult;
    use circuit_sweep_common::shard::NodeShard;
    use circuit_sweep_proto::v1::JobStatus;

    use super::*;

    fn partial(kind: SweepKind) -> Partial {
        Partial {
            kind,
            rule: circuit_sweep_common::greedy::Rule::Threshold(80.0),
            unit: circuit_sweep_common::metric::Unit::Percent,
            shards_done: 2,
            n_layers: 3,
            n_heads: 2,
            nodes: vec![],
            runs: vec![],
            orders_total: 0,
            earlier: 0,
            ci_width: None,
        }
    }

    fn run(names: &[&str]) -> PruneResult {
        let (h, m): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| n.starts_with('h'));
        PruneResult {
            threshold: Some(80.0),
            tau: None,
            heads: h.iter().map(|s| s.to_string()).collect(),
            mlps: m.iter().map(|s| s.to_string()).collect(),
            score: 81.0,
            evaluations: 9,
            passes: 2,
            decisions: vec![],
            guided: None,
        }
    }

    #[test]
    fn layers_without_a_finished_shard_stay_empty() {
        let mut p = partial(SweepKind::Nodes);
        p.nodes.push(NodeShard {
            layers: vec![1],
            heads: vec![vec![97.5, f64::NAN]],
            mlps: vec![12.0],
        });
        let v = live_view(&p);
        assert_eq!(
            v["heads"],
            json!([[null, null], [97.5, null], [null, null]])
        );
        assert_eq!(v["mlps"], json!([null, 12.0, null]));
        assert!(v.get("orders").is_none() && v.get("circuit").is_none());
    }

    #[test]
    fn an_order_study_counts_only_the_orders_done() {
        let mut p = partial(SweepKind::Orders);
        p.orders_total = 8;
        let v = live_view(&p);
        assert_eq!(v["orders"]["done"], 0);
        assert_eq!(v["orders"]["jaccard_mean"], Value::Null);
        assert_eq!(v["orders"]["jaccard_heads_mean"], Value::Null);
        p.runs = vec![run(&["h0.1", "m2"]), run(&["h0.1"])];
        let v = live_view(&p);
        assert_eq!(v["orders"]["done"], 2);
        assert_eq!(v["orders"]["total"], 8);
        assert_eq!(v["orders"]["earlier"], 0);
        assert_eq!(v["orders"]["frequency"]["h0.1"], 1.0);
        assert_eq!(v["orders"]["frequency"]["m2"], 0.5);
        assert_eq!(v["orders"]["frequency_ci"]["m2"], json!(wilson(1, 2)));
        assert_eq!(v["orders"]["core"], json!(["h0.1"]));
        assert_eq!(v["orders"]["jaccard_mean"], 0.5);
        // The MLP kept by one order only does not lower the heads' agreement.
        assert_eq!(v["orders"]["jaccard_heads_mean"], 1.0);
        assert!(v.get("heads").is_none());
    }

    #[test]
    fn a_large_study_compares_its_first_circuits_and_counts_them_all() {
        let mut p = partial(SweepKind::Orders);
        p.orders_total = LIVE_JACCARD_SETS + 500;
        p.runs = vec![run(&["h0.1"]); LIVE_JACCARD_SETS];
        p.runs.extend(vec![run(&["m2"]); 500]);
        let v = live_view(&p);
        assert_eq!(v["orders"]["jaccard_over"], LIVE_JACCARD_SETS);
        assert_eq!(v["orders"]["jaccard_mean"], 1.0, "the first ones agree");
        assert_eq!(v["orders"]["frequency"]["m2"], 0.2);
        assert_eq!(v["orders"]["core"], json!([]));
    }

    #[test]
    fn a_pruning_job_shows_its_circuit_once_done() {
        let mut p = partial(SweepKind::Prune);
        assert!(live_view(&p).get("circuit").is_none());
        p.runs = vec![run(&["h2.0", "m1"])];
        let v = live_view(&p);
        assert_eq!(v["circuit"], json!(["h2.0", "m1"]));
        assert_eq!(v["heads"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn jobs_are_listed_newest_first_with_unknown_eta_as_null() {
        let j = |id, eta| JobStatus {
            job_id: id,
            eta_s: eta,
            ..Default::default()
        };
        let v = status_view(&StatusReply {
            jobs: vec![j(1, 3.0), j(2, -1.0)],
            ..Default::default()
        });
        assert_eq!(v["jobs"][0]["id"], 2);
        assert_eq!(v["jobs"][0]["eta_s"], Value::Null);
        assert_eq!(v["jobs"][1]["eta_s"], 3.0);
    }
}
