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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = LocalCluster::start(LocalConfig {
            state_dir: dir.path().join("state"),
            models_dir: dir.path().join("models"),
            workers: 1,
            token: None,
            memory_budget: u64::MAX,
            device: "cpu".into(),
        })
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
