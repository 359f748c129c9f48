//! The remoting server: one reader and one writer task per connection; each request runs in its own
//! task and its response is queued to the writer. Oneway requests get no response. A frame that cannot be
//! decoded closes that connection only.
//!
//! Every resource a peer can make the server hold is bounded ([`ServerOptions`]):
//! - connections: past `connections_max` a new connection is accepted and closed at once (counted; logged
//!   at warn once per burst), existing ones unaffected;
//! - requests in flight (received, response not yet queued): at most `conn_inflight_requests_max` and
//!   `conn_inflight_bytes_max` frame bytes per connection, and `server_inflight_bytes_max` frame bytes over
//!   all connections. Past a cap the server stops reading that connection (TCP backpressure) until responses
//!   drain; nothing is dropped;
//! - idleness: a connection with no frame received and no request in flight for `conn_idle_ms_max` is
//!   closed (RocketMQ's `serverChannelMaxIdleTimeSeconds`, 120 s; clients heartbeat every 30 s);
//! - a partial frame's read buffer grows with the bytes that arrive (`raftmq-remoting`'s decoder), so an
//!   announced length costs nothing until its bytes come;
//! - TLS ([`crate::tls`]): the first byte of a connection picks TLS or plain as the mode allows; handshakes
//!   in flight (`tls.handshakes_inflight_max`, past it a connection is closed at once) and their duration
//!   (`tls.handshake_timeout_ms`) are bounded, and TLS connections count against every limit above. The
//!   plain path reads and writes the socket halves directly, as without TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use raftmq_remoting::frame::{RemotingCodec, RemotingCommand};
use raftmq_remoting::RemotingError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use crate::tls::{ServerTls, ServerTlsOptions, TlsMode, TLS_HANDSHAKE_FIRST_BYTE};
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

/// Default [`ServerOptions::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Default [`ServerOptions::conn_inflight_requests_max`].
pub const CONN_INFLIGHT_REQUESTS_MAX_DEFAULT: usize = 1024;
/// Default [`ServerOptions::conn_inflight_bytes_max`]: four maximal frames.
pub const CONN_INFLIGHT_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default [`ServerOptions::server_inflight_bytes_max`].
pub const SERVER_INFLIGHT_BYTES_MAX_DEFAULT: usize = 512 << 20;
/// Default [`ServerOptions::conn_idle_ms_max`]: RocketMQ's `serverChannelMaxIdleTimeSeconds` (120 s).
pub const CONN_IDLE_MS_MAX_DEFAULT: u64 = 120_000;

/// Server limits. [`ServerOptions::validate`] states the rules between them; [`RemotingServer::bind`]
/// refuses options that break one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest frame accepted or sent, length prefix included.
    pub frame_bytes_max: usize,
    /// Open connections; one more is accepted and closed at once.
    pub connections_max: usize,
    /// Requests of one connection received and not yet answered; past it the connection is not read.
    pub conn_inflight_requests_max: usize,
    /// Frame bytes of one connection's requests received and not yet answered; past it the connection is
    /// not read. At least `frame_bytes_max`, so a single frame always fits.
    pub conn_inflight_bytes_max: usize,
    /// Frame bytes of all connections' requests received and not yet answered; past it the connection whose
    /// frame would exceed it is not read. At least `conn_inflight_bytes_max`.
    pub server_inflight_bytes_max: usize,
    /// A connection that received no frame and had no request in flight for this long is closed.
    pub conn_idle_ms_max: u64,
    /// Frames queued for writing per connection.
    pub outbound_queue_max: usize,
    /// TLS mode, certificate files and handshake limits.
    pub tls: ServerTlsOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            frame_bytes_max: raftmq_remoting::FRAME_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            conn_inflight_requests_max: CONN_INFLIGHT_REQUESTS_MAX_DEFAULT,
            conn_inflight_bytes_max: CONN_INFLIGHT_BYTES_MAX_DEFAULT,
            server_inflight_bytes_max: SERVER_INFLIGHT_BYTES_MAX_DEFAULT,
            conn_idle_ms_max: CONN_IDLE_MS_MAX_DEFAULT,
            outbound_queue_max: 4096,
            tls: ServerTlsOptions::default(),
        }
    }
}

impl ServerOptions {
    /// Checks the rules between the limits.
    ///
    /// # Errors
    /// [`OptionsError`] naming the broken rule: every limit positive; `frame_bytes_max` at least
    /// 64 bytes and at most `u32::MAX`; `frame_bytes_max <= conn_inflight_bytes_max <=
    /// server_inflight_bytes_max` (otherwise one frame could wait for bytes that never free up);
    /// `server_inflight_bytes_max` within what a semaphore can count.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad = |why: String| Err(OptionsError(why));
        for (name, v) in [
            ("connections_max", self.connections_max),
            ("conn_inflight_requests_max", self.conn_inflight_requests_max),
            ("outbound_queue_max", self.outbound_queue_max),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.conn_idle_ms_max == 0 {
            return bad("conn_idle_ms_max must be positive".into());
        }
        if self.frame_bytes_max < 64 || self.frame_bytes_max > u32::MAX as usize {
            return bad(format!("frame_bytes_max {} must be within 64..={}", self.frame_bytes_max, u32::MAX));
        }
        if self.conn_inflight_bytes_max < self.frame_bytes_max {
            return bad(format!(
                "conn_inflight_bytes_max {} must be at least frame_bytes_max {}",
                self.conn_inflight_bytes_max, self.frame_bytes_max
            ));
        }
        if self.server_inflight_bytes_max < self.conn_inflight_bytes_max {
            return bad(format!(
                "server_inflight_bytes_max {} must be at least conn_inflight_bytes_max {}",
                self.server_inflight_bytes_max, self.conn_inflight_bytes_max
            ));
        }
        if self.server_inflight_bytes_max > Semaphore::MAX_PERMITS || self.conn_inflight_requests_max > Semaphore::MAX_PERMITS {
            return bad(format!("in-flight limits must be at most {}", Semaphore::MAX_PERMITS));
        }
        self.tls.validate().map_err(|e| OptionsError(e.to_string()))?;
        Ok(())
    }

    /// The idle limit as a duration.
    pub fn conn_idle_max(&self) -> Duration {
        Duration::from_millis(self.conn_idle_ms_max)
    }
}

/// Server limits that break a rule of [`ServerOptions::validate`]; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server options: {0}")]
pub struct OptionsError(pub String);

/// Counters and gauges of one server, readable while it runs (through [`RemotingServer::stats`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    connections_open: AtomicUsize,
    connections_accepted_total: AtomicU64,
    connections_refused_total: AtomicU64,
    connections_idle_closed_total: AtomicU64,
    reads_stalled_total: AtomicU64,
    inflight_bytes: AtomicUsize,
    tls_handshakes_total: AtomicU64,
    tls_handshake_failures_total: AtomicU64,
    tls_handshakes_refused_total: AtomicU64,
    tls_mode_refused_total: AtomicU64,
    tls_reloads_total: AtomicU64,
}

impl ServerStats {
    /// Connections being served now.
    pub fn connections_open(&self) -> usize {
        self.connections_open.load(Ordering::Acquire)
    }
    /// Connections accepted and served since start.
    pub fn connections_accepted_total(&self) -> u64 {
        self.connections_accepted_total.load(Ordering::Relaxed)
    }
    /// Connections closed on accept because `connections_max` were open.
    pub fn connections_refused_total(&self) -> u64 {
        self.connections_refused_total.load(Ordering::Relaxed)
    }
    /// Connections closed for idleness.
    pub fn connections_idle_closed_total(&self) -> u64 {
        self.connections_idle_closed_total.load(Ordering::Relaxed)
    }
    /// Times a connection's reading paused because a request or byte cap was reached.
    pub fn reads_stalled_total(&self) -> u64 {
        self.reads_stalled_total.load(Ordering::Relaxed)
    }
    /// Frame bytes of requests received and not yet answered, over all connections.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes.load(Ordering::Relaxed)
    }
    /// TLS handshakes completed.
    pub fn tls_handshakes_total(&self) -> u64 {
        self.tls_handshakes_total.load(Ordering::Relaxed)
    }
    /// TLS handshakes that failed or timed out.
    pub fn tls_handshake_failures_total(&self) -> u64 {
        self.tls_handshake_failures_total.load(Ordering::Relaxed)
    }
    /// TLS connections closed at once because `tls.handshakes_inflight_max` handshakes were running.
    pub fn tls_handshakes_refused_total(&self) -> u64 {
        self.tls_handshakes_refused_total.load(Ordering::Relaxed)
    }
    /// Connections closed because the mode does not serve them: TLS when disabled, plain when enforcing.
    pub fn tls_mode_refused_total(&self) -> u64 {
        self.tls_mode_refused_total.load(Ordering::Relaxed)
    }
    /// New TLS configurations installed after the certificate files changed.
    pub fn tls_reloads_total(&self) -> u64 {
        self.tls_reloads_total.load(Ordering::Relaxed)
    }
}

/// What every connection of one server shares.
struct Shared {
    opts: ServerOptions,
    stats: Arc<ServerStats>,
    inflight_bytes: Arc<Semaphore>,
    /// Present unless the mode is `disabled`.
    tls: Option<Arc<ServerTls>>,
    tls_handshakes: Arc<Semaphore>,
}

/// Counts a connection as open for as long as it lives.
struct OpenConn(Arc<Shared>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's share of its connection's and the server's in-flight budgets, released on drop.
struct Admission {
    _request: OwnedSemaphorePermit,
    _conn_bytes: OwnedSemaphorePermit,
    _server_bytes: OwnedSemaphorePermit,
    bytes: usize,
    stats: Arc<ServerStats>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.stats.inflight_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The remoting codec, also reporting each frame's size on the wire (what in-flight budgets count).
struct SizedCodec(RemotingCodec);

impl Decoder for SizedCodec {
    type Item = (RemotingCommand, usize);
    type Error = RemotingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, RemotingError> {
        let before = src.len();
        Ok(self.0.decode(src)?.map(|cmd| (cmd, before - src.len())))
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
    stats: Arc<ServerStats>,
    task: tokio::task::JoinHandle<()>,
}

impl RemotingServer {
    /// Binds `addr` and serves `handler`.
    ///
    /// # Errors
    /// `InvalidInput` for options that break a rule of [`ServerOptions::validate`]; TLS certificate files
    /// that do not load (`InvalidData`, or the read error's kind, the text naming the file); bind errors.
    pub async fn bind(addr: &str, handler: Arc<dyn RequestHandler>, opts: ServerOptions) -> std::io::Result<RemotingServer> {
        use std::io::{Error, ErrorKind};
        opts.validate().map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        let tls = match opts.tls.mode {
            TlsMode::Disabled => None,
            _ => Some(Arc::new(ServerTls::load(&opts.tls).map_err(|e| {
                let kind = match &e {
                    crate::tls::TlsError::Read { source, .. } => source.kind(),
                    _ => ErrorKind::InvalidData,
                };
                Error::new(kind, e)
            })?)),
        };
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let shared = Arc::new(Shared {
            inflight_bytes: Arc::new(Semaphore::new(opts.server_inflight_bytes_max)),
            tls_handshakes: Arc::new(Semaphore::new(opts.tls.handshakes_inflight_max)),
            tls,
            opts,
            stats: Arc::clone(&stats),
        });
        let task = tokio::spawn(accept_loop(listener, handler, shared));
        Ok(RemotingServer { local_addr, stats, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters and gauges of this server.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
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

async fn accept_loop(listener: TcpListener, handler: Arc<dyn RequestHandler>, shared: Arc<Shared>) {
    // Connection tasks live here: aborting the accept task drops the set and aborts them all.
    let mut conns = JoinSet::new();
    // While refusing: the refusal count when this burst began (one warning per burst, not per connection).
    let mut burst_began_at: Option<u64> = None;
    let stats = Arc::clone(&shared.stats);
    let reload_ms = shared.opts.tls.reload_interval_ms;
    let mut reload = (shared.tls.is_some() && reload_ms > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_millis(reload_ms));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut reload_error = None;
    loop {
        tokio::select! {
            _ = async { match reload.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                if let Some(tls) = shared.tls.as_ref() {
                    // Reading a few small files: done inline, the accept loop waits no longer than a disk read.
                    if tls.reload_logged(&mut reload_error) {
                        stats.tls_reloads_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = stats.connections_open();
                    if open >= shared.opts.connections_max {
                        let refused = stats.connections_refused_total.fetch_add(1, Ordering::Relaxed);
                        if burst_began_at.is_none() {
                            warn!(%peer, open, connections_max = shared.opts.connections_max, "connection limit reached; closing new connections until one ends");
                            burst_began_at = Some(refused);
                        }
                        drop(stream);
                        continue;
                    }
                    if let Some(began) = burst_began_at.take() {
                        info!(refused = stats.connections_refused_total() - began, "accepting connections again");
                    }
                    stats.connections_open.fetch_add(1, Ordering::AcqRel);
                    stats.connections_accepted_total.fetch_add(1, Ordering::Relaxed);
                    let open = OpenConn(Arc::clone(&shared));
                    conns.spawn(serve_conn(stream, peer, Arc::clone(&handler), open));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// What the first byte of a connection asks for.
enum Opening {
    Plain,
    Tls,
    /// Closed, idle or refused: nothing to serve.
    Nothing,
}

/// Waits for the first byte (without consuming it) and decides by the mode, as RocketMQ's `TlsModeHandler`.
async fn opening(stream: &TcpStream, peer: SocketAddr, shared: &Shared) -> Opening {
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(shared.opts.conn_idle_max(), stream.peek(&mut first)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection failed before its first byte");
            return Opening::Nothing;
        }
        Err(_) => {
            shared.stats.connections_idle_closed_total.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, idle_ms = shared.opts.conn_idle_ms_max, "closing a connection that sent nothing");
            return Opening::Nothing;
        }
    };
    if n == 0 {
        return Opening::Nothing;
    }
    let tls = first[0] == TLS_HANDSHAKE_FIRST_BYTE;
    match (shared.opts.tls.mode, tls) {
        (TlsMode::Disabled, false) | (TlsMode::Permissive, false) => Opening::Plain,
        (TlsMode::Permissive, true) | (TlsMode::Enforcing, true) => Opening::Tls,
        (mode, _) => {
            shared.stats.tls_mode_refused_total.fetch_add(1, Ordering::Relaxed);
            let what = if tls { "a TLS" } else { "a plain" };
            warn!(%peer, %mode, "closing {what} connection: the TLS mode does not serve it");
            Opening::Nothing
        }
    }
}

async fn serve_conn(stream: TcpStream, peer: SocketAddr, handler: Arc<dyn RequestHandler>, open: OpenConn) {
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(&open.0);
    match opening(&stream, peer, &shared).await {
        Opening::Nothing => {}
        Opening::Plain => {
            let (rd, wr) = stream.into_split();
            serve_frames(rd, wr, peer, handler, open).await;
        }
        Opening::Tls => {
            let Some(tls) = shared.tls.as_ref() else { return };
            let Ok(permit) = Arc::clone(&shared.tls_handshakes).try_acquire_owned() else {
                shared.stats.tls_handshakes_refused_total.fetch_add(1, Ordering::Relaxed);
                warn!(%peer, handshakes_inflight_max = shared.opts.tls.handshakes_inflight_max, "TLS handshake limit reached; closing the connection");
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let timeout = Duration::from_millis(shared.opts.tls.handshake_timeout_ms);
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    shared.stats.tls_handshake_failures_total.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, error = %e, "TLS handshake failed; closing the connection");
                    return;
                }
                Err(_) => {
                    shared.stats.tls_handshake_failures_total.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, timeout_ms = shared.opts.tls.handshake_timeout_ms, "TLS handshake timed out; closing the connection");
                    return;
                }
            };
            shared.stats.tls_handshakes_total.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let (rd, wr) = tokio::io::split(stream);
            serve_frames(rd, wr, peer, handler, open).await;
        }
    }
}

async fn serve_frames<R, W>(rd: R, mut wr: W, peer: SocketAddr, handler: Arc<dyn RequestHandler>, open: OpenConn)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&open.0);
    let opts = &shared.opts;
    let (tx, mut rx) = mpsc::channel::<Response>(opts.outbound_queue_max);
    let conn =
        Conn { inner: Arc::new(ConnInner { id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed), peer, tx, closed: AtomicBool::new(false) }) };
    let frame_max = opts.frame_bytes_max;
    let writer = tokio::spawn(async move {
        if let Err(e) = write_queued(&mut wr, &mut rx, frame_max).await {
            debug!(%peer, error = %e, "write failed; closing");
        }
    });
    let budget = ConnBudget {
        requests: Arc::new(Semaphore::new(opts.conn_inflight_requests_max)),
        bytes: Arc::new(Semaphore::new(opts.conn_inflight_bytes_max)),
        shared: Arc::clone(&shared),
    };
    let mut frames = FramedRead::new(rd, SizedCodec(RemotingCodec::with_frame_bytes_max(frame_max)));
    let mut tasks = JoinSet::new();
    let idle_max = opts.conn_idle_max();
    let mut idle_deadline = Instant::now() + idle_max;
    loop {
        let next = tokio::select! {
            f = frames.next() => f,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                // The connection was busy until this request finished.
                idle_deadline = Instant::now() + idle_max;
                continue;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                if tasks.is_empty() {
                    shared.stats.connections_idle_closed_total.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, idle_ms = opts.conn_idle_ms_max, "closing an idle connection");
                    break;
                }
                idle_deadline = Instant::now() + idle_max;
                continue;
            }
        };
        let (cmd, frame_bytes) = match next {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                warn!(%peer, error = %e, "undecodable frame; closing the connection");
                break;
            }
            None => break,
        };
        idle_deadline = Instant::now() + idle_max;
        if cmd.is_response() {
            // Answers to server-initiated requests; none of ours expects one yet.
            debug!(%peer, opaque = cmd.opaque, code = cmd.code, "ignoring a response frame from a client");
            continue;
        }
        // Not reading while over a cap is the backpressure: the peer's sends stall in TCP, nothing is dropped.
        let Some(admission) = budget.admit(frame_bytes, peer).await else { break };
        idle_deadline = Instant::now() + idle_max;
        let (h, c) = (Arc::clone(&handler), conn.clone());
        tasks.spawn(async move {
            let oneway = cmd.is_oneway();
            let opaque = cmd.opaque;
            let resp = h.handle(c.clone(), cmd).await;
            if let (Some(mut resp), false) = (resp, oneway) {
                resp.cmd.opaque = opaque;
                resp.cmd.flag |= raftmq_remoting::codes::flag::RESPONSE;
                if c.inner.tx.send(resp).await.is_err() {
                    debug!(peer = %c.peer(), "connection closed before the response was written");
                }
            }
            // Released once the response is queued: a peer that does not read its responses fills the
            // outbound queue, holds its budget and so stops being read.
            drop(admission);
        });
    }
    conn.inner.closed.store(true, Ordering::Release);
    handler.on_close(&conn);
    // Nobody reads answers any more: stop in-flight handlers, give the writer a moment to flush what is
    // queued, then stop it (a registry may still hold a `Conn` clone, which keeps the queue open).
    tasks.abort_all();
    drop(conn);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
        abort.abort();
    }
    drop(open);
}

/// One connection's in-flight budgets, and the server's.
struct ConnBudget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl ConnBudget {
    /// Takes one request and `frame_bytes` from the connection's budgets and the server's, waiting while any
    /// is exhausted. `None` only if a semaphore closed (never: they are not closed).
    async fn admit(&self, frame_bytes: usize, peer: SocketAddr) -> Option<Admission> {
        // `validate` guarantees frame_bytes <= frame_bytes_max <= conn_inflight_bytes_max <=
        // server_inflight_bytes_max <= u32::MAX, so a single frame always fits an empty budget.
        debug_assert!(frame_bytes <= self.shared.opts.frame_bytes_max);
        let n = u32::try_from(frame_bytes.min(self.shared.opts.conn_inflight_bytes_max)).ok()?;
        let mut stalled = false;
        let mut stall = |what: &'static str| {
            if !stalled {
                stalled = true;
                self.shared.stats.reads_stalled_total.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, cap = what, frame_bytes, "in-flight cap reached; pausing reads from this connection");
            }
        };
        let request = match Arc::clone(&self.requests).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stall("conn_inflight_requests_max");
                Arc::clone(&self.requests).acquire_owned().await.ok()?
            }
        };
        let conn_bytes = match Arc::clone(&self.bytes).try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                stall("conn_inflight_bytes_max");
                Arc::clone(&self.bytes).acquire_many_owned(n).await.ok()?
            }
        };
        let server = &self.shared.inflight_bytes;
        let server_bytes = match Arc::clone(server).try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                stall("server_inflight_bytes_max");
                Arc::clone(server).acquire_many_owned(n).await.ok()?
            }
        };
        let stats = Arc::clone(&self.shared.stats);
        stats.inflight_bytes.fetch_add(n as usize, Ordering::Relaxed);
        Some(Admission { _request: request, _conn_bytes: conn_bytes, _server_bytes: server_bytes, bytes: n as usize, stats })
    }
}
