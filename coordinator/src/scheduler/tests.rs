//! The scheduler's rules, driven by hand: no gRPC, no processes, time from a manual clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use circuit_sweep_common::shard::{JobMeta, NodeShard, ShardTask};
use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::tensor::WireTensor;
use circuit_sweep_proto::v1::{JobStatus, WorkerInfo};

use super::*;
use crate::store::{JobState, ShardRecord};

const NODES: &str = "[sweep]\nkind = \"nodes\"\n";

fn open(dir: &Path) -> (Scheduler, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let cfg = SchedConfig {
        heartbeat: Duration::from_secs(1),
        lost_after: Duration::from_secs(10),
        results_dir: dir.join("results"),
    };
    let (s, finishing) = Scheduler::open(dir, cfg, clock.clone()).unwrap();
    assert!(finishing.is_empty());
    (s, clock)
}

fn worker(s: &mut Scheduler, name: &str) -> String {
    s.register(WorkerInfo {
        name: name.into(),
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    })
}

/// A 2-layer, 3-head model: a node sweep of it has two node shards after `prepare`.
fn meta() -> JobMeta {
    JobMeta::synthetic("tiny", 2, 3)
}

fn node_output(layer: usize) -> Vec<WireTensor> {
    ShardOutput::Nodes(NodeShard {
        layers: vec![layer],
        heads: vec![vec![90.0, 80.0, 70.0]],
        mlps: vec![60.0],
    })
    .encode()
}

/// Leases the next shard to `w`: `(lease, shard, attempt)`.
fn lease(s: &mut Scheduler, w: &str) -> (String, u32, u32) {
    let l = s.lease(w).unwrap().expect("a queued shard");
    (l.lease_id, l.shard, l.attempt)
}

/// A node sweep submitted and prepared by `w`: its two node shards are queued.
fn prepared(s: &mut Scheduler, w: &str) -> u64 {
    let job = s.submit("nodes", NODES, vec![]).unwrap();
    let (l, shard, _) = lease(s, w);
    assert_eq!(shard, 0);
    let out = ShardOutput::Prepared(Box::new(meta())).encode();
    assert!(matches!(
        s.complete(w, &l, out).unwrap(),
        Completion::Stored
    ));
    job
}

fn job_status(s: &Scheduler, job: u64) -> JobStatus {
    s.status(Some(job)).unwrap().0.remove(0)
}

fn shard_rec(s: &Scheduler, job: u64, shard: u32) -> ShardRecord {
    s.jobs[&job].shards[shard as usize].rec.clone()
}

#[test]
fn a_shard_that_keeps_failing_fails_its_job_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    for attempt in 1..=MAX_ATTEMPTS {
        let (l, shard, n) = lease(&mut s, &w);
        assert_eq!((shard, n), (1, attempt));
        s.fail(&w, &l, true, "a transient error").unwrap();
        let st = job_status(&s, job);
        if attempt < MAX_ATTEMPTS {
            assert_eq!(st.state, "running");
            assert_eq!(st.shards_queued, 2);
        } else {
            assert_eq!(st.state, "failed");
            assert!(
                st.error.contains("failed 3 times: a transient error"),
                "{}",
                st.error
            );
        }
    }
    assert!(s.lease(&w).unwrap().is_none(), "nothing of a failed job");
    // A failure that retrying cannot fix fails the job at once.
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    s.fail(&w, &l, false, "bad input").unwrap();
    let st = job_status(&s, job);
    assert_eq!(
        (st.state.as_str(), st.error.as_str()),
        ("failed", "shard 1 (nodes of layer 0): bad input")
    );
}

#[test]
fn malformed_results_are_queued_again_until_max_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let wrong = vec![WireTensor::f64("heads", &[1, 2], &[1.0, 2.0])];
    for n in 1..=MAX_REFUSALS {
        let (l, shard, _) = lease(&mut s, &w);
        assert_eq!(shard, 1);
        let e = s.complete(&w, &l, wrong.clone()).unwrap_err();
        assert!(matches!(e, SchedError::Malformed { shard: 1, .. }), "{e}");
        let rec = shard_rec(&s, job, 1);
        assert_eq!((rec.refused, rec.failures, rec.done), (n, 0, false));
    }
    let st = job_status(&s, job);
    assert_eq!(st.state, "failed");
    assert!(st.error.contains("5 malformed results"), "{}", st.error);
}

#[test]
fn a_late_duplicate_result_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    let job = prepared(&mut s, &a);
    let (la, shard, _) = lease(&mut s, &a);
    s.worker_lost(&a, LostReason::HeartbeatTimeout).unwrap();
    let (lb, again, attempt) = lease(&mut s, &b);
    assert_eq!((again, attempt), (shard, 2));
    assert!(matches!(
        s.complete(&b, &lb, node_output(0)).unwrap(),
        Completion::Stored
    ));
    // The lost worker's result arrives after all: the shard is done, it is dropped.
    assert!(matches!(
        s.complete(&a, &la, node_output(0)).unwrap(),
        Completion::Duplicate
    ));
    assert_eq!(job_status(&s, job).shards_done, 2);
}

#[test]
fn cancelling_revokes_leases_and_drops_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    s.cancel(job).unwrap();
    assert_eq!(
        s.heartbeat(&w, std::slice::from_ref(&l), vec![]).unwrap(),
        vec![l.clone()]
    );
    assert!(matches!(
        s.complete(&w, &l, node_output(0)).unwrap(),
        Completion::Duplicate
    ));
    assert!(s.lease(&w).unwrap().is_none());
    assert_eq!(job_status(&s, job).state, "cancelled");
    // A lease of another worker is refused.
    let other = worker(&mut s, "b");
    assert!(matches!(
        s.fail(&other, &l, true, "x"),
        Err(SchedError::NotYourLease(_))
    ));
}

#[test]
fn a_worker_lost_mid_shard_gives_its_shard_back_without_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = open(dir.path());
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    let job = prepared(&mut s, &a);
    let (_, shard, _) = lease(&mut s, &a);
    clock.advance(Duration::from_secs(6));
    s.heartbeat(&b, &[], vec![]).unwrap();
    s.tick().unwrap();
    assert_eq!(job_status(&s, job).shards_leased, 1, "not lost yet");
    clock.advance(Duration::from_secs(6));
    s.tick().unwrap();
    let st = job_status(&s, job);
    assert_eq!((st.shards_leased, st.shards_queued, st.requeued), (0, 2, 1));
    let rec = shard_rec(&s, job, shard);
    assert_eq!((rec.attempts, rec.failures), (1, 0));
    assert!(matches!(
        s.heartbeat(&a, &[], vec![]),
        Err(SchedError::UnknownWorker(_))
    ));
    let (_, again, attempt) = lease(&mut s, &b);
    assert_eq!((again, attempt), (shard, 2));
}

#[test]
fn a_drained_worker_gives_its_shards_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    lease(&mut s, &w);
    lease(&mut s, &w);
    s.worker_lost(&w, LostReason::Drained).unwrap();
    let st = job_status(&s, job);
    assert_eq!((st.shards_queued, st.requeued), (2, 2));
    assert!(s.status(None).unwrap().1.is_empty());
    assert_eq!(LostReason::Drained.to_string(), "drained");
}

#[test]
fn the_last_shard_hands_the_job_out_to_aggregate_and_status_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    assert!(matches!(
        s.complete(&w, &l, node_output(0)).unwrap(),
        Completion::Stored
    ));
    let (l, _, _) = lease(&mut s, &w);
    let Completion::Finishing(f) = s.complete(&w, &l, node_output(1)).unwrap() else {
        panic!("the last shard finishes the job")
    };
    // Aggregating: every shard done, the job still running, its folder not served yet.
    let st = job_status(&s, job);
    assert_eq!((st.state.as_str(), st.shards_done), ("running", 3));
    assert!(matches!(s.results_dir(job), Err(SchedError::NotReady(_))));
    let out = f.run().unwrap();
    s.finished(job, Ok(out.clone())).unwrap();
    assert_eq!(job_status(&s, job).state, "done");
    assert_eq!(s.results_dir(job).unwrap(), out);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(doc["nodes"]["mlps"], serde_json::json!([60.0, 60.0]));
    // The partial results read outside the lock agree.
    let p = s.partial(job).unwrap().read().unwrap();
    assert_eq!((p.shards_done, p.nodes.len()), (3, 2));
}

#[test]
fn a_job_cancelled_while_it_aggregates_stays_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l0, _, _) = lease(&mut s, &w);
    let (l1, _, _) = lease(&mut s, &w);
    s.complete(&w, &l0, node_output(0)).unwrap();
    let Completion::Finishing(f) = s.complete(&w, &l1, node_output(1)).unwrap() else {
        panic!("the last shard finishes the job")
    };
    s.cancel(job).unwrap();
    let out = f.run();
    s.finished(job, out).unwrap();
    assert_eq!(job_status(&s, job).state, "cancelled");
}

#[test]
fn a_restart_plans_a_prepared_job_and_aggregates_a_complete_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = open(dir.path());
        let w = worker(&mut s, "a");
        // Job 1: every shard stored, not aggregated (the coordinator stopped first).
        let job = prepared(&mut s, &w);
        for layer in 0..2 {
            let (l, _, _) = lease(&mut s, &w);
            s.complete(&w, &l, node_output(layer)).unwrap();
        }
        assert_eq!(job_status(&s, job).state, "running");
    }
    {
        // Job 2: its prepare result stored, the plan lost.
        let (s, _) = Scheduler::open(
            dir.path(),
            SchedConfig {
                heartbeat: Duration::from_secs(1),
                lost_after: Duration::from_secs(10),
                results_dir: dir.path().join("results"),
            },
            Arc::new(ManualClock::default()),
        )
        .unwrap();
        let mut rec = s.jobs[&1].rec.clone();
        drop(s);
        let store = crate::store::Store::open(dir.path()).unwrap();
        rec.id = 2;
        rec.state = JobState::Queued;
        rec.shards = vec![ShardTask::Prepare];
        rec.meta = None;
        store.put_job(&rec, Some(&[])).unwrap();
        let done = ShardRecord {
            done: true,
            attempts: 1,
            ..Default::default()
        };
        let out = ShardOutput::Prepared(Box::new(meta())).encode();
        store.put_result(2, 0, &done, &out).unwrap();
    }
    let clock = Arc::new(ManualClock::default());
    let cfg = SchedConfig {
        heartbeat: Duration::from_secs(1),
        lost_after: Duration::from_secs(10),
        results_dir: dir.path().join("results"),
    };
    let (mut s, finishing) = Scheduler::open(dir.path(), cfg, clock).unwrap();
    assert_eq!(finishing.iter().map(|f| f.job).collect::<Vec<_>>(), [1]);
    for f in finishing {
        let job = f.job;
        let out = f.run();
        s.finished(job, out).unwrap();
    }
    assert_eq!(job_status(&s, 1).state, "done");
    let st = job_status(&s, 2);
    assert_eq!(
        (st.state.as_str(), st.shards_total, st.shards_queued),
        ("running", 3, 2)
    );
}
