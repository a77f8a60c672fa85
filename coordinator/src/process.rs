//! A coordinator process: the service on its listener and the dashboard beside it, until a
//! shutdown. It lives here rather than in the CLI so that a process can be composed (and
//! tested) without parsing flags.

use std::future::Future;
use std::net::SocketAddr;

use crate::dashboard;
use crate::scheduler::SchedError;
use crate::server::{self, ServerConfig, Service};

/// Why a coordinator process cannot start or stopped with an error. Messages name the flag
/// that set the address, as the CLI shows them as they are.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The state folder does not open.
    #[error(transparent)]
    Open(#[from] SchedError),
    /// The service's address cannot be bound.
    #[error("--listen {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The dashboard's address cannot be bound.
    #[error("--dashboard {addr}")]
    Dashboard {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] tonic::transport::Error),
}

/// Opens the state in `cfg`, serves on `listen` (and the dashboard on `dashboard`, if given)
/// until `shutdown` resolves, then stops both.
pub async fn run(
    listen: SocketAddr,
    cfg: ServerConfig,
    dashboard: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProcessError> {
    let (tls, state_dir, tokens) = (
        cfg.tls.is_some(),
        cfg.state_dir.clone(),
        cfg.client_tokens.clone(),
    );
    let service = Service::open(cfg)?;
    let listener = server::bind(listen)
        .await
        .map_err(|source| ProcessError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(
        "coordinator listening on {}://{} (state {})",
        if tls { "https" } else { "http" },
        listener.local_addr()?,
        state_dir.display()
    );
    let stop = tokio::sync::watch::channel(false);
    if let Some(addr) = dashboard {
        let l = server::bind(addr)
            .await
            .map_err(|source| ProcessError::Dashboard { addr, source })?;
        tracing::info!("dashboard on http://{}/", l.local_addr()?);
        if !addr.ip().is_loopback() && tls {
            tracing::warn!(
                "the dashboard speaks plain HTTP: put it behind a TLS proxy or reach it \
                 through a tunnel (kubectl port-forward, ssh -L)"
            );
        }
        let mut rx = stop.1.clone();
        let svc = service.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = dashboard::serve(l, svc, tokens, done).await {
                tracing::error!("dashboard: {e}");
            }
        });
    }
    service.serve(listener, shutdown).await?;
    let _ = stop.0.send(true);
    tracing::info!("coordinator stopped");
    Ok(())
}
