//! TLS end to end, in one process over loopback: a coordinator with a certificate from a test CA
//! that also requires client certificates; a worker and a client with the CA and their own
//! certificates finish a job with the numbers of a plain-text run; a plain-text client, a
//! client that does not trust the CA, and a client without a certificate are refused.

use std::path::Path;

use circuit_sweep_coordinator::client;
use circuit_sweep_coordinator::local;
use circuit_sweep_coordinator::server::{self, ServerConfig, Service};
use circuit_sweep_proto::auth;
use circuit_sweep_proto::tls::{ClientTls, ServerTls};
use circuit_sweep_proto::v1::StatusRequest;
use circuit_sweep_tests::{results_folder as folder, tiny_model_with_data};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM
/// files in `dir`.
fn certificates(dir: &Path) {
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn a_job_runs_over_tls_with_client_certificates_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let (model, data) = tiny_model_with_data(d, 6);
    let spec = d.join("nodes.toml");
    std::fs::write(
        &spec,
        format!(
            "[model]\npath = {:?}\n\n[data]\nfile = {:?}\n\n[sweep]\nkind = \"nodes\"\n",
            model.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let models = d.join("models");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let plain = d.join("plain");
    rt.block_on(local::run(&spec, &plain, 1, &models, false))
        .unwrap();

    let out = d.join("tls");
    rt.block_on(async {
        let mut cfg = ServerConfig::new(&d.join("state"));
        cfg.client_tokens = vec!["t0k".into()];
        cfg.worker_tokens = cfg.client_tokens.clone();
        cfg.tls = Some(
            ServerTls::from_files(
                &d.join("server.pem"),
                &d.join("server-key.pem"),
                Some(&d.join("ca.pem")),
            )
            .unwrap(),
        );
        let listener = server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{port}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(Service::open(cfg).unwrap().serve(listener, async {
            let _ = stopped.await;
        }));
        let trusted = ClientTls::from_files(
            Some(&d.join("ca.pem")),
            Some(&d.join("client.pem")),
            Some(&d.join("client-key.pem")),
            None,
        )
        .unwrap();

        // Refused: plain text to a TLS port; a client that does not trust the CA; a client
        // without a certificate of its own.
        let status = |mut c: auth::Client| async move {
            c.status(StatusRequest { job_id: 0 }).await.map(|_| ())
        };
        let refused = [
            (format!("http://127.0.0.1:{port}"), ClientTls::default()),
            (url.clone(), ClientTls::default()),
            (
                url.clone(),
                ClientTls {
                    identity: None,
                    ..trusted.clone()
                },
            ),
        ];
        for (u, tls) in refused {
            let r = match auth::connect_with(&u, Some("t0k"), &tls).await {
                Ok(c) => status(c).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let e = r.expect_err("refused");
            assert!(!e.is_empty());
        }
        // A certificate the client does not trust says so.
        let e = match auth::connect_with(&url, Some("t0k"), &ClientTls::default()).await {
            Ok(c) => status(c).await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("certificate") || e.contains("UnknownIssuer"),
            "{e}"
        );

        // Trusted: a worker and a client finish a job.
        let mut c = auth::connect_with(&url, Some("t0k"), &trusted)
            .await
            .unwrap();
        let job = client::submit(&mut c, &client::Submission::from_file(&spec).unwrap())
            .await
            .unwrap();
        let (stop_worker, rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(circuit_sweep_worker::agent::run(
            circuit_sweep_worker::agent::AgentConfig {
                coordinator: url.clone(),
                token: Some("t0k".into()),
                tls: trusted.clone(),
                name: "tls".into(),
                device: "cpu".into(),
                threads: 1,
                models_dir: models.clone(),
                work_dir: d.join("work"),
                health: None,
                exit_when_idle: None,
            },
            std::sync::Arc::new(circuit_sweep_worker::resident::ModelCache::new(u64::MAX)),
            rx,
        ));
        client::wait(&mut c, job, false).await.unwrap();
        client::download(&mut c, job, &out).await.unwrap();
        stop_worker.send(true).unwrap();
        assert_eq!(worker.await.unwrap().unwrap().shards_failed, 0);
        stop.send(()).unwrap();
        srv.await.unwrap().unwrap();
    });
    assert_eq!(folder(&plain), folder(&out));
}
