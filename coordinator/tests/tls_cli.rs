//! The TLS flags of the binary: a coordinator started with `--tls-cert`/`--tls-key` answers a
//! client given `--tls-ca`, refuses one that does not trust its certificate, and bad flags are
//! named in the error.

mod support;

use support::{Proc, address, bin, ok, spawn};

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
