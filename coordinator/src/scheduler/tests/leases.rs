//! Leases that end: a shard that keeps losing its worker fails its job, leases expire without
//! progress, a worker holds a bounded number, and a stall of the coordinator's own making
//! costs no one anything.

use super::*;

fn progress(lease: &str, done: u64) -> Vec<LeaseProgress> {
    vec![LeaseProgress {
        lease_id: lease.into(),
        done,
    }]
}

fn with_leases(dir: &Path, max_leases: usize, timeout_s: u64) -> (Scheduler, Arc<ManualClock>) {
    let cfg = SchedConfig {
        max_leases,
        lease_timeout: Duration::from_secs(timeout_s),
        ..SchedConfig::new(dir.join("results"))
    };
    open_with(dir, cfg)
}

/// `steps` of 5 s in which `workers` heartbeat without progress.
fn outwait(s: &mut Scheduler, clock: &ManualClock, workers: &[&str], steps: usize) {
    for _ in 0..steps {
        clock.advance(Duration::from_secs(5));
        for w in workers {
            s.heartbeat(w, &[], vec![], &[]).unwrap();
        }
        s.tick().unwrap();
    }
}

#[test]
fn a_shard_that_keeps_losing_its_worker_fails_its_job_but_drains_cost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    // Drained workers say nothing about the shard.
    for n in 0..MAX_LOSSES + 2 {
        let d = worker(&mut s, &format!("drained{n}"));
        lease(&mut s, &d);
        s.worker_lost(&d, LostReason::Drained).unwrap();
    }
    assert_eq!(job_status(&s, job).state, "running");
    for n in 1..=MAX_LOSSES {
        let v = worker(&mut s, &format!("victim{n}"));
        let (_, shard, _) = lease(&mut s, &v);
        assert_eq!(shard, 1);
        s.worker_lost(&v, LostReason::StreamBroke("connection reset".into()))
            .unwrap();
        assert_eq!(shard_rec(&s, job, 1).losses, n);
        let st = job_status(&s, job);
        if n < MAX_LOSSES {
            assert_eq!(st.state, "running");
        } else {
            assert_eq!(st.state, "failed");
            assert!(
                st.error.contains("shard 1 (nodes of layer 0)"),
                "{}",
                st.error
            );
            assert!(st.error.contains("lost 3 times"), "{}", st.error);
            assert!(st.error.contains("connection reset"), "{}", st.error);
        }
    }
    // The count is stored: a restart does not give the shard fresh lives.
    drop(s);
    let (s, _) = open(dir.path());
    assert_eq!(shard_rec(&s, job, 1).losses, MAX_LOSSES);
}

#[test]
fn a_lease_without_progress_expires_and_progress_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = with_leases(dir.path(), 4, 60);
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    let job = prepared(&mut s, &a);
    let (wedged, _, _) = lease(&mut s, &a);
    let (busy, _, _) = lease(&mut s, &b);
    // Both keep heartbeating; only b's shard advances.
    for step in 1..=13u64 {
        clock.advance(Duration::from_secs(5));
        let held = std::slice::from_ref(&wedged);
        assert!(
            s.heartbeat(&a, held, vec![], &progress(&wedged, 0))
                .unwrap()
                .is_empty()
        );
        let held = std::slice::from_ref(&busy);
        assert!(
            s.heartbeat(&b, held, vec![], &progress(&busy, step))
                .unwrap()
                .is_empty()
        );
        s.tick().unwrap();
    }
    // 65 s without progress: a's lease expired, its shard is queued again and a is told.
    let st = job_status(&s, job);
    assert_eq!((st.shards_leased, st.shards_queued), (1, 1));
    let rec = shard_rec(&s, job, 1);
    assert_eq!((rec.losses, rec.failures), (1, 0));
    let why = rec.last_error.unwrap();
    assert!(why.contains("no progress reported for 60s"), "{why}");
    let held = std::slice::from_ref(&wedged);
    assert_eq!(
        s.heartbeat(&a, held, vec![], &[]).unwrap(),
        vec![wedged.clone()]
    );
    // a is still a worker in good standing: it takes the shard again.
    let (_, shard, attempt) = lease(&mut s, &a);
    assert_eq!((shard, attempt), (1, 2));
    // b's shard, whose progress kept coming, completes.
    assert!(matches!(
        s.complete(&b, &busy, node_output(1)).unwrap(),
        Completion::Stored
    ));
}

#[test]
fn a_job_whose_shards_take_long_gets_longer_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = with_leases(dir.path(), 4, 60);
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    // A shard that took 100 s, with progress, ...
    for step in 1..=20 {
        clock.advance(Duration::from_secs(5));
        s.heartbeat(&w, std::slice::from_ref(&l), vec![], &progress(&l, step))
            .unwrap();
        s.tick().unwrap();
    }
    s.complete(&w, &l, node_output(0)).unwrap();
    // ... so the next may go 4 x 100 s without progress.
    let (l, _, _) = lease(&mut s, &w);
    for _ in 0..70 {
        clock.advance(Duration::from_secs(5));
        s.heartbeat(&w, std::slice::from_ref(&l), vec![], &[])
            .unwrap();
        s.tick().unwrap();
    }
    assert_eq!(
        job_status(&s, job).shards_leased,
        1,
        "350 s: still within 400 s"
    );
    for _ in 0..11 {
        clock.advance(Duration::from_secs(5));
        s.heartbeat(&w, std::slice::from_ref(&l), vec![], &[])
            .unwrap();
        s.tick().unwrap();
    }
    assert_eq!(job_status(&s, job).shards_queued, 1, "405 s: expired");
}

#[test]
fn a_worker_holds_a_bounded_number_of_leases_and_cancel_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = with_leases(dir.path(), 1, 60);
    let (hoarder, other) = (worker(&mut s, "hoarder"), worker(&mut s, "other"));
    let first = prepared(&mut s, &other);
    let (l, _, _) = lease(&mut s, &hoarder);
    assert!(
        s.lease(&hoarder, &[]).unwrap().is_none(),
        "one lease at most"
    );
    let (_, shard, _) = lease(&mut s, &other);
    assert_eq!(shard, 2, "the rest of the queue goes to others");
    // A wedged worker's lease is freed by cancelling its job: it may take other work.
    let second = s.submit("nodes", NODES, vec![]).unwrap();
    assert!(s.lease(&hoarder, &[]).unwrap().is_none());
    s.cancel(first).unwrap();
    let next = s.lease(&hoarder, &[]).unwrap().expect("free again");
    assert_eq!(next.job_id, second);
    let held = [l.clone(), next.lease_id.clone()];
    assert_eq!(s.heartbeat(&hoarder, &held, vec![], &[]).unwrap(), vec![l]);
}

#[test]
fn a_stall_of_the_coordinator_s_own_making_loses_no_worker_and_expires_no_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = with_leases(dir.path(), 4, 20);
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    // The lock was held for 30 s: no heartbeat could be heard.
    clock.advance(Duration::from_secs(30));
    s.forgive(Duration::from_secs(30));
    s.tick().unwrap();
    assert!(
        s.heartbeat(&w, std::slice::from_ref(&l), vec![], &[])
            .unwrap()
            .is_empty()
    );
    assert_eq!(job_status(&s, job).shards_leased, 1);
    // Without the excuse, the same silence loses it.
    clock.advance(Duration::from_secs(30));
    s.tick().unwrap();
    assert!(matches!(
        s.heartbeat(&w, &[], vec![], &[]),
        Err(SchedError::UnknownWorker(_))
    ));
}

#[test]
fn a_revoked_lease_s_result_wins_over_the_lease_that_took_its_shard_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = with_leases(dir.path(), 4, 60);
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    let job = prepared(&mut s, &a);
    let (slow, shard, _) = lease(&mut s, &a);
    // a's lease expires (a and b heartbeat, a reports no progress); b takes the shard again.
    outwait(&mut s, &clock, &[&a, &b], 13);
    let (again, shard_b, _) = lease(&mut s, &b);
    assert_eq!(shard_b, shard);
    // a's result arrives after all and is being stored when b reports a failure.
    let r = s
        .receive(&a, &slow, node_output(0))
        .unwrap()
        .expect("still open");
    s.fail(&b, &again, false, "bad input").unwrap();
    assert_eq!(job_status(&s, job).state, "running", "b no longer holds it");
    let stored = r.store();
    assert!(matches!(s.accept(r, stored).unwrap(), Completion::Stored));
    assert_eq!(job_status(&s, job).shards_done, 2);
}

#[test]
fn an_accepted_result_revokes_the_other_lease_of_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, clock) = with_leases(dir.path(), 4, 60);
    let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
    prepared(&mut s, &a);
    let (slow, shard, _) = lease(&mut s, &a);
    outwait(&mut s, &clock, &[&a, &b], 13);
    let (again, _, _) = lease(&mut s, &b);
    s.complete(&a, &slow, node_output(0)).unwrap();
    let held = std::slice::from_ref(&again);
    assert_eq!(
        s.heartbeat(&b, held, vec![], &[]).unwrap(),
        vec![again.clone()]
    );
    assert_eq!(shard_rec(&s, 1, shard).attempts, 2);
}
