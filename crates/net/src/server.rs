//! The remoting server: one reader and one writer task per connection; each request runs in its own
//! task, bounded per connection, and its response is queued to the writer. Oneway requests get no
//! response. A frame that cannot be decoded closes that connection only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use raftmq_remoting::frame::{RemotingCodec, RemotingCommand};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::{write_queued, Response};

/// Boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Option<Response>> + Send>>;

/// Processes requests. `None` means "no response" (oneway requests, or a request the handler answers
/// later through [`Conn::send`]).
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request from `conn`.
    fn handle(&self, conn: Conn, request: RemotingCommand) -> HandlerFuture;
    /// Called once when a connection closes.
    fn on_close(&self, _conn: &Conn) {}
}

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest frame accepted or sent.
    pub frame_bytes_max: usize,
    /// Requests of one connection being processed at once; more wait (back-pressure on that client).
    pub inflight_per_conn_max: usize,
    /// Frames queued for writing per connection.
    pub outbound_queue_max: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { frame_bytes_max: 16 << 20, inflight_per_conn_max: 1024, outbound_queue_max: 4096 }
    }
}

struct ConnInner {
    id: u64,
    peer: SocketAddr,
    tx: mpsc::Sender<Response>,
    closed: AtomicBool,
}

/// A client connection as request handlers see it. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnInner>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn#{}({})", self.inner.id, self.inner.peer)
    }
}

impl Conn {
    /// Connection id, unique within the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    /// True once the connection closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Queues a frame (e.g. a server-initiated oneway request) without waiting; false if the queue is full
    /// or the connection closed.
    pub fn send(&self, frame: Response) -> bool {
        !self.is_closed() && self.inner.tx.try_send(frame).is_ok()
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A running server. Dropping it stops accepting and closes every connection.
pub struct RemotingServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RemotingServer {
    /// Binds `addr` and serves `handler`.
    pub async fn bind(addr: &str, handler: Arc<dyn RequestHandler>, opts: ServerOptions) -> std::io::Result<RemotingServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler, opts));
        Ok(RemotingServer { local_addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and its connections.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for RemotingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, handler: Arc<dyn RequestHandler>, opts: ServerOptions) {
    // Connection tasks live here: aborting the accept task drops the set and aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_conn(stream, peer, Arc::clone(&handler), opts.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(stream: TcpStream, peer: SocketAddr, handler: Arc<dyn RequestHandler>, opts: ServerOptions) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Response>(opts.outbound_queue_max);
    let conn =
        Conn { inner: Arc::new(ConnInner { id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed), peer, tx, closed: AtomicBool::new(false) }) };
    let frame_max = opts.frame_bytes_max;
    let writer = tokio::spawn(async move {
        if let Err(e) = write_queued(&mut wr, &mut rx, frame_max).await {
            debug!(%peer, error = %e, "write failed; closing");
        }
    });
    let permits = Arc::new(Semaphore::new(opts.inflight_per_conn_max));
    let mut frames = FramedRead::new(rd, RemotingCodec::with_frame_bytes_max(frame_max));
    let mut tasks = JoinSet::new();
    loop {
        let next = tokio::select! {
            f = frames.next() => f,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let cmd = match next {
            Some(Ok(cmd)) => cmd,
            Some(Err(e)) => {
                warn!(%peer, error = %e, "undecodable frame; closing the connection");
                break;
            }
            None => break,
        };
        if cmd.is_response() {
            // Answers to server-initiated requests; none of ours expects one yet.
            debug!(%peer, opaque = cmd.opaque, code = cmd.code, "ignoring a response frame from a client");
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let (h, c) = (Arc::clone(&handler), conn.clone());
        tasks.spawn(async move {
            let oneway = cmd.is_oneway();
            let opaque = cmd.opaque;
            let resp = h.handle(c.clone(), cmd).await;
            drop(permit);
            if let (Some(mut resp), false) = (resp, oneway) {
                resp.cmd.opaque = opaque;
                resp.cmd.flag |= raftmq_remoting::codes::flag::RESPONSE;
                if c.inner.tx.send(resp).await.is_err() {
                    debug!(peer = %c.peer(), "connection closed before the response was written");
                }
            }
        });
    }
    conn.inner.closed.store(true, Ordering::Release);
    handler.on_close(&conn);
    // Nobody reads answers any more: stop in-flight handlers, give the writer a moment to flush what is
    // queued, then stop it (a registry may still hold a `Conn` clone, which keeps the queue open).
    tasks.abort_all();
    drop(conn);
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(2), writer).await.is_err() {
        abort.abort();
    }
}
