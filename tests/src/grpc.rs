//! Driving an in-process coordinator over gRPC by hand, as a fake (or hostile) worker would: a
//! runtime with test logs, a coordinator on a loopback port with any settings, and the messages
//! of a worker written out.

use circuit_sweep_coordinator::server::{self, ServerConfig, Service};
use circuit_sweep_proto::v1::{LeaseRequest, ShardLease, SubmitRequest, TensorChunk, WorkerInfo};
use circuit_sweep_proto::{PROTOCOL_VERSION, auth, tensor};

/// A multi-threaded runtime; logs (CIRCUIT_SWEEP_LOG, default warn) show in a failing test's
/// output.
pub fn rt() -> tokio::runtime::Runtime {
    let filter = std::env::var("CIRCUIT_SWEEP_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A coordinator served on a free loopback port.
pub struct Coordinator {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Coordinator {
    /// Opens `cfg`'s state and serves it.
    pub async fn start(cfg: ServerConfig) -> Self {
        let service = Service::open(cfg).unwrap();
        let listener = server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        Coordinator { url, stop, server }
    }

    /// A client with `token`.
    pub async fn client(&self, token: Option<&str>) -> auth::Client {
        auth::connect(&self.url, token).await.unwrap()
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

/// What a fake worker of protocol `version` says about itself.
pub fn info(version: u32) -> WorkerInfo {
    WorkerInfo {
        protocol_version: version,
        name: "fake".into(),
        device: "cpu".into(),
        memory_bytes: 0,
        models: vec![],
        threads: 1,
        profile: "cpu-test".into(),
    }
}

/// Submits a node sweep (no inputs: its prepare shard is the fake worker's to answer); returns
/// the job.
pub async fn submit_nodes(c: &mut auth::Client) -> u64 {
    c.submit(SubmitRequest {
        protocol_version: PROTOCOL_VERSION,
        name: "nodes".into(),
        spec_toml: "[sweep]\nkind = \"nodes\"\n".into(),
        attachments: vec![],
    })
    .await
    .unwrap()
    .into_inner()
    .job_id
}

/// Registers a fake worker; returns its id.
pub async fn register(c: &mut auth::Client) -> String {
    c.register(info(PROTOCOL_VERSION))
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

/// The next queued shard for `worker`, waiting a little for one: a job is planned after its
/// prepare shard's result was acknowledged, so its shards are queued a moment later.
pub async fn lease(c: &mut auth::Client, worker: &str) -> ShardLease {
    for _ in 0..100 {
        let reply = c
            .lease(LeaseRequest {
                worker_id: worker.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(l) = reply.lease {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no queued shard for 5 s")
}

/// Sends `chunks` as the result of `lease`.
pub async fn put(
    c: &mut auth::Client,
    worker: &str,
    lease: &str,
    chunks: Vec<TensorChunk>,
) -> Result<(), tonic::Status> {
    let msgs = tensor::result_messages(worker, lease, chunks);
    c.put_result(tokio_stream::iter(msgs)).await.map(|_| ())
}
