//! Deleting jobs over real gRPC on loopback: a finished job deleted by a client, or by the
//! `keep_finished` policy, is gone from `status` and `results`, its results folder removed; a
//! running job is refused until cancelled.

use std::time::Duration;

use circuit_sweep_common::shard::{JobMeta, NodeShard};
use circuit_sweep_coordinator::server::ServerConfig;
use circuit_sweep_proto::auth;
use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::tensor::WireTensor;
use circuit_sweep_proto::v1::{CancelRequest, DeleteRequest, ResultsRequest, StatusRequest};
use circuit_sweep_tests::grpc::{Coordinator, lease, put, register, rt, submit_nodes};

/// Submits (as client `c`) a node sweep of a 2-layer, 3-head model, the fake worker `w` (on
/// `wc`) computing its first `shards` shards of 3; returns the job.
async fn run(c: &mut auth::Client, wc: &mut auth::Client, w: &str, shards: usize) -> u64 {
    let job = submit_nodes(c).await;
    let prepared = ShardOutput::Prepared(Box::new(JobMeta::synthetic("tiny", 2, 3)));
    let outputs = std::iter::once(prepared).chain((0..2).map(|layer| {
        ShardOutput::Nodes(NodeShard {
            layers: vec![layer],
            heads: vec![vec![90.0, 80.0, 70.0]],
            mlps: vec![60.0],
        })
    }));
    for out in outputs.take(shards) {
        let l = lease(wc, w).await;
        let chunks = out
            .encode()
            .iter()
            .flat_map(|t: &WireTensor| t.chunks(1 << 20))
            .collect();
        put(wc, w, &l.lease_id, chunks).await.unwrap();
    }
    job
}

/// The job's state; `None` once the coordinator says there is no such job.
async fn state(c: &mut auth::Client, job: u64) -> Option<String> {
    match c.status(StatusRequest { job_id: job }).await {
        Ok(r) => Some(r.into_inner().jobs.remove(0).state),
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
            assert!(e.message().contains(&format!("no job {job}")), "{e:?}");
            None
        }
    }
}

/// Waits (at most 20 s) for the job's state to be `want` (`None`: gone).
async fn wait_for(c: &mut auth::Client, job: u64, want: Option<&str>) {
    for _ in 0..200 {
        if state(c, job).await.as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} never became {want:?}");
}

async fn results_code(c: &mut auth::Client, job: u64) -> tonic::Code {
    match c.results(ResultsRequest { job_id: job }).await {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    }
}

#[test]
fn a_deleted_job_is_gone_from_status_and_results_and_its_folder_removed() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.client_tokens = vec!["client".into()];
        cfg.worker_tokens = vec!["worker".into()];
        let coordinator = Coordinator::start(cfg).await;
        let mut c = coordinator.client(Some("client")).await;
        let mut wc = coordinator.client(Some("worker")).await;
        let w = register(&mut wc).await;
        let job = run(&mut c, &mut wc, &w, 3).await;
        wait_for(&mut c, job, Some("done")).await;
        let folder = dir.path().join("results").join(job.to_string());
        assert!(folder.join("result.json").is_file());
        assert_eq!(results_code(&mut c, job).await, tonic::Code::Ok);
        // A worker token cannot delete.
        let e = wc.delete(DeleteRequest { job_id: job }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        // A running job is refused until cancelled.
        let running = run(&mut c, &mut wc, &w, 1).await;
        let e = c
            .delete(DeleteRequest { job_id: running })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("cancel it first"), "{e:?}");
        c.delete(DeleteRequest { job_id: job }).await.unwrap();
        assert_eq!(state(&mut c, job).await, None);
        assert_eq!(results_code(&mut c, job).await, tonic::Code::NotFound);
        assert!(!folder.exists());
        let e = c.delete(DeleteRequest { job_id: job }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        c.cancel(CancelRequest { job_id: running }).await.unwrap();
        c.delete(DeleteRequest { job_id: running }).await.unwrap();
        // Ids go on from the deleted ones.
        assert_eq!(run(&mut c, &mut wc, &w, 0).await, running + 1);
        coordinator.stop().await;
    });
}

#[test]
fn the_policy_deletes_finished_jobs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.heartbeat = Duration::from_millis(50);
        cfg.keep_finished = Some(Duration::ZERO);
        let coordinator = Coordinator::start(cfg).await;
        let mut c = coordinator.client(None).await;
        let mut wc = coordinator.client(None).await;
        let w = register(&mut wc).await;
        let job = run(&mut c, &mut wc, &w, 3).await;
        wait_for(&mut c, job, None).await;
        let running = run(&mut c, &mut wc, &w, 1).await;
        assert_eq!(results_code(&mut c, job).await, tonic::Code::NotFound);
        // The folder goes just after the job, outside the lock.
        let folder = dir.path().join("results").join(job.to_string());
        for _ in 0..100 {
            if !folder.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!folder.exists());
        // A job that has not ended is kept.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(state(&mut c, running).await.as_deref(), Some("running"));
        coordinator.stop().await;
    });
}
