//! A client connection: requests are multiplexed by `opaque` and matched to their responses; requests the
//! server initiates (e.g. NOTIFY_CONSUMER_IDS_CHANGED) go to an optional callback. With a [`ClientTls`] the
//! connection speaks TLS; without, it uses the socket halves directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use raftmq_remoting::frame::{RemotingCodec, RemotingCommand};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::debug;

use crate::tls::ClientTls;
use crate::{write_queued, NetError, Response};

/// Called with each request the server sends on this connection.
pub type ServerRequestCallback = Arc<dyn Fn(RemotingCommand) + Send + Sync>;

type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>>;

/// One multiplexed connection to a broker or nameserver. Cheap to clone.
#[derive(Clone)]
pub struct RemotingClient {
    addr: String,
    tx: mpsc::Sender<Response>,
    pending: Pending,
    next_opaque: Arc<AtomicI32>,
    closed: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

const FRAME_BYTES_MAX: usize = 16 << 20;

impl RemotingClient {
    /// Connects to `addr` within `timeout`, plain.
    pub async fn connect(addr: &str, timeout: Duration, on_request: Option<ServerRequestCallback>) -> Result<RemotingClient, NetError> {
        Self::connect_with(addr, timeout, on_request, None).await
    }

    /// Connects to `addr` within `timeout` (TCP connect and TLS handshake each), over TLS when `tls` is given.
    ///
    /// # Errors
    /// [`NetError::Timeout`]; [`NetError::Io`] for connect and handshake failures (an untrusted certificate
    /// is `InvalidData`); [`NetError::Tls`] when the address's host is no valid server name.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        on_request: Option<ServerRequestCallback>,
        tls: Option<&ClientTls>,
    ) -> Result<RemotingClient, NetError> {
        let server_name = tls.map(|t| t.server_name_for(addr)).transpose()?;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| NetError::Timeout(timeout))??;
        stream.set_nodelay(true)?;
        match (tls, server_name) {
            (Some(tls), Some(name)) => {
                let stream = tokio::time::timeout(timeout, tls.connector().connect(name, stream))
                    .await
                    .map_err(|_| NetError::Timeout(timeout))??;
                let (rd, wr) = tokio::io::split(stream);
                Ok(Self::start(addr, rd, wr, on_request))
            }
            _ => {
                let (rd, wr) = stream.into_split();
                Ok(Self::start(addr, rd, wr, on_request))
            }
        }
    }

    fn start<R, W>(addr: &str, rd: R, mut wr: W, on_request: Option<ServerRequestCallback>) -> RemotingClient
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Response>(1024);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (p, c, peer) = (Arc::clone(&pending), Arc::clone(&closed), addr.to_string());
        let writer = tokio::spawn(async move {
            if let Err(e) = write_queued(&mut wr, &mut rx, FRAME_BYTES_MAX).await {
                debug!(%peer, error = %e, "client write failed");
            }
            c.store(true, Ordering::Release);
        });
        let (c, peer) = (Arc::clone(&closed), addr.to_string());
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, RemotingCodec::with_frame_bytes_max(FRAME_BYTES_MAX));
            while let Some(f) = frames.next().await {
                match f {
                    Ok(cmd) if cmd.is_response() => {
                        let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&cmd.opaque);
                        if let Some(w) = waiter {
                            let _ = w.send(cmd);
                        }
                    }
                    Ok(cmd) => {
                        if let Some(cb) = &on_request {
                            cb(cmd);
                        }
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "undecodable frame from server; closing");
                        break;
                    }
                }
            }
            c.store(true, Ordering::Release);
            // Fail every waiting request at once instead of letting each time out.
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        let tasks = Arc::new(Mutex::new(vec![writer.abort_handle(), reader.abort_handle()]));
        RemotingClient { addr: addr.to_string(), tx, pending, next_opaque: Arc::new(AtomicI32::new(1)), closed, tasks }
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Closes the connection now (both directions); requests waiting on it fail with [`NetError::Closed`].
    /// Used after a request timed out: the connection may be stuck behind TCP retransmission backoff (a
    /// partition that dropped packets), and a fresh connection recovers as soon as the network does.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// True when both handles are clones of one connection.
    pub fn same_connection(&self, other: &RemotingClient) -> bool {
        Arc::ptr_eq(&self.closed, &other.closed)
    }

    /// True once the connection failed or closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    fn opaque(&self) -> i32 {
        self.next_opaque.fetch_add(1, Ordering::Relaxed) & i32::MAX
    }

    /// Sends a request and waits for its response.
    pub async fn invoke(&self, mut cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand, NetError> {
        if self.is_closed() {
            return Err(NetError::Closed);
        }
        cmd.opaque = self.opaque();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(cmd.opaque, tx);
        let opaque = cmd.opaque;
        let result = tokio::time::timeout(timeout, async {
            self.tx.send(cmd.into()).await.map_err(|_| NetError::Closed)?;
            rx.await.map_err(|_| NetError::Closed)
        })
        .await;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&opaque);
        result.map_err(|_| NetError::Timeout(timeout))?
    }

    /// Sends a oneway request (no response).
    pub async fn invoke_oneway(&self, mut cmd: RemotingCommand) -> Result<(), NetError> {
        cmd.opaque = self.opaque();
        cmd = cmd.mark_oneway();
        self.tx.send(cmd.into()).await.map_err(|_| NetError::Closed)
    }
}
