//! TLS (rustls) for both ends: the coordinator's certificate and key, optionally a CA whose
//! client certificates it requires; a client's CA to trust and optionally its own certificate.
//! PEM bytes are read from files by the binaries; errors name the file.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file has no PEM block of the kind needed.
    #[error("{}: no PEM {what} in this file", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// "CERTIFICATE" or "PRIVATE KEY".
        what: &'static str,
    },
    /// A setting that makes no sense with the URL.
    #[error("{0}")]
    Mismatch(String),
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(&format!("{what}-----")) {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(bytes)
}

/// The coordinator's TLS settings.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Reads the certificate, key and optional client CA from PEM files.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        Ok(ServerTls {
            cert_pem: read_pem(cert, "CERTIFICATE")?,
            key_pem: read_pem(key, "PRIVATE KEY")?,
            client_ca_pem: client_ca.map(|p| read_pem(p, "CERTIFICATE")).transpose()?,
        })
    }

    /// The tonic configuration.
    pub fn config(&self) -> ServerTlsConfig {
        let mut c =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        c
    }
}

/// A client's TLS settings (workers and the client commands); used with `https://` URLs.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA that signed the coordinator's certificate (PEM); without it the system's roots are
    /// trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// This client's certificate and key (PEM), for coordinators that require one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name the coordinator's certificate must carry (default: the URL's host).
    pub domain: Option<String>,
}

impl ClientTls {
    /// Reads the optional CA and client certificate and key from PEM files.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        domain: Option<String>,
    ) -> Result<Self, TlsError> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read_pem(c, "CERTIFICATE")?, read_pem(k, "PRIVATE KEY")?)),
            (None, None) => None,
            _ => {
                return Err(TlsError::Mismatch(
                    "a client certificate needs both --tls-cert and --tls-key".into(),
                ));
            }
        };
        Ok(ClientTls {
            ca_pem: ca.map(|p| read_pem(p, "CERTIFICATE")).transpose()?,
            identity,
            domain,
        })
    }

    /// Whether any TLS setting was given.
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some() || self.domain.is_some()
    }

    /// The tonic configuration for `url`: `None` for `http://`, an error when TLS settings were
    /// given for a plain-text URL (they would silently do nothing).
    pub fn config_for(&self, url: &str) -> Result<Option<ClientTlsConfig>, TlsError> {
        if !url.starts_with("https://") {
            if self.is_set() {
                return Err(TlsError::Mismatch(format!(
                    "{url}: TLS settings were given but the URL is not https://"
                )));
            }
            return Ok(None);
        }
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(ca) => c.ca_certificate(Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_pem_are_named() {
        let dir = std::env::temp_dir().join(format!("cs-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("cert.pem");
        std::fs::write(&bad, "hello").unwrap();
        let e = ServerTls::from_files(&bad, &bad, None).unwrap_err();
        assert!(
            e.to_string().contains("cert.pem: no PEM CERTIFICATE"),
            "{e}"
        );
        let e =
            ClientTls::from_files(Some(&dir.join("missing.pem")), None, None, None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = ClientTls::from_files(None, Some(&bad), None, None).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_settings_need_an_https_url() {
        let none = ClientTls::default();
        assert!(none.config_for("http://127.0.0.1:1").unwrap().is_none());
        assert!(none.config_for("https://127.0.0.1:1").unwrap().is_some());
        let ca = ClientTls {
            domain: Some("coordinator".into()),
            ..Default::default()
        };
        let e = ca.config_for("http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("not https://"), "{e}");
    }
}
