//! Accepting connections so that no client can exhaust the coordinator: at most so many open at
//! once (more are closed as they arrive), a connection that sends nothing in time is closed, and
//! accept errors (out of file descriptors) back off instead of spinning. Used by the gRPC server
//! and the dashboard alike.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What one listener admits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            first_byte: Duration::from_secs(10),
        }
    }
}

/// An admitted connection; its slot is freed when it closes.
pub struct Admitted {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

/// The connections `listener` admits, as they have sent their first byte. Accepting stops when
/// the receiver is dropped.
pub fn admit(listener: TcpListener, limits: ConnLimits) -> mpsc::Receiver<Admitted> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait for
                    // others to close rather than retrying at once.
                    tracing::warn!("accept: {e}; pausing {} ms", pause.as_millis());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            pause = Duration::from_millis(10);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    "refused a connection from {peer}: {} already open",
                    limits.max_connections
                );
                continue;
            };
            // No Nagle delay: leases and acks are small messages that must not wait 40 ms.
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                let spoke = tokio::time::timeout(limits.first_byte, stream.peek(&mut first)).await;
                if matches!(spoke, Ok(Ok(n)) if n > 0) {
                    let _ = tx
                        .send(Admitted {
                            stream,
                            peer,
                            _slot: slot,
                        })
                        .await;
                }
            });
        }
    });
    rx
}

/// The admitted connections as tonic's incoming stream.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> impl tokio_stream::Stream<Item = io::Result<Admitted>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(admit(listener, limits)).map(Ok)
}

/// The admitted connections as the dashboard's listener.
pub struct AdmittedListener {
    rx: mpsc::Receiver<Admitted>,
    local: SocketAddr,
}

impl AdmittedListener {
    /// Admits connections on `listener`.
    pub fn new(listener: TcpListener, limits: ConnLimits) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(AdmittedListener {
            rx: admit(listener, limits),
            local,
        })
    }
}

impl axum::serve::Listener for AdmittedListener {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Admitted, SocketAddr) {
        match self.rx.recv().await {
            Some(a) => {
                let peer = a.peer;
                (a, peer)
            }
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Whether the server closes `s` (reads end) within 10 s.
    fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 8];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    }

    #[test]
    fn silent_connections_are_closed_and_at_most_max_are_open() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = ConnLimits {
            max_connections: 2,
            first_byte: Duration::from_millis(200),
        };
        let (addr, mut rx) = rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            (l.local_addr().unwrap(), admit(l, limits))
        });
        let connect = || std::net::TcpStream::connect(addr).unwrap();

        // Silent: closed once the first byte is overdue, and never handed on.
        let mut silent = connect();
        assert!(closed_by_server(&mut silent));
        assert!(rx.try_recv().is_err());

        // Two that speak are admitted and hold the two slots.
        let mut held = vec![];
        for _ in 0..2 {
            let mut s = connect();
            s.write_all(b"x").unwrap();
            held.push(rt.block_on(rx.recv()).unwrap());
            drop(s);
        }
        // A third is closed at once, though it speaks.
        let mut third = connect();
        let _ = third.write_all(b"x");
        assert!(closed_by_server(&mut third));
        // A slot frees when an admitted connection closes.
        held.pop();
        let mut fourth = connect();
        fourth.write_all(b"x").unwrap();
        let again =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await });
        assert!(matches!(again, Ok(Some(_))));
    }
}
