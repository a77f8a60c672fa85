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
    open_with(dir, SchedConfig::new(dir.join("results")))
}

fn open_with(dir: &Path, cfg: SchedConfig) -> (Scheduler, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let (s, finishing) = Scheduler::open(dir, cfg, clock.clone()).unwrap();
    assert!(finishing.is_empty());
    (s, clock)
}

fn info(name: &str) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    }
}

fn worker(s: &mut Scheduler, name: &str) -> String {
    s.register(info(name)).unwrap()
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
    let l = s.lease(w, &[]).unwrap().expect("a queued shard");
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
    s.status(Some(job)).unwrap().jobs.remove(0)
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
    assert!(
        s.lease(&w, &[]).unwrap().is_none(),
        "nothing of a failed job"
    );
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

/// A result of the wrong shape for a node shard.
fn wrong() -> Vec<WireTensor> {
    vec![WireTensor::f64("heads", &[1, 2], &[1.0, 2.0])]
}

#[test]
fn a_worker_whose_results_keep_being_refused_is_dropped_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let (bad, good) = (worker(&mut s, "bad"), worker(&mut s, "good"));
    let job = prepared(&mut s, &good);
    // It holds shard 1 while its results of shard 2 are refused.
    let (held, shard, _) = lease(&mut s, &bad);
    assert_eq!(shard, 1);
    for n in 1..=limits::MAX_WORKER_REFUSALS {
        let (l, shard, _) = lease(&mut s, &bad);
        assert_eq!(shard, 2);
        let e = s.complete(&bad, &l, wrong()).unwrap_err();
        assert!(matches!(e, SchedError::Malformed { shard: 2, .. }), "{e}");
        let rec = shard_rec(&s, job, 2);
        assert_eq!((rec.refused, rec.failures, rec.done), (n, 0, false));
    }
    // Dropped: unknown from now on, its shard back in the queue, its lease void.
    assert!(matches!(
        s.lease(&bad, &[]),
        Err(SchedError::UnknownWorker(_))
    ));
    assert!(matches!(
        s.complete(&bad, &held, node_output(0)),
        Err(SchedError::NotYourLease(_))
    ));
    let st = job_status(&s, job);
    assert_eq!((st.state.as_str(), st.shards_queued), ("running", 2));
    // A stream refused before it was decoded counts too, for another bad worker.
    let worse = worker(&mut s, "worse");
    for _ in 0..limits::MAX_WORKER_REFUSALS {
        let (l, _, _) = lease(&mut s, &worse);
        s.refuse(&worse, &l, "malformed score stream").unwrap();
    }
    assert!(matches!(
        s.heartbeat(&worse, &[], vec![], &[]),
        Err(SchedError::UnknownWorker(_))
    ));
    assert_eq!(job_status(&s, job).state, "running");
    for layer in 0..2 {
        let (l, _, _) = lease(&mut s, &good);
        s.complete(&good, &l, node_output(layer)).unwrap();
    }
    assert_eq!(job_status(&s, job).shards_done, 3);
}

#[test]
fn a_shard_refused_from_two_workers_fails_its_job_after_max_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let first = worker(&mut s, "a");
    let job = prepared(&mut s, &first);
    // Each worker is dropped after its third refusal and registers again, as agents do.
    let mut w = first;
    for n in 1..=MAX_REFUSALS {
        if s.heartbeat(&w, &[], vec![], &[]).is_err() {
            w = worker(&mut s, "a");
        }
        let (l, shard, _) = lease(&mut s, &w);
        assert_eq!(shard, 1);
        s.complete(&w, &l, wrong()).unwrap_err();
        let st = job_status(&s, job);
        let want = if n < MAX_REFUSALS {
            "running"
        } else {
            "failed"
        };
        assert_eq!(st.state, want, "after {n} refusals");
    }
    let st = job_status(&s, job);
    assert!(
        st.error.contains("5 malformed results from 2 workers"),
        "{}",
        st.error
    );
}

#[test]
fn a_client_that_registers_again_and_again_from_one_machine_cannot_fail_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let good = worker(&mut s, "good");
    let job = prepared(&mut s, &good);
    let ip: std::net::IpAddr = [10, 0, 0, 9].into();
    for _ in 1..MAX_REFUSALS_ONE_MACHINE {
        let w = s.register_from(info("hostile"), ip).unwrap();
        let (l, shard, _) = lease(&mut s, &w);
        assert_eq!(shard, 1);
        s.complete(&w, &l, wrong()).unwrap_err();
    }
    assert_eq!(job_status(&s, job).state, "running");
    assert_eq!(shard_rec(&s, job, 1).refused, MAX_REFUSALS_ONE_MACHINE - 1);
    // A second machine's refusal is a second opinion: the job fails (as would one more from
    // the same machine: a broken build on a one-node cluster must not loop forever).
    let other = s
        .register_from(info("other"), [10, 0, 0, 7].into())
        .unwrap();
    let (l, _, _) = lease(&mut s, &other);
    s.complete(&other, &l, wrong()).unwrap_err();
    let st = job_status(&s, job);
    assert_eq!(st.state, "failed");
    assert!(st.error.contains("from 2 workers"), "{}", st.error);
}

#[test]
fn worker_ids_are_unguessable_and_status_shows_only_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    prepared(&mut s, &a);
    let (l, _, _) = lease(&mut s, &a);
    for id in [&a, &b, &l] {
        let (_, secret) = id.split_once('-').expect("label-secret");
        assert_eq!(secret.len(), 32, "{id}: 128 random bits in hex");
    }
    assert_ne!(a.split_once('-').unwrap().1, b.split_once('-').unwrap().1);
    // Another worker guesses every id the old scheme could give the first worker: none works.
    for nonce in 0..=0xffffu32 {
        s.worker_lost(&format!("w1-{nonce:04x}"), LostReason::Drained)
            .unwrap();
    }
    s.worker_lost("w1", LostReason::Drained).unwrap();
    s.heartbeat(&a, &[], vec![], &[]).unwrap();
    // Status (which every client sees) shows labels, never an id a worker calls with.
    let st = s.status(None).unwrap();
    let shown: Vec<(&str, &[String])> = st
        .workers
        .iter()
        .map(|w| (w.worker_id.as_str(), w.leases.as_slice()))
        .collect();
    assert_eq!(
        shown,
        [("w1", &[label(&l).to_string()][..]), ("w2", &[][..])]
    );
    assert_eq!(label(&l), "l2");
}

#[test]
fn registrations_past_the_caps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SchedConfig {
        max_workers: 2,
        ..SchedConfig::new(dir.path().join("results"))
    };
    let (mut s, _) = open_with(dir.path(), cfg);
    let long = "x".repeat(limits::MAX_WORKER_TEXT_BYTES + 1);
    for bad in [
        WorkerInfo {
            name: long.clone(),
            ..info("a")
        },
        WorkerInfo {
            device: long.clone(),
            ..info("a")
        },
        WorkerInfo {
            models: vec![long.clone()],
            ..info("a")
        },
        WorkerInfo {
            models: vec!["m".into(); limits::MAX_MODELS + 1],
            ..info("a")
        },
    ] {
        let e = s.register(bad).unwrap_err();
        assert!(matches!(e, SchedError::WorkerInfo(_)), "{e}");
    }
    let a = worker(&mut s, "a");
    worker(&mut s, "b");
    let e = s.register(info("c")).unwrap_err();
    assert!(matches!(e, SchedError::TooManyWorkers(2)), "{e}");
    // A heartbeat cannot grow what the worker said either.
    let e = s.heartbeat(&a, &[], vec![long], &[]).unwrap_err();
    assert!(matches!(e, SchedError::WorkerInfo(_)), "{e}");
    // A worker that leaves makes room.
    s.worker_lost(&a, LostReason::Drained).unwrap();
    worker(&mut s, "c");
}

#[test]
fn status_lists_the_workers_that_fit_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SchedConfig {
        status_worker_bytes: 1000,
        ..SchedConfig::new(dir.path().join("results"))
    };
    let (mut s, _) = open_with(dir.path(), cfg);
    let name = "n".repeat(limits::MAX_WORKER_TEXT_BYTES);
    for _ in 0..10 {
        worker(&mut s, &name);
    }
    let st = s.status(None).unwrap();
    let bytes: usize = st.workers.iter().map(prost::Message::encoded_len).sum();
    assert!(bytes <= 1000, "{bytes}");
    assert_eq!(st.workers.len(), 3);
    assert_eq!(st.workers_omitted, 7);
}

#[test]
fn a_result_stream_is_limited_by_what_its_shard_can_produce() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SchedConfig {
        max_result_bytes: 1 << 20,
        ..SchedConfig::new(dir.path().join("results"))
    };
    let (mut s, _) = open_with(dir.path(), cfg);
    let w = worker(&mut s, "a");
    s.submit("nodes", NODES, vec![]).unwrap();
    // Prepare: the model's facts and prompts, within the configured ceiling.
    let (l, _, _) = lease(&mut s, &w);
    assert_eq!(s.result_limit(&w, &l).unwrap(), 1 << 20);
    let out = ShardOutput::Prepared(Box::new(meta())).encode();
    s.complete(&w, &l, out).unwrap();
    // A node shard of one layer of 3 heads: 4 scores, and the margin.
    let (l, _, _) = lease(&mut s, &w);
    assert_eq!(
        s.result_limit(&w, &l).unwrap(),
        4 * 8 + limits::RESULT_MARGIN
    );
    let other = worker(&mut s, "b");
    assert!(matches!(
        s.result_limit(&other, &l),
        Err(SchedError::NotYourLease(_))
    ));
}

#[test]
fn a_worker_s_reasons_are_stored_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    s.fail(&w, &l, false, &"é".repeat(1 << 20)).unwrap();
    let st = job_status(&s, job);
    assert_eq!(st.state, "failed");
    assert!(
        st.error.len() < limits::MAX_REASON_BYTES + 100,
        "{}",
        st.error.len()
    );
    assert!(
        st.error.ends_with("... (2097152 bytes)"),
        "{}",
        st.error.len()
    );
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
        s.heartbeat(&w, std::slice::from_ref(&l), vec![], &[])
            .unwrap(),
        vec![l.clone()]
    );
    assert!(matches!(
        s.complete(&w, &l, node_output(0)).unwrap(),
        Completion::Duplicate
    ));
    assert!(s.lease(&w, &[]).unwrap().is_none());
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
    s.heartbeat(&b, &[], vec![], &[]).unwrap();
    s.tick().unwrap();
    assert_eq!(job_status(&s, job).shards_leased, 1, "not lost yet");
    clock.advance(Duration::from_secs(6));
    s.tick().unwrap();
    let st = job_status(&s, job);
    assert_eq!((st.shards_leased, st.shards_queued, st.requeued), (0, 2, 1));
    let rec = shard_rec(&s, job, shard);
    assert_eq!((rec.attempts, rec.failures), (1, 0));
    assert!(matches!(
        s.heartbeat(&a, &[], vec![], &[]),
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
    assert!(s.status(None).unwrap().workers.is_empty());
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
    let Finished::Written(out) = f.run().unwrap() else {
        panic!("a node sweep needs no more shards")
    };
    s.finished(job, Ok(Finished::Written(out.clone()))).unwrap();
    assert_eq!(job_status(&s, job).state, "done");
    assert_eq!(s.results_dir(job).unwrap(), out);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(doc["nodes"]["mlps"], serde_json::json!([60.0, 60.0]));
    // The partial results read outside the lock agree.
    let p = s.partial(job).unwrap().read().unwrap();
    assert_eq!((p.shards_done, p.nodes.len()), (3, 2));
}

/// A node sweep whose shards `w` has all computed, handed out to aggregate.
fn aggregating(s: &mut Scheduler, w: &str) -> Finishing {
    prepared(s, w);
    let (l0, _, _) = lease(s, w);
    let (l1, _, _) = lease(s, w);
    s.complete(w, &l0, node_output(0)).unwrap();
    let Completion::Finishing(f) = s.complete(w, &l1, node_output(1)).unwrap() else {
        panic!("the last shard finishes the job")
    };
    *f
}

#[test]
fn a_job_cancelled_while_it_aggregates_stays_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let f = aggregating(&mut s, &w);
    let job = f.job;
    s.cancel(job).unwrap();
    // Its folder is being written: deleting it now would leave that folder behind.
    let e = s.delete(job).unwrap_err();
    assert!(matches!(e, SchedError::NotReady(_)), "{e}");
    let out = f.run();
    s.finished(job, out).unwrap();
    assert_eq!(job_status(&s, job).state, "cancelled");
    s.delete(job).unwrap();
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
        let cfg = SchedConfig::new(dir.path().join("results"));
        let (s, _) = Scheduler::open(dir.path(), cfg, Arc::new(ManualClock::default())).unwrap();
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
    let cfg = SchedConfig::new(dir.path().join("results"));
    let (mut s, finishing) =
        Scheduler::open(dir.path(), cfg, Arc::new(ManualClock::default())).unwrap();
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

mod folders;
mod followups;
mod leases;
/// A node sweep run to the end by `w`, its results folder written: `(job, folder)`.
fn done(s: &mut Scheduler, w: &str) -> (u64, PathBuf) {
    let f = aggregating(s, w);
    let job = f.job;
    let out = f.run();
    s.finished(job, out).unwrap();
    assert_eq!(job_status(s, job).state, "done");
    (job, s.results_dir(job).unwrap())
}

#[test]
fn only_a_finished_job_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let running = prepared(&mut s, &w);
    let queued = s.submit("nodes", NODES, vec![]).unwrap();
    for (job, state) in [(running, "running"), (queued, "queued")] {
        let e = s.delete(job).unwrap_err();
        assert!(matches!(e, SchedError::NotFinal { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "job {job} is {state}: cancel it first (`circuit-sweep cancel {job}`), then delete it"
            )
        );
    }
    assert!(matches!(s.delete(99), Err(SchedError::UnknownJob(99))));
    s.cancel(running).unwrap();
    s.delete(running).unwrap();
    assert!(matches!(
        s.status(Some(running)),
        Err(SchedError::UnknownJob(_))
    ));
    assert!(matches!(s.delete(running), Err(SchedError::UnknownJob(_))));
    // The queued job goes on, and is leased next.
    assert_eq!(s.lease(&w, &[]).unwrap().unwrap().job_id, queued);
}

#[test]
fn deleting_a_done_job_frees_its_stored_rows_and_names_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let (job, folder) = done(&mut s, &w);
    let (kept, _) = done(&mut s, &w);
    assert!(folder.join("result.json").is_file());
    assert!(s.store.result(job, 2).unwrap().is_some());
    assert_eq!(s.delete(job).unwrap(), folder);
    for shard in 0..3 {
        assert_eq!(s.store.result(job, shard).unwrap(), None);
    }
    let stored: Vec<u64> = s.store.load().unwrap().iter().map(|(j, _)| j.id).collect();
    assert_eq!(stored, [kept]);
    assert!(s.store.result(kept, 2).unwrap().is_some());
    let st = s.status(None).unwrap();
    assert_eq!(st.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(), [kept]);
    assert!(matches!(s.results_dir(job), Err(SchedError::UnknownJob(_))));
    // A restart does not bring it back.
    drop(s);
    let (s, _) = open(dir.path());
    assert!(matches!(
        s.status(Some(job)),
        Err(SchedError::UnknownJob(_))
    ));
    assert_eq!(job_status(&s, kept).state, "done");
}

#[test]
fn a_deleted_job_s_id_is_never_given_again_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = open(dir.path());
        assert_eq!(s.submit("nodes", NODES, vec![]).unwrap(), 1);
        assert_eq!(s.submit("nodes", NODES, vec![]).unwrap(), 2);
        s.cancel(2).unwrap();
        s.delete(2).unwrap();
        assert_eq!(s.submit("nodes", NODES, vec![]).unwrap(), 3);
        s.cancel(3).unwrap();
        s.delete(3).unwrap();
    }
    let (mut s, _) = open(dir.path());
    assert_eq!(s.submit("nodes", NODES, vec![]).unwrap(), 4);
}

#[test]
fn the_policy_deletes_only_jobs_that_ended_longer_ago_than_kept() {
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    let cfg = SchedConfig {
        keep_finished: Some(day),
        ..SchedConfig::new(dir.path().join("results"))
    };
    let (mut s, clock) = open_with(dir.path(), cfg);
    let w = worker(&mut s, "a");
    let (old, folder) = done(&mut s, &w);
    clock.advance(day / 2);
    let cancelled = s.submit("nodes", NODES, vec![]).unwrap();
    s.cancel(cancelled).unwrap();
    let queued = s.submit("nodes", NODES, vec![]).unwrap();
    assert!(s.tick().unwrap().is_empty(), "nothing is a day old yet");
    clock.advance(day / 2 + Duration::from_secs(1));
    assert_eq!(s.tick().unwrap(), [folder]);
    let ids = |s: &Scheduler| -> Vec<u64> {
        let st = s.status(None).unwrap();
        st.jobs.iter().map(|j| j.job_id).collect()
    };
    assert_eq!(ids(&s), [cancelled, queued]);
    assert!(s.store.result(old, 0).unwrap().is_none());
    clock.advance(day / 2);
    let gone = s.tick().unwrap();
    assert_eq!(
        gone,
        [dir.path().join("results").join(cancelled.to_string())]
    );
    // A job that has not ended stays, however old.
    clock.advance(day * 30);
    assert!(s.tick().unwrap().is_empty());
    assert_eq!(ids(&s), [queued]);
}

#[test]
fn a_worker_that_holds_a_job_s_inputs_is_leased_its_shards_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let spec = "[sweep]\nkind = \"nodes\"\n\n[data]\nfile = \"p.jsonl\"\n";
    let files = vec![("p.jsonl".to_string(), b"{}\n".to_vec())];
    s.submit("nodes", spec, files.clone()).unwrap();
    let first = s.lease(&w, &[]).unwrap().unwrap();
    assert_eq!(
        (first.spec_toml.as_str(), first.attachments.len()),
        (spec, 1)
    );
    let files = files.iter().map(|(n, d)| (n.as_str(), d.as_slice()));
    let hash = circuit_sweep_proto::job_inputs::inputs_hash(spec, files);
    assert_eq!(first.inputs_hash, hash, "what the worker computes");
    let out = ShardOutput::Prepared(Box::new(meta())).encode();
    s.complete(&w, &first.lease_id, out).unwrap();
    // Held: only the task travels. Another hash (or none) gets everything again.
    let l = s.lease(&w, std::slice::from_ref(&hash)).unwrap().unwrap();
    assert!(l.spec_toml.is_empty() && l.attachments.is_empty());
    assert_eq!(l.inputs_hash, hash);
    let l = s.lease(&w, &["0".repeat(64)]).unwrap().unwrap();
    assert_eq!((l.spec_toml.as_str(), l.attachments.len()), (spec, 1));
    // After a restart too.
    drop(s);
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "b");
    let l = s.lease(&w, std::slice::from_ref(&hash)).unwrap().unwrap();
    assert!(l.spec_toml.is_empty() && l.inputs_hash == hash);
}

#[test]
fn a_job_that_requires_a_profile_is_leased_only_to_such_workers_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let with = |name: &str, profile: &str| WorkerInfo {
        profile: profile.into(),
        ..info(name)
    };
    let v3 = s.register(with("v3", "cpu-x86-64-v3")).unwrap();
    let gpu = s.register(with("gpu", "cuda")).unwrap();
    let spec = "[sweep]\nkind = \"nodes\"\n\n[run]\nprofile = \"cpu-x86-64-v3\"\n";
    let job = s.submit("nodes", spec, vec![]).unwrap();
    assert!(
        s.lease(&gpu, &[]).unwrap().is_none(),
        "not for another profile"
    );
    let l = s.lease(&v3, &[]).unwrap().unwrap();
    let out = ShardOutput::Prepared(Box::new(meta())).encode();
    s.complete(&v3, &l.lease_id, out).unwrap();
    // A job without a requirement goes to anyone, and says who computed it.
    let open_job = s.submit("nodes", NODES, vec![]).unwrap();
    let l = s.lease(&gpu, &[]).unwrap().unwrap();
    assert_eq!(l.job_id, open_job);
    for layer in 0..2 {
        let (l, _, _) = lease(&mut s, &v3);
        let Completion::Finishing(f) = s.complete(&v3, &l, node_output(layer)).unwrap() else {
            assert_eq!(layer, 0);
            continue;
        };
        let Finished::Written(out) = f.run().unwrap() else {
            panic!("a node sweep needs no more shards")
        };
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        assert_eq!(
            doc["timing"]["profiles"],
            serde_json::json!(["cpu-x86-64-v3"])
        );
        assert_eq!(doc["spec"]["run"]["profile"], "cpu-x86-64-v3");
    }
    assert_eq!(
        shard_rec(&s, job, 1).profile.as_deref(),
        Some("cpu-x86-64-v3")
    );
    let st = s.status(None).unwrap();
    assert!(st.workers.iter().any(|w| w.profile == "cuda"));
}
