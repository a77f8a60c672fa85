//! Shards planned from results: an `auto` order study's batches, then the consensus, and a
//! restart in between.

use circuit_sweep_common::prune::PruneResult;

use super::*;

/// An `auto` study of the 2-layer, 3-head model: intervals to 0.1, at most `cap` orders.
fn auto_spec(cap: usize) -> String {
    format!(
        "[sweep]\nkind = \"orders\"\norders = \"auto\"\nci_width = 0.1\nmax_orders = {cap}\nthreshold = 80\n"
    )
}

/// Order `i`'s circuit: h0.0 always, h1.1 in every other order (a frequency of 0.5).
fn run(i: usize) -> PruneResult {
    let mut heads = vec!["h0.0".to_string()];
    if i.is_multiple_of(2) {
        heads.push("h1.1".into());
    }
    PruneResult {
        threshold: Some(80.0),
        tau: None,
        heads,
        mlps: vec!["m1".into()],
        score: 80.0 + i as f64 / 1000.0,
        evaluations: 8,
        passes: 1,
        // What an extension needs of each run: a decision to take its cost from.
        decisions: vec![circuit_sweep_common::prune::Decision {
            component: "h0.1".into(),
            score: 85.0,
            removed: true,
            pass: 0,
        }],
        guided: None,
    }
}

/// What a worker returns for `task`.
fn output(task: &ShardTask) -> Vec<WireTensor> {
    match task {
        ShardTask::Prepare => ShardOutput::Prepared(Box::new(meta())).encode(),
        ShardTask::Orders { first, orders } => {
            ShardOutput::Runs((*first..first + orders.len()).map(run).collect()).encode()
        }
        ShardTask::Prune => ShardOutput::Runs(vec![run(0)]).encode(),
        ShardTask::Consensus { .. } => ShardOutput::Score(81.5).encode(),
        t => panic!("an order study has no {t:?}"),
    }
}

/// Runs every queued shard with `w`; returns the tasks run, and the job to aggregate when the
/// last one hands it out.
fn run_queued(s: &mut Scheduler, w: &str) -> (Vec<ShardTask>, Option<Finishing>) {
    let mut tasks = vec![];
    while let Some(l) = s.lease(w, &[]).unwrap() {
        let task: ShardTask = serde_json::from_str(&l.task_json).unwrap();
        let c = s.complete(w, &l.lease_id, output(&task)).unwrap();
        tasks.push(task);
        if let Completion::Finishing(f) = c {
            return (tasks, Some(*f));
        }
    }
    (tasks, None)
}

fn orders_in(tasks: &[ShardTask]) -> usize {
    tasks
        .iter()
        .map(|t| match t {
            ShardTask::Orders { orders, .. } => orders.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn an_auto_study_runs_batches_until_its_intervals_are_narrow_then_scores_its_consensus() {
    let dir = tempfile::tempdir().unwrap();
    let job;
    {
        let (mut s, _) = open(dir.path());
        let w = worker(&mut s, "a");
        job = s.submit("auto", &auto_spec(1000), vec![]).unwrap();
        // The first batch: 64 orders in 4 shards, and the paper schedule's run.
        let (tasks, f) = run_queued(&mut s, &w);
        assert_eq!((tasks.len(), orders_in(&tasks)), (6, 64));
        // At 64 orders a frequency of 0.5 is known to +-0.119: 48 more orders.
        let f = f.expect("the first batch done");
        let Ok(Finished::More(more)) = f.run() else {
            panic!("the intervals are too wide")
        };
        assert_eq!(orders_in(&more.shards), 48);
        let ShardTask::Orders { first, .. } = &more.shards[0] else {
            panic!("{:?}", more.shards[0])
        };
        assert_eq!(*first, 64);
        s.finished(job, Ok(Finished::More(more))).unwrap();
        assert_eq!(job_status(&s, job).state, "running");
        assert_eq!(job_status(&s, job).shards_total, 9);
        // The coordinator stops here.
    }
    let cfg = SchedConfig::new(dir.path().join("results"));
    let (mut s, finishing) =
        Scheduler::open(dir.path(), cfg, Arc::new(ManualClock::default())).unwrap();
    assert!(finishing.is_empty(), "the appended shards are queued again");
    let st = job_status(&s, job);
    assert_eq!((st.shards_total, st.shards_queued), (9, 3));
    let w = worker(&mut s, "b");
    let (tasks, f) = run_queued(&mut s, &w);
    assert_eq!(orders_in(&tasks), 48);
    // 112 orders: +-0.091. The consensus (h0.0, h1.1 and m1, each in at least half) is next.
    let Ok(Finished::More(more)) = f.unwrap().run() else {
        panic!("the consensus is not scored yet")
    };
    let h = |l, h| circuit_sweep_common::Component::Head { layer: l, head: h };
    let consensus = ShardTask::Consensus {
        components: vec![
            h(0, 0),
            h(1, 1),
            circuit_sweep_common::Component::Mlp { layer: 1 },
        ],
    };
    assert_eq!(more.shards, [consensus]);
    s.finished(job, Ok(Finished::More(more))).unwrap();
    let (tasks, f) = run_queued(&mut s, &w);
    assert_eq!(tasks.len(), 1);
    let f = f.unwrap();
    let outcome = f.run();
    let Ok(Finished::Written(out)) = &outcome else {
        panic!("{outcome:?}")
    };
    let out = out.clone();
    s.finished(job, outcome).unwrap();
    assert_eq!(job_status(&s, job).state, "done");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let o = &doc["orders"];
    assert_eq!(o["runs"].as_array().unwrap().len(), 112);
    assert_eq!(
        o["consensus"]["components"],
        serde_json::json!(["h0.0", "h1.1", "m1"])
    );
    assert_eq!(o["consensus"]["score"], 81.5);
    assert_eq!(o["auto"]["converged"], true);
    assert!(o["auto"]["widest"].as_f64().unwrap() <= 0.1);
    // Its runs are the seed's first 112 orders.
    let want = circuit_sweep_common::orders::random_orders(2, 3, 112, 0);
    for (i, r) in o["runs"].as_array().unwrap().iter().enumerate() {
        let names: Vec<String> = want[i].iter().map(|c| c.to_string()).collect();
        assert_eq!(r["order"], serde_json::json!(names), "order {i}");
    }
}

#[test]
fn an_auto_study_stops_at_its_cap_unconverged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = s.submit("auto", &auto_spec(70), vec![]).unwrap();
    let (tasks, f) = run_queued(&mut s, &w);
    assert_eq!(orders_in(&tasks), 64);
    // The cap leaves room for 6 more orders, then the consensus.
    let Ok(Finished::More(more)) = f.unwrap().run() else {
        panic!("below the cap")
    };
    assert_eq!(orders_in(&more.shards), 6);
    s.finished(job, Ok(Finished::More(more))).unwrap();
    let (_, f) = run_queued(&mut s, &w);
    let Ok(Finished::More(more)) = f.unwrap().run() else {
        panic!("the consensus is not scored yet")
    };
    assert!(matches!(more.shards[..], [ShardTask::Consensus { .. }]));
    s.finished(job, Ok(Finished::More(more))).unwrap();
    let (_, f) = run_queued(&mut s, &w);
    let outcome = f.unwrap().run();
    let Ok(Finished::Written(out)) = &outcome else {
        panic!("{outcome:?}")
    };
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let a = &doc["orders"]["auto"];
    assert_eq!(doc["orders"]["runs"].as_array().unwrap().len(), 70);
    assert_eq!(
        (a["converged"].as_bool(), a["max_orders"].as_u64()),
        (Some(false), Some(70))
    );
    assert!(a["widest"].as_f64().unwrap() > 0.1);
}

/// Runs `job` to its end with `w`, follow-ups included; returns its results folder.
fn run_to_end(s: &mut Scheduler, w: &str, job: u64) -> std::path::PathBuf {
    loop {
        let (_, f) = run_queued(s, w);
        match f.expect("the job hands itself out").run() {
            Ok(Finished::More(more)) => s.finished(job, Ok(Finished::More(more))).unwrap(),
            Ok(Finished::Written(out)) => {
                s.finished(job, Ok(Finished::Written(out.clone()))).unwrap();
                return out;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn an_extension_s_partial_results_count_the_earlier_orders_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let study = "[sweep]\nkind = \"orders\"\nthreshold = 80\n";
    let earlier_job = s
        .submit("first", &format!("{study}orders = 8\n"), vec![])
        .unwrap();
    let out = run_to_end(&mut s, &w, earlier_job);
    let earlier = std::fs::read(out.join("result.json")).unwrap();
    let job = s
        .submit(
            "more",
            &format!("{study}orders = 20\nextends = \"earlier.json\"\n"),
            vec![("earlier.json".into(), earlier)],
        )
        .unwrap();
    // Prepared and planned: its own orders are not run yet, the earlier ones count already.
    let l = s.lease(&w, &[]).unwrap().unwrap();
    s.complete(&w, &l.lease_id, output(&ShardTask::Prepare))
        .unwrap();
    let p = s.partial(job).unwrap().read().unwrap();
    assert_eq!((p.earlier, p.runs.len(), p.orders_total), (8, 8, 20));
    let heads: Vec<&[String]> = p.runs.iter().map(|r| &r.heads[..]).collect();
    let want: Vec<Vec<String>> = (0..8).map(|i| run(i).heads).collect();
    assert_eq!(heads, want.iter().map(Vec::as_slice).collect::<Vec<_>>());
    // Its own orders follow them.
    let l = s.lease(&w, &[]).unwrap().unwrap();
    let task: ShardTask = serde_json::from_str(&l.task_json).unwrap();
    let ShardTask::Orders { first, orders } = &task else {
        panic!("{task:?}")
    };
    assert_eq!((*first, orders.len()), (8, 12));
    s.complete(&w, &l.lease_id, output(&task)).unwrap();
    let p = s.partial(job).unwrap().read().unwrap();
    assert_eq!((p.earlier, p.runs.len(), p.orders_total), (8, 20, 20));
    assert_eq!(p.runs[8].heads, run(8).heads);
    // A study that extends none counts its own alone.
    let p = s.partial(earlier_job).unwrap().read().unwrap();
    assert_eq!((p.earlier, p.runs.len(), p.orders_total), (0, 8, 8));
}
