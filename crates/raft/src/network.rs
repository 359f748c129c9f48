//! Raft RPCs over plain TCP, on their own port, plus the small control RPCs that leader transfer needs on
//! openraft 0.9 (which has no transfer API) and the pre-vote ([`crate::prevote`]).
//!
//! # Wire format
//! ```text
//! frame := len u32 (little-endian, counts kind + body) | kind u8 | body (bincode 1)
//! kind  := 1 AppendEntries | 2 Vote | 3 InstallSnapshot | 4 Control
//! ```
//! A length of 0 or above [`FRAME_BYTES_MAX`] is rejected before anything is allocated, on both sides. A response
//! carries the request's kind and its body is `Result<Response, RaftError<..>>` (control: `Result<ControlResponse,
//! String>`). Message bytes inside entries serialize as blobs (`Bytes`); snapshot chunks are written and read as
//! blobs too (same bytes on the wire as openraft's own derive, without the per-byte cost).
//!
//! # Client ([`TcpNetworkFactory`], [`TcpNetwork`])
//! One lazily opened connection per [`TcpNetwork`]. openraft drops an RPC future when its timeout fires, so the
//! connection is taken out of the client for the duration of a call and put back only after a complete round trip:
//! a half-written or half-read connection is dropped with the future and never carries the next RPC. Connect
//! failures map to `RPCError::Unreachable` (openraft then backs off), IO and codec failures during a call to
//! `RPCError::Network`, a remote `Err(RaftError)` to `RPCError::RemoteError`, and an AppendEntries batch whose frame
//! would exceed the limit to `RPCError::PayloadTooLarge` (openraft retries at once with fewer entries).
//!
//! openraft 0.9 drops every AppendEntries after one heartbeat interval, whatever it carries, and sends it again;
//! a large entry on a real link would time out forever. So an AppendEntries with entries runs as a [`Transfer`]
//! in a task of its own, with a deadline that grows with the frame ([`append_timeout`]); a re-sent request of the
//! same leader from the same log position waits for it (and gets its answer, [`answer_for`]) instead of sending
//! the bytes again, and first sends the follower the request without its entries, so that the follower keeps
//! hearing from its leader. Heartbeats (no entries) never wait behind a transfer.
//!
//! # Authentication
//! With a cluster secret ([`RaftAuth`]), every connection, the control RPCs' included, starts with the mutual
//! handshake of [`crate::handshake`] in [`connect`] and in the server's connection task; the server reads no
//! frame before it succeeds. Without one, connections are open (as before the secret existed). A client whose
//! handshake fails reports the peer `Unreachable` (openraft backs off); failures are logged at most once per
//! [`crate::handshake::AUTH_FAILURE_LOG_INTERVAL`] on each side.
//!
//! # Server ([`RaftServer`])
//! One task per accepted connection, requests handled in order; a malformed frame, an unknown kind or an IO error
//! closes only that connection. Raft requests go to a [`RaftRpcHandler`] (implemented by [`Raft`]), control
//! requests to a [`ControlHandler`] (for a Raft node: [`RaftControl`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Infallible, InstallSnapshotError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::handshake::{client_handshake, server_handshake, HandshakeError, LogLimiter, RaftAuth, HANDSHAKES_MAX, HANDSHAKE_TIMEOUT};

use crate::member::MemberAddr;
use crate::prevote::{PreVote, PreVoteRequest};
use crate::types::{LogId, Node, NodeId, Raft, TypeConfig};

/// Largest frame (kind byte + body) accepted or sent: 64 MiB.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// A frame body is read into a buffer growing from at most this size, so a peer announcing a large frame and
/// then stalling does not pin the full announced size.
const READ_PREALLOC_MAX: usize = 1 << 20;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// What a frame carries. A response has the kind of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// `AppendEntriesRequest` / `Result<AppendEntriesResponse, RaftError>`.
    AppendEntries = 1,
    /// `VoteRequest` / `Result<VoteResponse, RaftError>`.
    Vote = 2,
    /// `InstallSnapshotRequest` / `Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>`.
    InstallSnapshot = 3,
    /// [`ControlRequest`] / `Result<ControlResponse, String>`.
    Control = 4,
}

impl FrameKind {
    /// The kind with wire value `b`, if any.
    pub fn from_byte(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::AppendEntries),
            2 => Some(FrameKind::Vote),
            3 => Some(FrameKind::InstallSnapshot),
            4 => Some(FrameKind::Control),
            _ => None,
        }
    }
}

/// Transport errors (of this module's own calls; openraft sees them wrapped in `RPCError`).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Socket error, including a connection closed mid-frame.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// A frame is, or announces, more bytes than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Frame length (kind byte + body).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame announced a length of zero.
    #[error("empty frame")]
    EmptyFrame,
    /// The response's kind differs from the request's.
    #[error("response kind {got} does not match request kind {expected}")]
    KindMismatch {
        /// Request kind.
        expected: u8,
        /// Response kind.
        got: u8,
    },
    /// A body failed to serialize or deserialize, or a frame has an unknown kind.
    #[error("codec: {0}")]
    Decode(String),
    /// The peer's handler answered with an error.
    #[error("remote: {0}")]
    Remote(String),
    /// The call (or its connect) did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The cluster-secret handshake failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
}

fn codec_err(e: bincode::Error) -> NetworkError {
    NetworkError::Decode(e.to_string())
}

/// Encodes one frame. The body size is computed first, so an oversized body fails without allocating for it.
pub fn encode_frame<T: Serialize + ?Sized>(kind: FrameKind, body: &T) -> Result<Vec<u8>, NetworkError> {
    let len = bincode::serialized_size(body).map_err(codec_err)?.saturating_add(1);
    if len > FRAME_BYTES_MAX as u64 {
        return Err(NetworkError::FrameTooLarge { len, max: FRAME_BYTES_MAX as u64 });
    }
    // len <= 64 MiB: fits u32 and usize.
    let mut buf = Vec::with_capacity(4 + len as usize);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(kind as u8);
    bincode::serialize_into(&mut buf, body).map_err(codec_err)?;
    Ok(buf)
}

/// Reads one frame and returns its raw kind byte and body. The announced length is checked before any
/// allocation; a connection closed mid-frame is an [`NetworkError::Io`] of kind `UnexpectedEof`.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<(u8, Vec<u8>), NetworkError> {
    let len = r.read_u32_le().await?;
    if len == 0 {
        return Err(NetworkError::EmptyFrame);
    }
    if len as usize > FRAME_BYTES_MAX {
        return Err(NetworkError::FrameTooLarge { len: u64::from(len), max: FRAME_BYTES_MAX as u64 });
    }
    let kind = r.read_u8().await?;
    let body_len = len as usize - 1;
    let mut body = Vec::with_capacity(body_len.min(READ_PREALLOC_MAX));
    let got = AsyncReadExt::take(&mut *r, body_len as u64).read_to_end(&mut body).await?;
    if got != body_len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a frame body").into());
    }
    Ok((kind, body))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, NetworkError> {
    bincode::deserialize(body).map_err(codec_err)
}

/// Writes `frame` (a request of `kind`) and reads the matching response.
async fn exchange<S, Resp>(conn: &mut BufReader<S>, kind: FrameKind, frame: &[u8]) -> Result<Resp, NetworkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Resp: DeserializeOwned,
{
    conn.get_mut().write_all(frame).await?;
    let (got, body) = read_frame(conn).await?;
    if got != kind as u8 {
        return Err(NetworkError::KindMismatch { expected: kind as u8, got });
    }
    decode(&body)
}

/// Client-side handshake failures, logged at most once per [`crate::handshake::AUTH_FAILURE_LOG_INTERVAL`] per process.
static CLIENT_AUTH_LOG: LogLimiter = LogLimiter::new();

/// Connects to `addr` and, with `auth`, runs the handshake; both within `timeout`.
async fn connect(addr: &str, timeout: Duration, auth: Option<&RaftAuth>) -> Result<BufReader<TcpStream>, NetworkError> {
    let open = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        // A connection is dropped only after a complete exchange or to abandon one (openraft's timeout, a transfer
        // given up, a muted leader): a reset then discards what is still queued, so an abandoned AppendEntries
        // never reaches the follower late (where it would still count as word from its leader).
        stream.set_zero_linger()?;
        if let Some(auth) = auth {
            if let Err(e) = client_handshake(&mut stream, auth).await {
                if let Some(suppressed) = CLIENT_AUTH_LOG.allow() {
                    warn!(peer = addr, error = %e, suppressed, "raft handshake with a peer failed");
                }
                return Err(NetworkError::Handshake(e));
            }
        }
        Ok::<_, NetworkError>(BufReader::new(stream))
    };
    tokio::time::timeout(timeout, open).await.map_err(|_| NetworkError::Timeout)?
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshot chunks as blobs
// ---------------------------------------------------------------------------------------------------------------

/// `InstallSnapshotRequest` with `data` serialized as one blob: the same bincode bytes as openraft's derive
/// (fields in the same order; bincode writes `Vec<u8>` and bytes alike), encoded without a per-byte loop.
#[derive(Serialize)]
struct SnapshotChunkRef<'a> {
    vote: &'a Vote<NodeId>,
    meta: &'a SnapshotMeta<NodeId, Node>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    done: bool,
}

impl<'a> From<&'a InstallSnapshotRequest<TypeConfig>> for SnapshotChunkRef<'a> {
    fn from(r: &'a InstallSnapshotRequest<TypeConfig>) -> Self {
        SnapshotChunkRef { vote: &r.vote, meta: &r.meta, offset: r.offset, data: &r.data, done: r.done }
    }
}

/// Decoding side of [`SnapshotChunkRef`].
#[derive(Deserialize)]
struct SnapshotChunk {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, Node>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> Self {
        InstallSnapshotRequest { vote: c.vote, meta: c.meta, offset: c.offset, data: c.data, done: c.done }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Control RPCs
// ---------------------------------------------------------------------------------------------------------------

/// Control requests: the knobs leader transfer needs on openraft 0.9.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Switch this node's leader heartbeats on or off.
    SetHeartbeat(bool),
    /// Switch this node's election timer on or off (on also ends a [`ControlRequest::PauseElect`]).
    SetElect(bool),
    /// Make this node campaign now (works even with elections switched off).
    TriggerElect,
    /// Liveness and identity.
    Ping,
    /// Switch this node's election timer off for `ms` milliseconds (at most [`ELECTION_PAUSE_MS_MAX`]), after
    /// which it resumes by itself unless a later pause or `SetElect` superseded this one: a leader that dies
    /// or is cut off mid-transfer cannot leave the group without elections.
    PauseElect {
        /// Length of the pause.
        ms: u64,
    },
    /// Would this node vote for the candidate now ([`crate::prevote`])? Answered with
    /// [`ControlResponse::PreVote`]; changes nothing on the receiver. Refused like a Raft RPC while the
    /// receiver is cut off ([`Isolation`]).
    PreVote(PreVoteRequest),
}

/// Longest election pause a [`ControlRequest::PauseElect`] may ask for: 30 s (longer requests are cut to it).
pub const ELECTION_PAUSE_MS_MAX: u64 = 30_000;

/// `pause`, cut to [`ELECTION_PAUSE_MS_MAX`].
pub fn clamp_pause(pause: Duration) -> Duration {
    pause.min(Duration::from_millis(ELECTION_PAUSE_MS_MAX))
}

/// When this node last took part in a leader transfer (as the leader handing over, or as the target that was
/// told to campaign): leader transfers out of a node are at least the configured interval apart from it, so a
/// loop of transfers between nodes cannot fence writes most of the time.
#[derive(Debug, Default)]
pub struct TransferClock(std::sync::Mutex<Option<std::time::Instant>>);

impl TransferClock {
    /// Records a transfer now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// Time since the last recorded transfer, if any.
    pub fn since_last(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }
}

/// Control responses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ControlResponse {
    /// Done.
    Ok,
    /// Answer to [`ControlRequest::Ping`].
    Pong {
        /// The answering node's id.
        id: NodeId,
    },
    /// Answer to [`ControlRequest::PreVote`].
    PreVote {
        /// True when the node would grant the vote.
        granted: bool,
    },
}

/// A boxed, sendable future (the handler traits return these to stay object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Executes control requests on a node.
pub trait ControlHandler: Send + Sync + 'static {
    /// Handles one request; an `Err` is sent back to the caller as [`NetworkError::Remote`].
    fn handle(&self, req: ControlRequest) -> BoxFuture<'_, Result<ControlResponse, String>>;
}

/// The [`ControlHandler`] of a Raft node.
#[derive(Clone)]
pub struct RaftControl {
    raft: Raft,
    /// Bumped by every election switch: a pause's timer resumes elections only if it is still the latest.
    elect_gen: Arc<std::sync::atomic::AtomicU64>,
    transfers: Arc<TransferClock>,
    /// The node's pre-vote: its election timer is the one the election switches act on, and it answers
    /// [`ControlRequest::PreVote`]. `None`: openraft's own timer is switched, pre-votes are refused.
    pre_vote: Option<Arc<PreVote>>,
}

impl RaftControl {
    /// Controls `raft`.
    pub fn new(raft: Raft) -> Self {
        Self::with_clock(raft, Arc::default())
    }

    /// Controls `raft`, recording in `transfers` when this node is told to campaign by a transferring leader.
    pub fn with_clock(raft: Raft, transfers: Arc<TransferClock>) -> Self {
        RaftControl { raft, elect_gen: Arc::default(), transfers, pre_vote: None }
    }

    /// The same control, with elections driven by `pre_vote`'s timer (openraft's own timer is off).
    pub fn with_pre_vote(self, pre_vote: Arc<PreVote>) -> Self {
        RaftControl { pre_vote: Some(pre_vote), ..self }
    }

    /// Switches the election timer: the pre-vote's when there is one, else openraft's.
    fn switch_elect(&self, on: bool) {
        match &self.pre_vote {
            Some(p) => p.set_elect(on),
            None => self.raft.runtime_config().elect(on),
        }
    }

    /// Switches elections off for `pause` (at most [`ELECTION_PAUSE_MS_MAX`]); they resume afterwards unless
    /// superseded by a later switch.
    pub fn pause_elections(&self, pause: Duration) {
        let pause = clamp_pause(pause);
        let generation = self.elect_gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.switch_elect(false);
        let (control, gen_now) = (self.clone(), Arc::clone(&self.elect_gen));
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if gen_now.load(Ordering::Acquire) == generation {
                control.switch_elect(true);
                warn!(pause_ms = pause.as_millis() as u64, "election pause of a leader transfer expired; elections resumed");
            }
        });
    }

    fn set_elect(&self, on: bool) {
        self.elect_gen.fetch_add(1, Ordering::AcqRel);
        self.switch_elect(on);
    }
}

impl ControlHandler for RaftControl {
    fn handle(&self, req: ControlRequest) -> BoxFuture<'_, Result<ControlResponse, String>> {
        Box::pin(async move {
            match req {
                ControlRequest::SetHeartbeat(on) => self.raft.runtime_config().heartbeat(on),
                ControlRequest::SetElect(on) => self.set_elect(on),
                ControlRequest::PauseElect { ms } => self.pause_elections(Duration::from_millis(ms)),
                ControlRequest::TriggerElect => {
                    self.transfers.touch();
                    self.raft.trigger().elect().await.map_err(|e| e.to_string())?
                }
                ControlRequest::Ping => {
                    let id = self.raft.metrics().borrow().id;
                    return Ok(ControlResponse::Pong { id });
                }
                ControlRequest::PreVote(req) => {
                    let Some(p) = &self.pre_vote else { return Err("this node does not answer pre-votes".into()) };
                    return Ok(ControlResponse::PreVote { granted: p.answer(&req).await });
                }
            }
            Ok(ControlResponse::Ok)
        })
    }
}

/// Sends one control request to the Raft port at `addr` on a fresh connection (authenticated with `auth` when
/// given). `timeout` bounds the whole call, connect included ([`NetworkError::Timeout`]); a refused connect is
/// [`NetworkError::Io`], a failed handshake [`NetworkError::Handshake`], a handler error [`NetworkError::Remote`].
pub async fn control_call(
    addr: &str,
    req: ControlRequest,
    timeout: Duration,
    auth: Option<&RaftAuth>,
) -> Result<ControlResponse, NetworkError> {
    let frame = encode_frame(FrameKind::Control, &req)?;
    let call = async {
        let mut conn = connect(addr, timeout, auth).await?;
        exchange::<_, Result<ControlResponse, String>>(&mut conn, FrameKind::Control, &frame).await?.map_err(NetworkError::Remote)
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| NetworkError::Timeout)?
}

// ---------------------------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------------------------

/// Fault injection: cuts a node's Raft traffic (both directions) while on. See the module docs. Also carries the
/// node's [`LinkWatch`], which the same clients and server share.
#[derive(Debug, Clone, Default)]
pub struct Isolation(Arc<AtomicBool>, Arc<LinkWatch>);

impl Isolation {
    /// Switches the partition on or off.
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Release);
    }

    /// True while the node is cut off.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The node's link switches and observations.
    pub fn link(&self) -> &Arc<LinkWatch> {
        &self.1
    }

    /// True while this node's outgoing Raft RPCs fail at once: cut off, or muted.
    fn sends_cut(&self) -> bool {
        self.is_on() || self.1.is_muted()
    }
}

/// What a node's transport observes, and the switch a stalled leader hands off with:
///
/// - **muted**: while on, every Raft RPC this node *sends* (AppendEntries, heartbeats, votes, snapshots) fails at
///   once and a running [`Transfer`] is dropped (its connection closed with a reset, so that nothing of it still
///   queued in the kernel reaches the follower); Raft RPCs it *receives* are served, and control RPCs pass both
///   ways. A leader that cannot replicate mutes itself so that its followers stop hearing from it and elect
///   another leader, whose first AppendEntries it still receives (see `RaftNode`'s stall hand-off).
/// - **leader commit**: the highest commit index an AppendEntries received from a leader carried, so a member
///   knows how far behind the leader it is ([`LinkWatch::leader_commit`]).
/// - **entries stalled** (fault injection for tests): AppendEntries requests carrying entries are held and never
///   delivered, while requests without entries (heartbeats, keep-alives) pass — a link too slow for the entries
///   but not for the small frames, as a throttled egress is.
#[derive(Debug, Default)]
pub struct LinkWatch {
    muted: AtomicBool,
    /// 1 + the highest leader commit index seen; 0: none seen.
    leader_commit: AtomicU64,
    entries_stalled: AtomicBool,
}

impl LinkWatch {
    /// Mutes or unmutes this node's outgoing Raft RPCs.
    pub fn set_muted(&self, on: bool) {
        self.muted.store(on, Ordering::Release);
    }

    /// True while muted.
    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Acquire)
    }

    /// The highest commit index a leader's AppendEntries told this node since it started, if any.
    pub fn leader_commit(&self) -> Option<u64> {
        self.leader_commit.load(Ordering::Acquire).checked_sub(1)
    }

    /// Records a leader's commit index (the highest one is kept: committed entries stay committed).
    fn note_leader_commit(&self, index: u64) {
        self.leader_commit.fetch_max(index.saturating_add(1), Ordering::AcqRel);
    }

    /// Fault injection for tests: holds every AppendEntries with entries this node sends while on.
    pub fn set_entries_stalled(&self, on: bool) {
        self.entries_stalled.store(on, Ordering::Release);
    }

    fn entries_stalled(&self) -> bool {
        self.entries_stalled.load(Ordering::Acquire)
    }
}

/// Creates one [`TcpNetwork`] per target; nothing is connected until the first RPC.
#[derive(Debug, Clone, Default)]
pub struct TcpNetworkFactory {
    isolation: Isolation,
    auth: Option<RaftAuth>,
}

impl TcpNetworkFactory {
    /// A factory whose clients fail every RPC while `isolation` is on.
    pub fn with_isolation(isolation: Isolation) -> Self {
        TcpNetworkFactory { isolation, auth: None }
    }

    /// The same factory, its clients authenticating every connection they open with `auth`.
    pub fn with_auth(self, auth: Option<RaftAuth>) -> Self {
        TcpNetworkFactory { auth, ..self }
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetworkFactory {
    type Network = TcpNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> TcpNetwork {
        TcpNetwork { isolation: self.isolation.clone(), auth: self.auth.clone(), ..TcpNetwork::new(target, node.clone()) }
    }
}

/// The client for one peer, holding at most one idle connection and at most one [`Transfer`].
pub struct TcpNetwork {
    target: NodeId,
    node: Node,
    /// Present only between calls, and only after a complete round trip.
    conn: Option<Conn>,
    /// The AppendEntries with entries that is (or was) in flight; see [`Transfer`].
    transfer: Option<Transfer>,
    isolation: Isolation,
    /// Proves this node on every connection it opens (reconnects and transfers included).
    auth: Option<RaftAuth>,
}

type Conn = BufReader<TcpStream>;

/// Why a round trip failed, split the way openraft wants it.
enum CallError {
    /// Could not connect: openraft backs off.
    Unreachable(NetworkError),
    /// Failed on an open connection.
    Network(NetworkError),
}

/// What a round trip of a Raft RPC brings back: the remote handler's result, or why there is none.
type Outcome<Resp, E> = Result<Result<Resp, RaftError<NodeId, E>>, CallError>;

/// What a [`Transfer`]'s task ends with: its outcome and, after a healthy exchange, the connection.
type TransferEnd = (Outcome<AppendEntriesResponse<NodeId>, Infallible>, Option<Conn>);

/// An AppendEntries request that carries entries, running in a task of its own so that it can outlive
/// openraft's timeout, which 0.9 fixes at the heartbeat interval whatever the payload. The task gives up
/// only after [`append_timeout`] for its frame size.
///
/// openraft re-sends the same entries at once after a timeout. A request from the same leader (`vote`)
/// continuing the log at the same point (`prev`) carries the same entries, or a prefix or an extension of
/// them (a leader never rewrites its own log), so it waits for this transfer instead of sending the bytes
/// again, and the transfer's answer is translated to it ([`answer_for`]). A leader that waits for a
/// transfer this way is like a leader that receives a delayed response: Raft does not depend on when an
/// acknowledgement arrives, only on what it acknowledges. (openraft records the re-sent request's send time
/// as the acknowledgement's time; in 0.9 that only feeds the `millis_since_quorum_ack` metric, which raftmq
/// does not use.)
struct Transfer {
    vote: Vote<NodeId>,
    prev: Option<LogId>,
    /// The last entry sent.
    last: Option<LogId>,
    /// The outcome and, after a healthy exchange, the connection for reuse.
    task: JoinHandle<TransferEnd>,
}

impl Transfer {
    /// True when the transfer carries (a prefix of) what `rpc` carries or more.
    fn serves(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        self.vote == rpc.vote && self.prev == rpc.prev_log_id
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // A replication stream that ends (leadership lost, member removed) or a superseded request stops here.
        self.task.abort();
    }
}

/// The slowest a peer is assumed to take in a frame, send it, and store it (network and the follower's
/// fdatasync together): 8 MiB/s. Sizes the timeout of an AppendEntries transfer ([`append_timeout`]).
pub const REPLICATION_BYTES_PER_SEC_MIN: u64 = 8 << 20;

/// How long an AppendEntries transfer of `frame_bytes` may take: openraft's timeout (the heartbeat interval)
/// plus the frame at [`REPLICATION_BYTES_PER_SEC_MIN`]. A 4 MiB frame gets the heartbeat + 0.5 s, a 64 MiB
/// frame (the largest, [`FRAME_BYTES_MAX`]) the heartbeat + 8 s.
pub fn append_timeout(rpc_timeout: Duration, frame_bytes: usize) -> Duration {
    let transfer = Duration::from_secs_f64(frame_bytes as f64 / REPLICATION_BYTES_PER_SEC_MIN as f64);
    rpc_timeout.saturating_add(transfer)
}

/// The answer to a request for entries up to `want`, given the answer to a transfer of the same leader's
/// entries from the same point up to `sent` ([`Transfer::serves`]).
fn answer_for(resp: AppendEntriesResponse<NodeId>, sent: Option<LogId>, want: Option<LogId>) -> AppendEntriesResponse<NodeId> {
    let matched = match resp {
        AppendEntriesResponse::Success => sent,
        AppendEntriesResponse::PartialSuccess(m) => m,
        // Conflict (on `prev`, which both share) and HigherVote hold for any request from this point.
        other => return other,
    };
    if matched >= want {
        AppendEntriesResponse::Success
    } else {
        AppendEntriesResponse::PartialSuccess(matched)
    }
}

/// One round trip on `conn`, or on a new connection to `addr` (connected within `connect_timeout`). The
/// connection comes back only after a complete, healthy exchange.
async fn round_trip_on<Resp: DeserializeOwned>(
    conn: Option<Conn>,
    addr: &str,
    kind: FrameKind,
    frame: &[u8],
    connect_timeout: Duration,
    auth: Option<&RaftAuth>,
) -> Result<(Resp, Conn), CallError> {
    let mut conn = match conn {
        Some(c) => c,
        None => connect(addr, connect_timeout, auth).await.map_err(CallError::Unreachable)?,
    };
    let resp = exchange(&mut conn, kind, frame).await.map_err(CallError::Network)?;
    Ok((resp, conn))
}

impl TcpNetwork {
    /// A client for node `target` at the Raft address in `node.addr` ([`MemberAddr`]); connects lazily.
    pub fn new(target: NodeId, node: Node) -> Self {
        TcpNetwork { target, node, conn: None, transfer: None, isolation: Isolation::default(), auth: None }
    }

    /// One round trip. The connection is out of `self` while in flight and comes back only when healthy, so a
    /// call dropped mid-flight (openraft's timeout) can never leave a half-used connection behind.
    async fn round_trip<Resp: DeserializeOwned>(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        connect_timeout: Duration,
    ) -> Result<Resp, CallError> {
        if self.isolation.sends_cut() {
            self.conn = None;
            let why = if self.isolation.is_on() {
                "raft traffic of this node is cut off (fault injection)"
            } else {
                "this node's raft sends are muted (a stalled leader handing off)"
            };
            return Err(CallError::Unreachable(io::Error::new(io::ErrorKind::NotConnected, why).into()));
        }
        let addr = MemberAddr::raft_of(&self.node.addr);
        let (resp, conn) = round_trip_on(self.conn.take(), addr, kind, frame, connect_timeout, self.auth.as_ref()).await?;
        self.conn = Some(conn);
        Ok(resp)
    }

    /// Maps a round trip's outcome to openraft's error type.
    fn rpc_result<Resp, E>(&self, outcome: Outcome<Resp, E>) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        match outcome {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))),
            Err(CallError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Network(e)) => Err(RPCError::Network(openraft::error::NetworkError::new(&e))),
        }
    }

    /// Sends an encoded request and maps the outcome to openraft's error type.
    async fn call<Resp, E>(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // Connect within the soft ttl: a black-holed peer then reports Unreachable (and gets backed off)
        // before openraft's hard timeout turns it into a plain Timeout.
        let outcome = self.round_trip::<Result<Resp, RaftError<NodeId, E>>>(kind, frame, option.soft_ttl()).await;
        self.rpc_result(outcome)
    }

    /// Starts a [`Transfer`] of `rpc` (encoded as `frame`) on the idle connection, if any.
    fn start_transfer(&mut self, rpc: &AppendEntriesRequest<TypeConfig>, frame: Vec<u8>, option: &RPCOption) {
        let conn = self.conn.take();
        let addr = MemberAddr::raft_of(&self.node.addr).to_string();
        let connect_timeout = option.soft_ttl();
        let deadline = append_timeout(option.hard_ttl(), frame.len());
        let auth = self.auth.clone();
        let link = Arc::clone(self.isolation.link());
        let task = tokio::spawn(async move {
            let call = async {
                while link.entries_stalled() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                round_trip_on::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(
                    conn,
                    &addr,
                    FrameKind::AppendEntries,
                    &frame,
                    connect_timeout,
                    auth.as_ref(),
                )
                .await
            };
            match tokio::time::timeout(deadline, call).await {
                Ok(Ok((resp, conn))) => (Ok(resp), Some(conn)),
                Ok(Err(e)) => (Err(e), None),
                Err(_) => (Err(CallError::Network(NetworkError::Timeout)), None),
            }
        });
        let last = rpc.entries.last().map(|e| e.log_id);
        self.transfer = Some(Transfer { vote: rpc.vote, prev: rpc.prev_log_id, last, task });
    }

    /// While a transfer is still running for a re-sent request: an AppendEntries without entries (the
    /// request's header) tells the follower that its leader is alive, as openraft's own heartbeats would if
    /// 0.9 did not hold them back while entries are due. A `Conflict` or `HigherVote` answer ends the transfer
    /// and is the answer; anything else leaves the decision to the transfer.
    async fn keep_alive(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<Option<AppendEntriesResponse<NodeId>>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let header = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            entries: Vec::new(),
        };
        let frame = encode_frame(FrameKind::AppendEntries, &header).map_err(local_encode_err)?;
        match self.call::<AppendEntriesResponse<NodeId>, Infallible>(FrameKind::AppendEntries, &frame, option).await {
            Ok(r @ (AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_))) => {
                self.transfer = None;
                Ok(Some(r))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                debug!(target = self.target, error = %e, "keep-alive during a transfer failed");
                Ok(None)
            }
        }
    }
}

fn local_encode_err<E: std::error::Error>(e: NetworkError) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(openraft::error::NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for TcpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if rpc.entries.is_empty() || self.isolation.sends_cut() {
            // A heartbeat: sent at once on its own connection, never queued behind a transfer. (An isolated or
            // muted node's calls all fail in `call`, transfers included: a running one is dropped here.)
            self.transfer = self.transfer.take().filter(|_| !self.isolation.sends_cut());
            let frame = encode_frame(FrameKind::AppendEntries, &rpc).map_err(local_encode_err)?;
            return self.call(FrameKind::AppendEntries, &frame, &option).await;
        }
        if self.transfer.as_ref().is_some_and(|t| !t.serves(&rpc)) {
            self.transfer = None;
        }
        match &self.transfer {
            Some(t) if !t.task.is_finished() => {
                if let Some(answer) = self.keep_alive(&rpc, &option).await? {
                    return Ok(answer);
                }
            }
            Some(_) => {}
            None => {
                let frame = match encode_frame(FrameKind::AppendEntries, &rpc) {
                    Ok(f) => f,
                    // Several entries: let openraft retry at once with half as many. A single oversized entry
                    // cannot be split; report it as a network error (retried on the next tick, not in a tight
                    // loop). The node's entry limit keeps every entry well inside a frame.
                    Err(e @ NetworkError::FrameTooLarge { .. }) if rpc.entries.len() > 1 => {
                        let hint = (rpc.entries.len() / 2) as u64;
                        return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint).with_source_error(&e)));
                    }
                    Err(e) => return Err(local_encode_err(e)),
                };
                self.start_transfer(&rpc, frame, &option);
            }
        }
        let Some(t) = self.transfer.as_mut() else {
            return Err(local_encode_err(NetworkError::Decode("no transfer in flight".into())));
        };
        // If openraft's timeout drops this future here, the transfer stays in `self` for the re-sent request.
        let joined = (&mut t.task).await;
        let sent = t.last;
        self.transfer = None;
        let (outcome, conn) = joined.unwrap_or_else(|e| (Err(CallError::Network(NetworkError::Io(io::Error::other(e.to_string())))), None));
        if self.conn.is_none() {
            self.conn = conn;
        }
        let resp = self.rpc_result(outcome)?;
        Ok(answer_for(resp, sent, rpc.entries.last().map(|e| e.log_id)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        let frame = encode_frame(FrameKind::InstallSnapshot, &SnapshotChunkRef::from(&rpc)).map_err(local_encode_err)?;
        self.call(FrameKind::InstallSnapshot, &frame, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let frame = encode_frame(FrameKind::Vote, &rpc).map_err(local_encode_err)?;
        self.call(FrameKind::Vote, &frame, &option).await
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------------------------

/// Receives the Raft RPCs a [`RaftServer`] decodes. Implemented by [`Raft`]; tests plug in stubs.
pub trait RaftRpcHandler: Send + Sync + 'static {
    /// Handles an AppendEntries request.
    fn append_entries(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>;
    /// Handles a Vote request.
    fn vote(&self, req: VoteRequest<NodeId>) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RaftError<NodeId>>>;
    /// Handles one snapshot chunk.
    fn install_snapshot(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>;
}

impl RaftRpcHandler for Raft {
    fn append_entries(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
        Box::pin(Raft::append_entries(self, req))
    }

    fn vote(&self, req: VoteRequest<NodeId>) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
        Box::pin(Raft::vote(self, req))
    }

    fn install_snapshot(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
        Box::pin(Raft::install_snapshot(self, req))
    }
}

/// Where a server sends decoded requests.
#[derive(Clone)]
struct Handlers {
    rpc: Arc<dyn RaftRpcHandler>,
    control: Arc<dyn ControlHandler>,
    isolation: Isolation,
    /// `None`: connections are not authenticated.
    auth: Option<Arc<ServerAuth>>,
}

/// The server side of the handshake: the node's proof, the bound on connections mid-handshake, how long one
/// may take, and the rate limit of the failure log.
struct ServerAuth {
    auth: RaftAuth,
    handshakes: Arc<Semaphore>,
    timeout: Duration,
    log: LogLimiter,
}

impl ServerAuth {
    fn new(auth: RaftAuth, timeout: Duration) -> Self {
        ServerAuth { auth, handshakes: Arc::new(Semaphore::new(HANDSHAKES_MAX)), timeout, log: LogLimiter::new() }
    }

    fn refused(&self, peer: SocketAddr, e: &NetworkError) {
        if let Some(suppressed) = self.log.allow() {
            warn!(%peer, error = %e, suppressed, "raft connection refused: handshake failed");
        }
    }
}

impl Handlers {
    /// Handles one request frame and returns the response frame. An error closes the connection.
    async fn dispatch(&self, kind: u8, body: Vec<u8>) -> Result<Vec<u8>, NetworkError> {
        let Some(kind) = FrameKind::from_byte(kind) else {
            return Err(NetworkError::Decode(format!("unknown frame kind {kind}")));
        };
        if kind != FrameKind::Control && self.isolation.is_on() {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "raft traffic of this node is cut off (fault injection)").into());
        }
        // Each arm frees the request frame before the handler runs: it may hold up to 64 MiB.
        match kind {
            FrameKind::AppendEntries => {
                let req: AppendEntriesRequest<TypeConfig> = decode(&body)?;
                drop(body);
                let commit = req.leader_commit.map(|c| c.index);
                let resp = self.rpc.append_entries(req).await;
                // Only a request Raft accepted (from the current leader) tells how far the group has committed.
                if let (Some(c), Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))) = (commit, &resp) {
                    self.isolation.link().note_leader_commit(c);
                }
                encode_frame(kind, &resp)
            }
            FrameKind::Vote => {
                let req = decode(&body)?;
                drop(body);
                encode_frame(kind, &self.rpc.vote(req).await)
            }
            FrameKind::InstallSnapshot => {
                let req: SnapshotChunk = decode(&body)?;
                drop(body);
                encode_frame(kind, &self.rpc.install_snapshot(req.into()).await)
            }
            FrameKind::Control => {
                let req: ControlRequest = decode(&body)?;
                drop(body);
                if matches!(req, ControlRequest::PreVote(_)) && self.isolation.is_on() {
                    return Err(
                        io::Error::new(io::ErrorKind::ConnectionAborted, "raft traffic of this node is cut off (fault injection)").into()
                    );
                }
                encode_frame(kind, &self.control.handle(req).await)
            }
        }
    }
}

/// The Raft RPC server of a node. [`RaftServer::shutdown`], [`RaftServer::stop`] or dropping it aborts the accept
/// loop and, with it, every connection task. Must be started inside a Tokio runtime.
pub struct RaftServer {
    accept: JoinHandle<()>,
    local_addr: Option<SocketAddr>,
}

impl RaftServer {
    /// Serves `raft`'s RPCs and the control RPCs (usually `Arc::new(RaftControl::new(raft.clone()))`) on
    /// `listener`.
    pub fn start(listener: TcpListener, raft: Raft, control: Arc<dyn ControlHandler>) -> RaftServer {
        Self::start_with(listener, Arc::new(raft), control, Isolation::default())
    }

    /// Serves RPCs on `listener` with arbitrary handlers; Raft requests are refused while `isolation` is on.
    pub fn start_with(
        listener: TcpListener,
        rpc: Arc<dyn RaftRpcHandler>,
        control: Arc<dyn ControlHandler>,
        isolation: Isolation,
    ) -> RaftServer {
        Self::start_authenticated(listener, rpc, control, isolation, None)
    }

    /// Like [`RaftServer::start_with`]; with `auth`, every connection must pass the cluster-secret handshake
    /// (within [`HANDSHAKE_TIMEOUT`]) before any frame is read.
    pub fn start_authenticated(
        listener: TcpListener,
        rpc: Arc<dyn RaftRpcHandler>,
        control: Arc<dyn ControlHandler>,
        isolation: Isolation,
        auth: Option<RaftAuth>,
    ) -> RaftServer {
        let auth = auth.map(|a| Arc::new(ServerAuth::new(a, HANDSHAKE_TIMEOUT)));
        Self::start_handlers(listener, Handlers { rpc, control, isolation, auth })
    }

    fn start_handlers(listener: TcpListener, handlers: Handlers) -> RaftServer {
        let local_addr = listener.local_addr().ok();
        let accept = tokio::spawn(accept_loop(listener, handlers));
        RaftServer { accept, local_addr }
    }

    /// The address the listener was bound to, if the OS reported it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stops serving: aborts the accept loop and all connections (asynchronously; see [`RaftServer::stop`]).
    pub fn shutdown(&self) {
        self.accept.abort();
    }

    /// Stops serving and waits until the accept loop is gone, so the listening port is closed on return.
    pub async fn stop(mut self) {
        self.accept.abort();
        // The loop never ends on its own: the only outcome is a cancellation (or a panic), both meaning "gone".
        let _ = (&mut self.accept).await;
    }
}

impl Drop for RaftServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, handlers: Handlers) {
    // Connection tasks live in this set, owned by this task: aborting the task drops the set, which aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = match &handlers.auth {
                        None => None,
                        Some(a) => match Arc::clone(&a.handshakes).try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                a.refused(peer, &HandshakeError::TooMany.into());
                                drop(stream);
                                continue;
                            }
                        },
                    };
                    conns.spawn(serve_connection(stream, peer, handlers.clone(), permit));
                }
                Err(e) => {
                    warn!(error = %e, "raft rpc accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!(error = %e, "raft rpc connection task panicked");
                    }
                }
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, handlers: Handlers, permit: Option<OwnedSemaphorePermit>) {
    if let Some(a) = &handlers.auth {
        let result = match tokio::time::timeout(a.timeout, server_handshake(&mut stream, &a.auth)).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout(a.timeout)),
        };
        drop(permit);
        match result {
            Ok(node) => debug!(%peer, node, "raft connection authenticated"),
            Err(e) => {
                a.refused(peer, &e.into());
                // Dropping the stream closes the connection: nothing of the peer's bytes is decoded.
                return;
            }
        }
    }
    match connection_loop(stream, &handlers).await {
        Ok(()) => debug!(%peer, "raft rpc connection closed by peer"),
        Err(NetworkError::Io(e)) => debug!(%peer, error = %e, "raft rpc connection closed on io error"),
        Err(e) => warn!(%peer, error = %e, "raft rpc connection closed: bad request"),
    }
}

/// Serves requests on one connection, one at a time, until the peer closes it or an error occurs.
async fn connection_loop(stream: TcpStream, handlers: &Handlers) -> Result<(), NetworkError> {
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    loop {
        // A clean close happens between frames; inside one it is an error.
        if conn.fill_buf().await?.is_empty() {
            return Ok(());
        }
        let (kind, body) = read_frame(&mut conn).await?;
        let resp = handlers.dispatch(kind, body).await?;
        conn.get_mut().write_all(&resp).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use bytes::Bytes;
    use openraft::error::Fatal;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::handshake::{HELLO_BYTES, REPLY_BYTES};
    use crate::types::{Command, Entry, Message, QueueAppend};

    /// Answers control requests without a Raft node.
    struct StubControl;

    impl ControlHandler for StubControl {
        fn handle(&self, req: ControlRequest) -> BoxFuture<'_, Result<ControlResponse, String>> {
            Box::pin(async move {
                match req {
                    ControlRequest::Ping => Ok(ControlResponse::Pong { id: 7 }),
                    ControlRequest::TriggerElect => Err("not now".to_string()),
                    ControlRequest::SetHeartbeat(_) | ControlRequest::SetElect(_) | ControlRequest::PauseElect { .. } => {
                        Ok(ControlResponse::Ok)
                    }
                    ControlRequest::PreVote(r) => Ok(ControlResponse::PreVote { granted: r.term > 5 }),
                }
            })
        }
    }

    /// Raft RPCs without a Raft node: votes echo the request (and stall when `last_log_id.index == 99`),
    /// snapshot chunks are recorded; appends with entries are recorded and succeed after `append_delay`,
    /// appends without entries are counted and answered with `heartbeat_reply` (by default a remote error).
    #[derive(Default)]
    struct StubRaft {
        chunks: Mutex<Vec<InstallSnapshotRequest<TypeConfig>>>,
        appends: Mutex<Vec<(Option<LogId>, Option<LogId>)>>,
        append_delay: Mutex<Duration>,
        heartbeats: Mutex<usize>,
        heartbeat_reply: Mutex<Option<AppendEntriesResponse<NodeId>>>,
    }

    impl StubRaft {
        /// (prev, last) of every append with entries received.
        fn appends(&self) -> Vec<(Option<LogId>, Option<LogId>)> {
            self.appends.lock().unwrap().clone()
        }

        fn heartbeats(&self) -> usize {
            *self.heartbeats.lock().unwrap()
        }
    }

    impl RaftRpcHandler for StubRaft {
        fn append_entries(
            &self,
            req: AppendEntriesRequest<TypeConfig>,
        ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
            Box::pin(async move {
                if req.entries.is_empty() {
                    *self.heartbeats.lock().unwrap() += 1;
                    return match &*self.heartbeat_reply.lock().unwrap() {
                        None => Err(RaftError::Fatal(Fatal::Stopped)),
                        Some(AppendEntriesResponse::Success) => Ok(AppendEntriesResponse::Success),
                        Some(AppendEntriesResponse::Conflict) => Ok(AppendEntriesResponse::Conflict),
                        Some(AppendEntriesResponse::PartialSuccess(m)) => Ok(AppendEntriesResponse::PartialSuccess(*m)),
                        Some(AppendEntriesResponse::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(*v)),
                    };
                }
                self.appends.lock().unwrap().push((req.prev_log_id, req.entries.last().map(|e| e.log_id)));
                let delay = *self.append_delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                Ok(AppendEntriesResponse::Success)
            })
        }

        fn vote(&self, req: VoteRequest<NodeId>) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
            Box::pin(async move {
                if req.last_log_id.map(|l| l.index) == Some(99) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Ok(VoteResponse::new(req.vote, req.last_log_id, true))
            })
        }

        fn install_snapshot(
            &self,
            req: InstallSnapshotRequest<TypeConfig>,
        ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
            Box::pin(async move {
                let vote = req.vote;
                self.chunks.lock().unwrap().push(req);
                Ok(InstallSnapshotResponse { vote })
            })
        }
    }

    async fn stub_server() -> (RaftServer, String, Arc<StubRaft>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stub = Arc::new(StubRaft::default());
        let server = RaftServer::start_with(listener, stub.clone(), Arc::new(StubControl), Isolation::default());
        (server, addr, stub)
    }

    async fn closed_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn vote_req(term: u64, last_index: u64) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, 2), Some(log_id(last_index)))
    }

    fn opt() -> RPCOption {
        RPCOption::new(Duration::from_secs(2))
    }

    fn produce_entry(index: u64, data: Bytes) -> Entry {
        let msg = Message { tags_code: 0, data, phys_offset: None };
        let cmd = Command::Produce(vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg] }]);
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(cmd) }
    }

    /// An AppendEntries of leader (1, 1) after `prev` with one 4 MiB produce entry per index in `indexes`: a
    /// transfer of such a frame may take the heartbeat interval + 0.5 s per entry.
    fn append_req(prev: Option<LogId>, indexes: std::ops::RangeInclusive<u64>) -> AppendEntriesRequest<TypeConfig> {
        let data = Bytes::from(vec![7u8; 4 << 20]);
        let entries = indexes.map(|i| produce_entry(i, data.clone())).collect();
        AppendEntriesRequest { vote: Vote::new_committed(1, 1), prev_log_id: prev, entries, leader_commit: None }
    }

    /// openraft 0.9's call: the heartbeat interval as the hard ttl, and the future dropped when it runs out.
    async fn append_as_openraft(
        net: &mut TcpNetwork,
        req: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Option<Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>>> {
        tokio::time::timeout(ttl, net.append_entries(req.clone(), RPCOption::new(ttl))).await.ok()
    }

    async fn client(addr: &str) -> TcpNetwork {
        TcpNetworkFactory::default().new_client(1, &Node::new(addr)).await
    }

    /// True once the peer has closed `s` (EOF or reset) within two seconds.
    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let req = vote_req(3, 4);
        let f = encode_frame(FrameKind::Vote, &req).unwrap();
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        assert_eq!(f[4], FrameKind::Vote as u8);
        let (kind, body) = read_frame(&mut &f[..]).await.unwrap();
        assert_eq!(FrameKind::from_byte(kind), Some(FrameKind::Vote));
        assert_eq!(decode::<VoteRequest<NodeId>>(&body).unwrap(), req);

        // Two frames back to back on one stream.
        let mut two = encode_frame(FrameKind::Control, &ControlRequest::SetElect(true)).unwrap();
        two.extend(encode_frame(FrameKind::Control, &Ok::<_, String>(ControlResponse::Pong { id: 3 })).unwrap());
        let mut r = &two[..];
        let (_, b1) = read_frame(&mut r).await.unwrap();
        let (_, b2) = read_frame(&mut r).await.unwrap();
        assert_eq!(decode::<ControlRequest>(&b1).unwrap(), ControlRequest::SetElect(true));
        assert_eq!(decode::<Result<ControlResponse, String>>(&b2).unwrap(), Ok(ControlResponse::Pong { id: 3 }));
        assert!(r.is_empty());

        // A frame cut short is an IO error, not a short body.
        assert!(matches!(read_frame(&mut &f[..f.len() - 1]).await, Err(NetworkError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn bad_lengths_are_rejected_before_allocating() {
        // Only the 4 length bytes exist: an error other than EOF proves nothing past the prefix was read.
        let over = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert!(
            matches!(read_frame(&mut &over[..]).await, Err(NetworkError::FrameTooLarge { len, .. }) if len == FRAME_BYTES_MAX as u64 + 1)
        );
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(read_frame(&mut &huge[..]).await, Err(NetworkError::FrameTooLarge { .. })));
        assert!(matches!(read_frame(&mut &[0u8, 0, 0, 0][..]).await, Err(NetworkError::EmptyFrame)));

        // Encoding side: the size check runs before the frame buffer exists (the zeroed blob is never touched).
        let blob = serde_bytes::ByteBuf::from(vec![0u8; FRAME_BYTES_MAX]);
        assert!(matches!(encode_frame(FrameKind::InstallSnapshot, &blob), Err(NetworkError::FrameTooLarge { .. })));
    }

    #[tokio::test]
    async fn snapshot_chunks_are_blobs_with_openraft_wire_bytes() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new(2, 1),
            meta: SnapshotMeta { last_log_id: Some(log_id(10)), snapshot_id: "s-10".into(), ..Default::default() },
            offset: 4096,
            data: (0..=255u8).cycle().take(10_000).collect(),
            done: true,
        };
        let ours = bincode::serialize(&SnapshotChunkRef::from(&req)).unwrap();
        assert_eq!(ours, bincode::serialize(&req).unwrap(), "same bytes as openraft's derive");
        let back: InstallSnapshotRequest<TypeConfig> = decode::<SnapshotChunk>(&ours).unwrap().into();
        assert_eq!(back, req);

        let (_server, addr, stub) = stub_server().await;
        let resp = client(&addr).await.install_snapshot(req.clone(), opt()).await.unwrap();
        assert_eq!(resp.vote, req.vote);
        assert_eq!(stub.chunks.lock().unwrap().as_slice(), &[req]);
    }

    #[tokio::test]
    async fn garbage_closes_its_connection_and_the_server_keeps_serving() {
        let (_server, addr, _) = stub_server().await;
        // A well-formed connection opened before the garbage arrives.
        let mut good = client(&addr).await;
        assert!(good.vote(vote_req(1, 1), opt()).await.unwrap().vote_granted);

        let garbage: [&[u8]; 4] = [
            &[5, 0, 0, 0, FrameKind::Control as u8, 0xde, 0xad, 0xbe, 0xef], // body does not decode
            &[1, 0, 0, 0, 9],                                                // unknown kind
            &[0, 0, 0, 0],                                                   // empty frame
            &[0xff, 0xff, 0xff, 0xff],                                       // oversized length
        ];
        for g in garbage {
            let mut bad = TcpStream::connect(&addr).await.unwrap();
            bad.write_all(g).await.unwrap();
            assert!(closed_by_peer(&mut bad).await, "server closes the connection after {g:?}");
        }

        // The earlier connection and new ones are still served.
        assert_eq!(good.vote(vote_req(2, 3), opt()).await.unwrap().vote, Vote::new(2, 2));
        assert_eq!(control_call(&addr, ControlRequest::Ping, Duration::from_secs(2), None).await.unwrap(), ControlResponse::Pong { id: 7 });
    }

    #[tokio::test]
    async fn control_call_round_trips() {
        let (server, addr, _) = stub_server().await;
        assert_eq!(server.local_addr().map(|a| a.to_string()), Some(addr.clone()));
        let t = Duration::from_secs(2);
        assert_eq!(control_call(&addr, ControlRequest::Ping, t, None).await.unwrap(), ControlResponse::Pong { id: 7 });
        assert_eq!(control_call(&addr, ControlRequest::SetHeartbeat(false), t, None).await.unwrap(), ControlResponse::Ok);
        assert_eq!(control_call(&addr, ControlRequest::SetElect(true), t, None).await.unwrap(), ControlResponse::Ok);
        assert!(matches!(control_call(&addr, ControlRequest::TriggerElect, t, None).await, Err(NetworkError::Remote(m)) if m == "not now"));
        // Nobody listening: refused at once.
        assert!(matches!(control_call(&closed_addr().await, ControlRequest::Ping, t, None).await, Err(NetworkError::Io(_))));
    }

    #[tokio::test]
    async fn isolation_cuts_raft_traffic_both_ways_but_not_control() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Isolation::default();
        let _server = RaftServer::start_with(listener, Arc::new(StubRaft::default()), Arc::new(StubControl), cut.clone());
        let mut net = client(&addr).await;
        assert!(net.vote(vote_req(1, 1), opt()).await.unwrap().vote_granted);
        cut.set(true);
        // Inbound: the server drops the request and the connection.
        assert!(matches!(net.vote(vote_req(2, 2), opt()).await, Err(RPCError::Network(_))));
        assert_eq!(control_call(&addr, ControlRequest::Ping, Duration::from_secs(2), None).await.unwrap(), ControlResponse::Pong { id: 7 });
        // A pre-vote is election traffic: cut like a Raft RPC although it travels as a control request.
        let pre_vote = |term| ControlRequest::PreVote(crate::prevote::PreVoteRequest { candidate: 2, term, last_log_id: None });
        assert!(control_call(&addr, pre_vote(6), Duration::from_secs(2), None).await.is_err());
        // Outbound: a client sharing the switch fails before connecting.
        let (_other, other_addr, _) = stub_server().await;
        let mut out = TcpNetworkFactory::with_isolation(cut.clone()).new_client(2, &Node::new(&other_addr)).await;
        assert!(matches!(out.vote(vote_req(1, 1), opt()).await, Err(RPCError::Unreachable(_))));
        cut.set(false);
        assert!(out.vote(vote_req(3, 3), opt()).await.unwrap().vote_granted);
        assert!(net.vote(vote_req(4, 4), opt()).await.unwrap().vote_granted);
        assert_eq!(
            control_call(&addr, pre_vote(6), Duration::from_secs(2), None).await.unwrap(),
            ControlResponse::PreVote { granted: true }
        );
        assert_eq!(
            control_call(&addr, pre_vote(5), Duration::from_secs(2), None).await.unwrap(),
            ControlResponse::PreVote { granted: false }
        );
    }

    #[tokio::test]
    async fn muting_stops_outbound_raft_rpcs_but_not_inbound_ones_nor_control() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = Isolation::default();
        let _server = RaftServer::start_with(listener, Arc::new(StubRaft::default()), Arc::new(StubControl), me.clone());
        let (_other, other_addr, peer) = stub_server().await;
        let mut out = TcpNetworkFactory::with_isolation(me.clone()).new_client(2, &Node::new(&other_addr)).await;
        me.link().set_muted(true);
        // Outbound: votes and appends (with entries or without) fail before anything is sent.
        assert!(matches!(out.vote(vote_req(1, 1), opt()).await, Err(RPCError::Unreachable(_))));
        let hb =
            AppendEntriesRequest::<TypeConfig> { vote: Vote::new_committed(1, 1), prev_log_id: None, leader_commit: None, entries: vec![] };
        assert!(matches!(out.append_entries(hb.clone(), opt()).await, Err(RPCError::Unreachable(_))));
        assert!(matches!(out.append_entries(append_req(None, 1..=1), opt()).await, Err(RPCError::Unreachable(_))));
        assert!(peer.appends().is_empty() && peer.heartbeats() == 0, "nothing reached the peer");
        // Inbound Raft RPCs and control calls are served.
        let mut inbound = client(&addr).await;
        assert!(inbound.vote(vote_req(2, 2), opt()).await.unwrap().vote_granted);
        assert_eq!(
            control_call(&other_addr, ControlRequest::Ping, Duration::from_secs(2), None).await.unwrap(),
            ControlResponse::Pong { id: 7 }
        );
        me.link().set_muted(false);
        assert!(out.vote(vote_req(3, 3), opt()).await.unwrap().vote_granted);
    }

    #[tokio::test]
    async fn a_member_learns_the_leaders_commit_from_accepted_appends_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let iso = Isolation::default();
        let stub = Arc::new(StubRaft::default());
        let _server = RaftServer::start_with(listener, stub.clone(), Arc::new(StubControl), iso.clone());
        let mut net = client(&addr).await;
        assert_eq!(iso.link().leader_commit(), None, "none heard yet");
        let hb = |commit: u64| AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: Some(log_id(commit)),
            entries: vec![],
        };
        // Refused (a remote error, or a higher vote: a stale leader's request): nothing learnt.
        assert!(net.append_entries(hb(9), opt()).await.is_err());
        *stub.heartbeat_reply.lock().unwrap() = Some(AppendEntriesResponse::HigherVote(Vote::new(5, 2)));
        net.append_entries(hb(9), opt()).await.unwrap();
        assert_eq!(iso.link().leader_commit(), None);
        *stub.heartbeat_reply.lock().unwrap() = Some(AppendEntriesResponse::Success);
        net.append_entries(hb(7), opt()).await.unwrap();
        assert_eq!(iso.link().leader_commit(), Some(7));
        // The highest is kept: a commit index never goes back.
        net.append_entries(hb(5), opt()).await.unwrap();
        assert_eq!(iso.link().leader_commit(), Some(7));
        net.append_entries(hb(0), opt()).await.unwrap();
        net.append_entries(hb(12), opt()).await.unwrap();
        assert_eq!(iso.link().leader_commit(), Some(12));
    }

    #[tokio::test]
    async fn unreachable_peer_fails_fast_with_unreachable() {
        let mut net = client(&closed_addr().await).await;
        let started = Instant::now();
        let r = net.vote(vote_req(1, 1), RPCOption::new(Duration::from_secs(5))).await;
        assert!(matches!(r, Err(RPCError::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(net.conn.is_none());
    }

    #[tokio::test]
    async fn healthy_connection_is_reused_and_remote_errors_keep_it() {
        let (_server, addr, _) = stub_server().await;
        let mut net = client(&addr).await;
        assert!(net.conn.is_none(), "connects lazily");
        let resp = net.vote(vote_req(4, 5), opt()).await.unwrap();
        assert_eq!((resp.vote, resp.last_log_id), (Vote::new(4, 2), Some(log_id(5))));
        let local = net.conn.as_ref().unwrap().get_ref().local_addr().unwrap();

        let req = AppendEntriesRequest { vote: Vote::new(4, 2), prev_log_id: None, entries: vec![], leader_commit: None };
        match net.append_entries(req, opt()).await {
            Err(RPCError::RemoteError(e)) => {
                assert_eq!(e.target, 1);
                assert_eq!(e.target_node, Some(Node::new(&addr)));
                assert!(matches!(e.source, RaftError::Fatal(Fatal::Stopped)));
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert_eq!(net.conn.as_ref().unwrap().get_ref().local_addr().unwrap(), local, "same connection");
    }

    #[tokio::test]
    async fn a_dropped_call_never_leaves_its_connection_for_the_next() {
        let (_server, addr, _) = stub_server().await;
        let mut net = client(&addr).await;
        net.vote(vote_req(1, 1), opt()).await.unwrap();
        // The server stalls on this one; the caller gives up (as openraft does on timeout) mid-call.
        assert!(tokio::time::timeout(Duration::from_millis(200), net.vote(vote_req(2, 99), opt())).await.is_err());
        assert!(net.conn.is_none(), "the half-used connection went with the dropped future");
        // On a fresh connection the next call gets its own answer, not the stale one.
        let resp = tokio::time::timeout(Duration::from_secs(2), net.vote(vote_req(3, 7), opt())).await.unwrap().unwrap();
        assert_eq!((resp.vote, resp.last_log_id), (Vote::new(3, 2), Some(log_id(7))));
    }

    #[tokio::test]
    async fn oversized_append_asks_for_fewer_entries_before_connecting() {
        // Zeroed blobs are only measured, never touched; nobody listens, so any connect would say Unreachable.
        let mut net = client(&closed_addr().await).await;
        let big = || Bytes::from(vec![0u8; 40 << 20]);
        let two = AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: vec![produce_entry(1, big()), produce_entry(2, big())],
            leader_commit: None,
        };
        match net.append_entries(two, opt()).await {
            Err(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 1),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        let one = AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: vec![produce_entry(1, Bytes::from(vec![0u8; FRAME_BYTES_MAX]))],
            leader_commit: None,
        };
        assert!(matches!(net.append_entries(one, opt()).await, Err(RPCError::Network(_))));
    }

    #[tokio::test]
    async fn stopping_the_server_closes_listener_and_connections() {
        let (server, addr, _) = stub_server().await;
        let mut net = client(&addr).await;
        net.vote(vote_req(1, 1), opt()).await.unwrap();
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        server.stop().await;
        assert!(TcpStream::connect(&addr).await.is_err(), "listener closed");
        assert!(closed_by_peer(&mut raw).await, "idle connection closed");
        assert!(matches!(net.vote(vote_req(2, 2), opt()).await, Err(RPCError::Network(_))));
    }

    #[test]
    fn append_timeout_grows_with_the_frame() {
        let hb = Duration::from_millis(100);
        assert_eq!(append_timeout(hb, 0), hb);
        assert_eq!(append_timeout(hb, 4 << 20), Duration::from_millis(600));
        assert_eq!(append_timeout(hb, FRAME_BYTES_MAX), Duration::from_millis(8100));
        assert!(append_timeout(hb, 1 << 20) < append_timeout(hb, (1 << 20) + 1));
        assert_eq!(append_timeout(Duration::MAX, 1), Duration::MAX);
    }

    #[test]
    fn a_transfer_answer_is_translated_to_the_resent_request() {
        use AppendEntriesResponse::*;
        let (two, three) = (Some(log_id(2)), Some(log_id(3)));
        assert_eq!(answer_for(Success, two, two), Success);
        assert_eq!(answer_for(Success, three, two), Success, "the transfer stored more than asked");
        assert_eq!(answer_for(Success, two, three), PartialSuccess(two), "the follower has up to 2 only");
        assert_eq!(answer_for(PartialSuccess(Some(log_id(1))), three, three), PartialSuccess(Some(log_id(1))));
        assert_eq!(answer_for(PartialSuccess(three), three, two), Success);
        assert_eq!(answer_for(Conflict, two, three), Conflict);
        assert_eq!(answer_for(HigherVote(Vote::new(5, 2)), two, three), HigherVote(Vote::new(5, 2)));
    }

    #[tokio::test]
    async fn a_transfer_outlives_openraft_timeout_and_answers_the_resent_request() {
        let (_server, addr, stub) = stub_server().await;
        // The follower needs four heartbeat intervals to take the entries in (within their transfer timeout).
        *stub.append_delay.lock().unwrap() = Duration::from_millis(400);
        *stub.heartbeat_reply.lock().unwrap() = Some(AppendEntriesResponse::Success);
        let mut net = client(&addr).await;
        let req = append_req(None, 1..=2);
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            assert!(attempts <= 50, "no answer after {attempts} attempts: every attempt timed out");
            if let Some(r) = append_as_openraft(&mut net, &req, Duration::from_millis(100)).await {
                break r;
            }
        };
        assert_eq!(resp.unwrap(), AppendEntriesResponse::Success);
        assert!(attempts > 1, "answered within one heartbeat interval: the test proves nothing");
        assert_eq!(stub.appends(), vec![(None, Some(log_id(2)))], "the entries were sent once");
        assert!(stub.heartbeats() >= 1, "re-sent requests told the follower its leader is alive");
        assert!(net.transfer.is_none() && net.conn.is_some(), "the connection is reused after the transfer");
    }

    #[tokio::test]
    async fn a_resent_request_for_more_entries_learns_what_the_transfer_stored() {
        let (_server, addr, stub) = stub_server().await;
        *stub.append_delay.lock().unwrap() = Duration::from_millis(300);
        let mut net = client(&addr).await;
        assert!(append_as_openraft(&mut net, &append_req(None, 1..=2), Duration::from_millis(50)).await.is_none());
        // openraft re-sends from the same point with a new entry appended meanwhile.
        let resp = append_as_openraft(&mut net, &append_req(None, 1..=3), Duration::from_secs(5)).await.expect("answered");
        assert_eq!(resp.unwrap(), AppendEntriesResponse::PartialSuccess(Some(log_id(2))));
        // A request from another point is a transfer of its own.
        let resp = append_as_openraft(&mut net, &append_req(Some(log_id(2)), 3..=3), Duration::from_secs(5)).await.expect("answered");
        assert_eq!(resp.unwrap(), AppendEntriesResponse::Success);
        assert_eq!(stub.appends(), vec![(None, Some(log_id(2))), (Some(log_id(2)), Some(log_id(3)))]);
    }

    #[tokio::test]
    async fn a_conflict_on_the_keep_alive_ends_the_transfer() {
        let (_server, addr, stub) = stub_server().await;
        *stub.append_delay.lock().unwrap() = Duration::from_secs(30);
        *stub.heartbeat_reply.lock().unwrap() = Some(AppendEntriesResponse::Conflict);
        let mut net = client(&addr).await;
        let req = append_req(Some(log_id(5)), 6..=6);
        assert!(append_as_openraft(&mut net, &req, Duration::from_millis(100)).await.is_none());
        let resp = append_as_openraft(&mut net, &req, Duration::from_secs(5)).await.expect("answered by the keep-alive");
        assert_eq!(resp.unwrap(), AppendEntriesResponse::Conflict);
        assert!(net.transfer.is_none(), "the transfer was dropped");
    }

    #[tokio::test]
    async fn heartbeats_are_not_held_behind_a_transfer() {
        let (_server, addr, stub) = stub_server().await;
        *stub.append_delay.lock().unwrap() = Duration::from_secs(30);
        *stub.heartbeat_reply.lock().unwrap() = Some(AppendEntriesResponse::Success);
        let mut net = client(&addr).await;
        assert!(append_as_openraft(&mut net, &append_req(None, 1..=1), Duration::from_millis(100)).await.is_none());
        let mut heartbeat = append_req(None, 1..=1);
        heartbeat.entries.clear();
        let resp = append_as_openraft(&mut net, &heartbeat, Duration::from_secs(5)).await.expect("heartbeat answered");
        assert_eq!(resp.unwrap(), AppendEntriesResponse::Success);
        assert!(net.transfer.is_some(), "the transfer is still running");
        assert_eq!(stub.heartbeats(), 1);
    }

    // --- cluster-secret handshake -----------------------------------------------------------------------

    const SECRET: &str = "raft-port-test-secret-0123456789";
    const OTHER: &str = "some-other-secret-9876543210-xyz";

    fn raft_auth(secret: &str, id: NodeId) -> RaftAuth {
        RaftAuth::new(raftmq_remoting::cluster_auth::ClusterSecrets::parse(secret).unwrap(), id)
    }

    /// A stub server whose connections must pass the handshake within `timeout`.
    async fn auth_server(timeout: Duration) -> (RaftServer, String, Arc<StubRaft>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stub = Arc::new(StubRaft::default());
        let auth = Some(Arc::new(ServerAuth::new(raft_auth(SECRET, 1), timeout)));
        let handlers = Handlers { rpc: stub.clone(), control: Arc::new(StubControl), isolation: Isolation::default(), auth };
        (RaftServer::start_handlers(listener, handlers), addr, stub)
    }

    async fn auth_client(addr: &str, secret: &str) -> TcpNetwork {
        TcpNetworkFactory::default().with_auth(Some(raft_auth(secret, 2))).new_client(1, &Node::new(addr)).await
    }

    /// Reads until the peer closes `s` (within `within`); returns the bytes read before, or `None` if it
    /// stayed open.
    async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<usize> {
        let mut buf = [0u8; 256];
        let mut n = 0;
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(n),
                Ok(Ok(k)) => n += k,
                Err(_) => return None,
            }
        }
    }

    fn one_entry_append() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![produce_entry(1, Bytes::from_static(b"m"))],
        }
    }

    #[tokio::test]
    async fn authenticated_peers_exchange_rpcs_on_every_connection_path() {
        let (_server, addr, stub) = auth_server(HANDSHAKE_TIMEOUT).await;
        let mut net = auth_client(&addr, SECRET).await;
        assert!(net.vote(vote_req(1, 1), opt()).await.unwrap().vote_granted);
        // A reconnect (the idle connection gone) authenticates again.
        net.conn = None;
        assert!(net.vote(vote_req(2, 1), opt()).await.unwrap().vote_granted);
        // Entries go through a transfer task on a connection of its own.
        net.conn = None;
        assert_eq!(net.append_entries(one_entry_append(), opt()).await.unwrap(), AppendEntriesResponse::Success);
        assert_eq!(stub.appends().len(), 1);
        // Control calls too.
        let t = Duration::from_secs(2);
        let auth = raft_auth(SECRET, 2);
        assert_eq!(control_call(&addr, ControlRequest::Ping, t, Some(&auth)).await.unwrap(), ControlResponse::Pong { id: 7 });
        // A client in the middle of a rotation (signing with the shared secret, also accepting a new one).
        let rolling = raft_auth(&format!("{SECRET}\n{OTHER}"), 3);
        assert_eq!(control_call(&addr, ControlRequest::Ping, t, Some(&rolling)).await.unwrap(), ControlResponse::Pong { id: 7 });
    }

    #[tokio::test]
    async fn unauthenticated_connections_are_closed_before_any_rpc_is_decoded() {
        let (_server, addr, stub) = auth_server(Duration::from_millis(500)).await;
        let t = Duration::from_secs(2);
        // Wrong secret: refused, and the client says so.
        let wrong = raft_auth(OTHER, 9);
        let e = control_call(&addr, ControlRequest::SetElect(false), t, Some(&wrong)).await.unwrap_err();
        assert!(matches!(e, NetworkError::Handshake(HandshakeError::Refused)), "{e:?}");
        assert!(net_err(auth_client(&addr, OTHER).await.append_entries(one_entry_append(), opt()).await));
        // No handshake at all: a client without a secret sends a valid AppendEntries frame at once.
        assert!(net_err(client(&addr).await.append_entries(one_entry_append(), opt()).await));
        let frame = encode_frame(FrameKind::AppendEntries, &one_entry_append()).unwrap();
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&frame).await.unwrap();
        assert_eq!(read_until_closed(&mut raw, t).await, Some(HELLO_BYTES + REPLY_BYTES), "hello, refusal, close");
        // Garbage, and a truncated proof followed by silence (closed at the handshake timeout).
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&[0xEE; 200]).await.unwrap();
        assert!(read_until_closed(&mut raw, t).await.is_some());
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&[1; 10]).await.unwrap();
        let started = Instant::now();
        assert_eq!(read_until_closed(&mut raw, t).await, Some(HELLO_BYTES));
        assert!(started.elapsed() >= Duration::from_millis(450), "closed at the timeout, not before: {:?}", started.elapsed());
        // Nothing reached the handler, and the server still serves an authenticated peer.
        assert!(stub.appends().is_empty());
        let auth = raft_auth(SECRET, 2);
        assert_eq!(control_call(&addr, ControlRequest::Ping, t, Some(&auth)).await.unwrap(), ControlResponse::Pong { id: 7 });
        // A client with a secret facing an open server: the server's answer is no hello.
        let (_open, open_addr, _) = stub_server().await;
        let e = control_call(&open_addr, ControlRequest::Ping, t, Some(&auth)).await.unwrap_err();
        assert!(matches!(e, NetworkError::Timeout | NetworkError::Handshake(_)), "{e:?}");
    }

    fn net_err<T: std::fmt::Debug, E: std::error::Error>(r: Result<T, RPCError<NodeId, Node, E>>) -> bool {
        matches!(r, Err(RPCError::Unreachable(_)) | Err(RPCError::Network(_)))
    }

    #[test]
    fn an_election_pause_is_cut_to_its_limit() {
        let max = Duration::from_millis(ELECTION_PAUSE_MS_MAX);
        assert_eq!(clamp_pause(max), max);
        assert_eq!(clamp_pause(max + Duration::from_millis(1)), max);
        assert_eq!(clamp_pause(Duration::from_millis(1900)), Duration::from_millis(1900));
    }

    #[tokio::test]
    async fn connections_beyond_the_handshake_limit_are_closed_at_once() {
        let (_server, addr, _) = auth_server(Duration::from_millis(1500)).await;
        let mut silent = Vec::new();
        for _ in 0..HANDSHAKES_MAX {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let mut hello = [0u8; HELLO_BYTES];
            s.read_exact(&mut hello).await.unwrap();
            silent.push(s);
        }
        // One more: no hello, closed at once.
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(read_until_closed(&mut extra, Duration::from_secs(1)).await, Some(0));
        // Once the silent ones time out, authenticated peers get in again.
        for s in &mut silent {
            assert!(read_until_closed(s, Duration::from_secs(3)).await.is_some());
        }
        let auth = raft_auth(SECRET, 2);
        let pong = control_call(&addr, ControlRequest::Ping, Duration::from_secs(2), Some(&auth)).await.unwrap();
        assert_eq!(pong, ControlResponse::Pong { id: 7 });
    }
}
