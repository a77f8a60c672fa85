//! What a worker token cannot do, over real gRPC on loopback with hand-written hostile workers:
//! stream more than its shard can produce, register past the caps, or find another worker's id
//! in `status` and drain it, or hold shards it does not work on.

use circuit_sweep_common::shard::JobMeta;
use circuit_sweep_coordinator::server::ServerConfig;
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::auth;
use circuit_sweep_proto::shard_output::ShardOutput;
use circuit_sweep_proto::tensor::WireTensor;
use circuit_sweep_proto::v1::{
    GoodbyeRequest, HeartbeatRequest, LeaseRequest, StatusRequest, TensorChunk, WorkerInfo,
};
use circuit_sweep_tests::grpc::{Coordinator, info, lease, put, register, rt, submit_nodes};

/// A node sweep of a 2-layer, 3-head model, prepared by `w`: its node shards are queued.
async fn prepared(c: &mut auth::Client, w: &str) -> u64 {
    let job = submit_nodes(c).await;
    let l = lease(c, w).await;
    let out = ShardOutput::Prepared(Box::new(JobMeta::synthetic("tiny", 2, 3))).encode();
    let chunks = out.iter().flat_map(|t| t.chunks(1 << 20)).collect();
    put(c, w, &l.lease_id, chunks).await.unwrap();
    job
}

async fn status(c: &mut auth::Client) -> circuit_sweep_proto::v1::StatusReply {
    c.status(StatusRequest { job_id: 0 })
        .await
        .unwrap()
        .into_inner()
}

#[test]
fn a_result_stream_past_what_its_shard_can_produce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let coordinator = Coordinator::start(ServerConfig::new(dir.path())).await;
        let mut c = coordinator.client(None).await;
        let w = register(&mut c).await;
        prepared(&mut c, &w).await;
        // A node shard of one layer produces 4 scores: a 1 GiB tensor is refused on its first
        // chunk, before anything is reserved for it.
        let l = lease(&mut c, &w).await;
        let mut chunk = WireTensor::f64("heads", &[1], &[1.0]).chunks(8).remove(0);
        chunk.shape = vec![1 << 27];
        chunk.total_bytes = 1 << 30;
        let e = put(&mut c, &w, &l.lease_id, vec![chunk]).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("over the limit of"), "{e:?}");
        // Tensors that each fit but together do not.
        let l = lease(&mut c, &w).await;
        let big: Vec<TensorChunk> = ["a", "b"]
            .iter()
            .flat_map(|name| WireTensor::f64(name, &[5000], &[1.0; 5000]).chunks(1 << 20))
            .collect();
        let e = put(&mut c, &w, &l.lease_id, big).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("tensor `b`"), "{e:?}");
        // The job goes on: both shards are queued again.
        let st = status(&mut c).await;
        assert_eq!(st.jobs[0].state, "running");
        assert_eq!(st.jobs[0].shards_queued, 2);
        coordinator.stop().await;
    });
}

#[test]
fn registrations_past_the_caps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.max_workers = 3;
        let coordinator = Coordinator::start(cfg).await;
        let mut c = coordinator.client(None).await;
        let long = "x".repeat(1 << 20);
        for bad in [
            WorkerInfo {
                name: long.clone(),
                ..info(PROTOCOL_VERSION)
            },
            WorkerInfo {
                models: vec!["m".into(); 100_000],
                ..info(PROTOCOL_VERSION)
            },
        ] {
            let e = c.register(bad).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("registration refused"), "{e:?}");
        }
        let mut ids = vec![];
        for _ in 0..3 {
            ids.push(register(&mut c).await);
        }
        let e = c.register(info(PROTOCOL_VERSION)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("3 workers"), "{e:?}");
        // A heartbeat cannot grow what a worker said past the caps either.
        let e = c
            .heartbeat(HeartbeatRequest {
                worker_id: ids[0].clone(),
                leases: vec![],
                models: vec![long],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let st = status(&mut c).await;
        assert_eq!((st.workers.len(), st.workers_omitted), (3, 0));
        // One leaves: another may register.
        c.goodbye(GoodbyeRequest {
            worker_id: ids[0].clone(),
        })
        .await
        .unwrap();
        register(&mut c).await;
        coordinator.stop().await;
    });
}

#[test]
fn a_worker_cannot_drain_another_with_what_status_shows() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // The default deployment: one token for workers and clients.
        let mut cfg = ServerConfig::new(dir.path());
        cfg.client_tokens = vec!["shared".into()];
        cfg.worker_tokens = cfg.client_tokens.clone();
        let coordinator = Coordinator::start(cfg).await;
        let mut victim = coordinator.client(Some("shared")).await;
        let v = register(&mut victim).await;
        prepared(&mut victim, &v).await;
        let held = lease(&mut victim, &v).await;
        // The attacker reads status and says goodbye, and fails a lease, in the victim's name.
        let mut attacker = coordinator.client(Some("shared")).await;
        let st = status(&mut attacker).await;
        let shown = &st.workers[0];
        assert_eq!(shown.worker_id, "w1");
        assert!(shown.leases[0] != held.lease_id && v.len() > 32, "{v}");
        for guess in [shown.worker_id.clone(), format!("{}-0000", shown.worker_id)] {
            attacker
                .goodbye(GoodbyeRequest { worker_id: guess })
                .await
                .unwrap();
        }
        let hb = victim
            .heartbeat(HeartbeatRequest {
                worker_id: v.clone(),
                leases: vec![held.lease_id.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(hb.known && hb.revoked.is_empty(), "{hb:?}");
        let e = attacker
            .fail(circuit_sweep_proto::v1::FailRequest {
                worker_id: shown.worker_id.clone(),
                lease_id: shown.leases[0].clone(),
                retryable: false,
                reason: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert_eq!(status(&mut attacker).await.jobs[0].state, "running");
        coordinator.stop().await;
    });
}

#[test]
fn a_worker_that_hoards_leases_without_progress_loses_them() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.heartbeat = std::time::Duration::from_millis(100);
        cfg.lease_timeout = std::time::Duration::from_secs(1);
        cfg.max_leases = 1;
        let coordinator = Coordinator::start(cfg).await;
        let mut c = coordinator.client(None).await;
        let (hoarder, honest) = (register(&mut c).await, register(&mut c).await);
        let job = prepared(&mut c, &honest).await;
        let held = lease(&mut c, &hoarder).await;
        // One lease at most: the rest of the queue is left for others.
        let more = c
            .lease(LeaseRequest {
                worker_id: hoarder.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(more.into_inner().lease.is_none());
        // It heartbeats, so it is never lost, but reports no progress: the lease expires.
        let started = std::time::Instant::now();
        let revoked = loop {
            let hb = c
                .heartbeat(HeartbeatRequest {
                    worker_id: hoarder.clone(),
                    leases: vec![held.lease_id.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if !hb.revoked.is_empty() || started.elapsed().as_secs() > 10 {
                break hb.revoked;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(revoked, vec![held.lease_id.clone()]);
        let st = status(&mut c).await;
        let j = st.jobs.iter().find(|j| j.job_id == job).unwrap();
        assert_eq!((j.state.as_str(), j.requeued), ("running", 1));
        assert_eq!(st.workers.len(), 2, "still registered: it was not lost");
        // The shard went back to the queue: the honest worker takes it.
        let again = lease(&mut c, &honest).await;
        assert_eq!(again.shard, held.shard);
        coordinator.stop().await;
    });
}
