//! What a client's spec can make a worker read: only the files submitted with the job, and
//! errors never echo a file's contents.

use circuit_sweep_coordinator::client;
use circuit_sweep_coordinator::local::{LocalCluster, LocalConfig};
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::v1::SubmitRequest;
use circuit_sweep_tests::tiny_model_with_data;

#[test]
fn a_path_of_the_workers_disk_named_in_a_spec_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_with_data(dir.path(), 2);
    let secret = dir.path().join("secret.jsonl");
    std::fs::write(&secret, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let rt = circuit_sweep_tests::grpc::rt();
    rt.block_on(async {
        let cluster = LocalCluster::start(LocalConfig::new(
            dir.path().join("state"),
            dir.path().join("models"),
            1,
        ))
        .await
        .unwrap();
        let mut c = cluster.client().await.unwrap();
        let submit = |spec: String| SubmitRequest {
            protocol_version: PROTOCOL_VERSION,
            name: "peek".into(),
            spec_toml: spec,
            attachments: vec![],
        };
        // A hand-written client naming a file without attaching it: refused at submission.
        let spec = format!(
            "[model]\npath = {:?}\n[data]\nfile = {:?}\n",
            model.display().to_string(),
            secret.display().to_string()
        );
        let e = c.submit(submit(spec)).await.unwrap_err();
        assert!(
            e.message().contains("does not include it") && !e.message().contains("root"),
            "{e}"
        );
        // The secret as the model: the job fails without a byte of it in the error.
        let spec = format!(
            "[model]\npath = {:?}\n[data]\ntask = \"months\"\n",
            secret.display().to_string()
        );
        let job = c.submit(submit(spec)).await.unwrap().into_inner().job_id;
        let e = client::wait(&mut c, job, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a GGUF file") && !e.contains("root"), "{e}");
        cluster.stop().await.unwrap();
    });
}

#[test]
fn a_cluster_worker_reads_models_only_under_its_folders() {
    use circuit_sweep_worker::agent::{self, AgentConfig};
    use circuit_sweep_worker::model_access::ModelAccess;
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model_with_data(dir.path(), 2);
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "[model]\npath = {:?}\n[data]\nfile = {:?}\n",
            model.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let models = dir.path().join("models");
    let rt = circuit_sweep_tests::grpc::rt();
    rt.block_on(async {
        let cluster = LocalCluster::start(LocalConfig::new(
            dir.path().join("state"),
            models.clone(),
            0,
        ))
        .await
        .unwrap();
        let mut c = cluster.client().await.unwrap();
        let job = client::submit(&mut c, &client::Submission::from_file(&spec).unwrap())
            .await
            .unwrap();
        // A worker as `circuit-sweep worker --models-dir models` runs: the tiny model is
        // outside its folders.
        let (stop, rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(agent::run(
            AgentConfig {
                coordinator: cluster.url.clone(),
                token: None,
                tls: Default::default(),
                name: "confined".into(),
                device: "cpu".into(),
                threads: 1,
                models_dir: models.clone(),
                models: ModelAccess::under(&models, &[]),
                work_dir: dir.path().join("work"),
                health: None,
                exit_when_idle: None,
            },
            std::sync::Arc::new(circuit_sweep_worker::resident::ModelCache::new(u64::MAX)),
            rx,
        ));
        let e = client::wait(&mut c, job, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "[model] path: `{}` is outside the folders this worker reads models from",
                model.display()
            )),
            "{e}"
        );
        stop.send(true).unwrap();
        worker.await.unwrap().unwrap();
        cluster.stop().await.unwrap();
    });
}
