//! Raft RPCs over plain TCP on their own port, plus the small control RPCs leader transfer needs.
//!
//! Frame: `u32 length (little-endian, covers kind + body) | u8 kind | bincode body`; a length of 0 or
//! above [`FRAME_BYTES_MAX`] is rejected before anything is allocated. A response has the request's kind
//! and carries `Result<Response, Error>`. Message bytes inside entries serialize as blobs (`Bytes`).
//!
//! # Correctness
//! openraft drops an RPC future when its timeout fires. A connection is therefore taken out of the
//! client for the duration of a call and put back only after a complete round trip: a half-written or
//! half-read connection is dropped with the future and never carries the next RPC.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::types::{Node, NodeId, Raft, TypeConfig};

/// Largest frame accepted (snapshot chunks and 1 MiB replication batches fit with room to spare).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

const KIND_APPEND: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_CONTROL: u8 = 4;

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// A frame announced more bytes than allowed.
    #[error("frame of {len} bytes exceeds {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A frame announced zero bytes.
    #[error("empty frame")]
    EmptyFrame,
    /// The response kind does not match the request.
    #[error("response kind {got} does not match request kind {expected}")]
    KindMismatch {
        /// Request kind.
        expected: u8,
        /// Response kind.
        got: u8,
    },
    /// A body failed to (de)serialize.
    #[error("codec: {0}")]
    Codec(String),
    /// The peer answered with an error.
    #[error("remote: {0}")]
    Remote(String),
    /// The call did not finish in time.
    #[error("timed out")]
    Timeout,
}

/// Encodes one frame.
pub fn encode_frame<T: Serialize>(kind: u8, body: &T) -> Result<Vec<u8>, TransportError> {
    let mut buf = vec![0u8; 5];
    buf[4] = kind;
    bincode::serialize_into(&mut buf, body).map_err(|e| TransportError::Codec(e.to_string()))?;
    let len = buf.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge { len, max: FRAME_BYTES_MAX });
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Reads one frame: `(kind, body)`. Checks the length before allocating.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), TransportError> {
    let len = r.read_u32_le().await? as usize;
    if len == 0 {
        return Err(TransportError::EmptyFrame);
    }
    if len > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge { len, max: FRAME_BYTES_MAX });
    }
    let kind = r.read_u8().await?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body).await?;
    Ok((kind, body))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, TransportError> {
    bincode::deserialize(b).map_err(|e| TransportError::Codec(e.to_string()))
}

/// Control requests (leader transfer on openraft 0.9, which has no API for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Switch this node's leader heartbeats on or off.
    SetHeartbeat(bool),
    /// Switch this node's election timer on or off.
    SetElect(bool),
    /// Make this node campaign now.
    TriggerElect,
    /// Liveness and identity.
    Ping,
}

/// Control responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Done.
    Ok,
    /// Answer to [`ControlRequest::Ping`].
    Pong {
        /// The node's id.
        id: NodeId,
    },
}

/// Boxed future returned by [`ControlHandler::handle`].
pub type ControlFuture = Pin<Box<dyn Future<Output = Result<ControlResponse, String>> + Send>>;

/// Executes control requests on a node.
pub trait ControlHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, req: ControlRequest) -> ControlFuture;
}

/// The control handler of a Raft node.
pub struct RaftControl {
    raft: Raft,
}

impl RaftControl {
    /// Controls `raft`.
    pub fn new(raft: Raft) -> Self {
        RaftControl { raft }
    }
}

impl ControlHandler for RaftControl {
    fn handle(&self, req: ControlRequest) -> ControlFuture {
        let raft = self.raft.clone();
        Box::pin(async move {
            match req {
                ControlRequest::SetHeartbeat(on) => raft.runtime_config().heartbeat(on),
                ControlRequest::SetElect(on) => raft.runtime_config().elect(on),
                ControlRequest::TriggerElect => raft.trigger().elect().await.map_err(|e| e.to_string())?,
                ControlRequest::Ping => return Ok(ControlResponse::Pong { id: raft.metrics().borrow().id }),
            }
            Ok(ControlResponse::Ok)
        })
    }
}

/// Sends one control request on a fresh connection.
pub async fn control_call(addr: &str, req: ControlRequest, timeout: Duration) -> Result<ControlResponse, TransportError> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&encode_frame(KIND_CONTROL, &req)?).await?;
        let (kind, body) = read_frame(&mut stream).await?;
        if kind != KIND_CONTROL {
            return Err(TransportError::KindMismatch { expected: KIND_CONTROL, got: kind });
        }
        decode::<Result<ControlResponse, String>>(&body)?.map_err(TransportError::Remote)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| TransportError::Timeout)?
}

/// Creates one [`TcpNetwork`] per target; connections are made lazily inside calls.
#[derive(Debug, Clone, Default)]
pub struct TcpNetworkFactory;

impl RaftNetworkFactory<TypeConfig> for TcpNetworkFactory {
    type Network = TcpNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> TcpNetwork {
        TcpNetwork { target, node: node.clone(), conn: None }
    }
}

/// A client for one peer, holding at most one connection.
pub struct TcpNetwork {
    target: NodeId,
    node: Node,
    conn: Option<BufReader<TcpStream>>,
}

enum CallError {
    Unreachable(io::Error),
    Network(TransportError),
}

impl TcpNetwork {
    /// One round trip. The connection is out of `self` while in flight and returns only when healthy.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(&mut self, kind: u8, req: &Req, ttl: Duration) -> Result<Resp, CallError> {
        let frame = encode_frame(kind, req).map_err(CallError::Network)?;
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let stream = match tokio::time::timeout(ttl, TcpStream::connect(&self.node.addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(CallError::Unreachable(e)),
                    Err(_) => return Err(CallError::Unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
                };
                stream.set_nodelay(true).map_err(|e| CallError::Network(e.into()))?;
                BufReader::new(stream)
            }
        };
        conn.get_mut().write_all(&frame).await.map_err(|e| CallError::Network(e.into()))?;
        let (got, body) = read_frame(&mut conn).await.map_err(CallError::Network)?;
        if got != kind {
            return Err(CallError::Network(TransportError::KindMismatch { expected: kind, got }));
        }
        let resp = decode::<Resp>(&body).map_err(CallError::Network)?;
        self.conn = Some(conn);
        Ok(resp)
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
        match self.call::<Req, Result<Resp, RaftError<NodeId, E>>>(kind, req, option.hard_ttl()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))),
            Err(CallError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Network(e)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for TcpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(KIND_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.rpc(KIND_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(KIND_VOTE, &rpc, &option).await
    }
}

/// What a server dispatches requests to. `None` raft: control requests only (tests).
#[derive(Clone)]
struct Dispatch {
    raft: Option<Raft>,
    control: Arc<dyn ControlHandler>,
}

impl Dispatch {
    async fn handle(&self, kind: u8, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let Some(raft) = &self.raft else {
            if kind != KIND_CONTROL {
                return Err(TransportError::Codec(format!("no raft behind this server for kind {kind}")));
            }
            return encode_frame(KIND_CONTROL, &self.control.handle(decode(body)?).await);
        };
        match kind {
            KIND_APPEND => encode_frame(kind, &raft.append_entries(decode(body)?).await),
            KIND_VOTE => encode_frame(kind, &raft.vote(decode(body)?).await),
            KIND_SNAPSHOT => encode_frame(kind, &raft.install_snapshot(decode(body)?).await),
            KIND_CONTROL => encode_frame(kind, &self.control.handle(decode(body)?).await),
            other => Err(TransportError::Codec(format!("unknown frame kind {other}"))),
        }
    }
}

/// The Raft RPC server. Dropping or shutting it down aborts the accept loop and every connection.
pub struct RaftServer {
    accept: tokio::task::JoinHandle<()>,
}

impl RaftServer {
    /// Serves Raft and control RPCs on `listener`.
    pub fn start(listener: TcpListener, raft: Raft, control: Arc<dyn ControlHandler>) -> RaftServer {
        Self::spawn(listener, Dispatch { raft: Some(raft), control })
    }

    /// Serves only control RPCs (for tests of the transport itself).
    pub fn start_control_only(listener: TcpListener, control: Arc<dyn ControlHandler>) -> RaftServer {
        Self::spawn(listener, Dispatch { raft: None, control })
    }

    fn spawn(listener: TcpListener, dispatch: Dispatch) -> RaftServer {
        let accept = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task drops it and aborts them all.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let d = dispatch.clone();
                            conns.spawn(async move {
                                if let Err(e) = serve_conn(stream, d).await {
                                    debug!(%peer, error = %e, "raft connection closed");
                                }
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "raft accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        RaftServer { accept }
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.accept.abort();
    }
}

impl Drop for RaftServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_conn(stream: TcpStream, dispatch: Dispatch) -> Result<(), TransportError> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    loop {
        let (kind, body) = match read_frame(&mut stream).await {
            Ok(f) => f,
            Err(TransportError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let resp = dispatch.handle(kind, &body).await?;
        stream.get_mut().write_all(&resp).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stub;
    impl ControlHandler for Stub {
        fn handle(&self, req: ControlRequest) -> ControlFuture {
            Box::pin(async move {
                match req {
                    ControlRequest::Ping => Ok(ControlResponse::Pong { id: 7 }),
                    ControlRequest::TriggerElect => Err("not now".into()),
                    _ => Ok(ControlResponse::Ok),
                }
            })
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_rejected_before_allocating() {
        let f = encode_frame(KIND_CONTROL, &ControlRequest::SetElect(true)).unwrap();
        let (kind, body) = read_frame(&mut &f[..]).await.unwrap();
        assert_eq!(kind, KIND_CONTROL);
        assert_eq!(decode::<ControlRequest>(&body).unwrap(), ControlRequest::SetElect(true));
        let huge = [0xFFu8, 0xFF, 0xFF, 0x7F, 1];
        assert!(matches!(read_frame(&mut &huge[..]).await, Err(TransportError::FrameTooLarge { .. })));
        let empty = [0u8, 0, 0, 0];
        assert!(matches!(read_frame(&mut &empty[..]).await, Err(TransportError::EmptyFrame)));
    }

    #[tokio::test]
    async fn garbage_closes_one_connection_and_the_server_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _server = RaftServer::start_control_only(listener, Arc::new(Stub));
        let mut bad = TcpStream::connect(&addr).await.unwrap();
        bad.write_all(&[5, 0, 0, 0, KIND_CONTROL, 0xde, 0xad, 0xbe, 0xef]).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(bad.read(&mut buf).await.unwrap(), 0, "garbage body closes the connection");
        let t = Duration::from_secs(2);
        assert_eq!(control_call(&addr, ControlRequest::Ping, t).await.unwrap(), ControlResponse::Pong { id: 7 });
        assert_eq!(control_call(&addr, ControlRequest::SetHeartbeat(false), t).await.unwrap(), ControlResponse::Ok);
        assert!(matches!(control_call(&addr, ControlRequest::TriggerElect, t).await, Err(TransportError::Remote(m)) if m == "not now"));
    }

    #[tokio::test]
    async fn unreachable_peer_fails_fast() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut net = TcpNetwork { target: 2, node: Node { addr }, conn: None };
        let r = net.call::<ControlRequest, ControlResponse>(KIND_CONTROL, &ControlRequest::Ping, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(CallError::Unreachable(_))));
    }
}
