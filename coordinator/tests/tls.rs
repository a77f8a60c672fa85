//! TLS end to end. The binary's flags: a coordinator started with `--tls-cert`/`--tls-key`
//! answers a client given `--tls-ca`, refuses one that does not trust its certificate, and bad
//! flags are named in the error. In one process over loopback: a coordinator with a certificate
//! from a test CA that also requires client certificates; a worker and a client with the CA and
//! their own certificates finish a job with the numbers of a plain-text run; a plain-text client,
//! a client that does not trust the CA, and a client without a certificate are refused.

mod support;

use std::path::Path;

use circuit_sweep_coordinator::client;
use circuit_sweep_coordinator::local;
use circuit_sweep_coordinator::server::{self, ServerConfig, Service};
use circuit_sweep_proto::auth;
use circuit_sweep_proto::tls::{ClientTls, ServerTls};
use circuit_sweep_proto::v1::StatusRequest;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use support::{Proc, address, bin, ok, results_folder as folder, spawn, tiny_model_with_data};

#[test]
fn tls_flags_serve_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A self-signed certificate is its own CA here.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(d.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();

    let mut c = bin();
    c.args(["coordinator", "--listen", "127.0.0.1:0", "--token", "t0k"])
        .arg("--state")
        .arg(d.join("state"))
        .arg("--tls-cert")
        .arg(d.join("cert.pem"))
        .arg("--tls-key")
        .arg(d.join("key.pem"));
    let _coordinator: Proc = spawn(c, &d.join("coordinator.log"));
    let url = address(&d.join("coordinator.log"));
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let status = |extra: &[&std::ffi::OsStr]| {
        bin()
            .args(["status", "--json", "--token", "t0k", "--coordinator"])
            .arg(&url)
            .args(extra)
            .output()
            .unwrap()
    };
    let cert = d.join("cert.pem");
    let s: serde_json::Value =
        serde_json::from_str(&ok(status(&["--tls-ca".as_ref(), cert.as_os_str()]))).unwrap();
    assert_eq!(s["jobs"].as_array().unwrap().len(), 0, "{s}");

    let untrusted = status(&[]);
    assert!(!untrusted.status.success());
    let e = String::from_utf8_lossy(&untrusted.stderr);
    assert!(e.contains("UnknownIssuer"), "{e}");

    let junk = d.join("junk.pem");
    let bad = status(&["--tls-ca".as_ref(), junk.as_os_str()]);
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("junk.pem: no PEM CERTIFICATE"), "{e}");

    // TLS settings with an http:// URL would silently do nothing: refused.
    let plain = bin()
        .args(["status", "--coordinator", "http://127.0.0.1:1", "--tls-ca"])
        .arg(&cert)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&plain.stderr);
    assert!(e.contains("not https://"), "{e}");

    // A certificate without its key.
    let half = bin()
        .args(["coordinator", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&half.stderr);
    assert!(e.contains("--tls-key"), "{e}");
}

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
                // A confined worker, as `circuit-sweep worker` runs: the tiny model is in a
                // model root.
                models: circuit_sweep_worker::model_access::ModelAccess::under(
                    &models,
                    &[d.to_path_buf()],
                ),
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
