//! The client's error type. Broker refusals keep the RocketMQ response code and remark so callers can tell
//! "nothing was stored" (e.g. a validation error) from "unknown outcome" (a timeout after the request left).

use std::time::Duration;

use raftmq_net::NetError;
use raftmq_remoting::error::{MessageError, RemotingError};

/// Errors returned by producers, consumers and the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker or nameserver answered with a non-success code.
    #[error("{addr} answered code {code}: {remark}")]
    Broker {
        /// Address of the server that answered.
        addr: String,
        /// RocketMQ response code.
        code: i32,
        /// The server's remark.
        remark: String,
    },
    /// No response within the deadline. The request may or may not have taken effect.
    #[error("{addr}: no response within {timeout:?}")]
    Timeout {
        /// Address of the server.
        addr: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The connection could not be made, or broke. When it broke after the request was written the request
    /// may or may not have taken effect.
    #[error("{addr}: {source}")]
    Connection {
        /// Address of the server.
        addr: String,
        /// The network error.
        #[source]
        source: NetError,
    },
    /// No nameserver knows a route for the topic (and auto-creation from TBW102 is not possible).
    #[error("no route for topic {0}")]
    NoRoute(String),
    /// The route names no writable queue with a reachable leader.
    #[error("no writable queue for topic {0}")]
    NoQueue(String),
    /// The message was refused before sending (size, topic name, batch shape ...).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A frame, header or stored message could not be decoded.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client was used before `start` or after `shutdown`, or was misconfigured.
    #[error("client state: {0}")]
    State(String),
    /// Local file IO (broadcast offset store).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Every attempt failed; the last error is kept.
    #[error("send failed after {attempts} attempt(s) in {elapsed:?}: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// True when every attempt certainly had no effect (see [`ClientError::is_definite`]).
        definite: bool,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    pub(crate) fn net(addr: &str, e: NetError) -> ClientError {
        match e {
            NetError::Timeout(timeout) => ClientError::Timeout { addr: addr.to_string(), timeout },
            source => ClientError::Connection { addr: addr.to_string(), source },
        }
    }

    /// The same error again, for every message of an auto-batched request (errors are not `Clone`: an IO
    /// error is rebuilt from its kind and text).
    pub(crate) fn duplicate(&self) -> ClientError {
        let net = |e: &NetError| match e {
            NetError::Io(io) => NetError::Io(std::io::Error::new(io.kind(), io.to_string())),
            NetError::Codec(s) => NetError::Codec(s.clone()),
            NetError::Timeout(d) => NetError::Timeout(*d),
            NetError::Closed => NetError::Closed,
            // A connection only fails with a server name error; keep that kind.
            NetError::Tls(raftmq_net::TlsError::ServerName(n)) => NetError::Tls(raftmq_net::TlsError::ServerName(n.clone())),
            NetError::Tls(e) => NetError::Tls(raftmq_net::TlsError::Config(e.to_string())),
        };
        match self {
            ClientError::Broker { addr, code, remark } => ClientError::Broker { addr: addr.clone(), code: *code, remark: remark.clone() },
            ClientError::Timeout { addr, timeout } => ClientError::Timeout { addr: addr.clone(), timeout: *timeout },
            ClientError::Connection { addr, source } => ClientError::Connection { addr: addr.clone(), source: net(source) },
            ClientError::NoRoute(t) => ClientError::NoRoute(t.clone()),
            ClientError::NoQueue(t) => ClientError::NoQueue(t.clone()),
            ClientError::InvalidMessage(s) => ClientError::InvalidMessage(s.clone()),
            ClientError::Protocol(s) => ClientError::Protocol(s.clone()),
            ClientError::State(s) => ClientError::State(s.clone()),
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
            ClientError::RetriesExhausted { attempts, elapsed, definite, last } => ClientError::RetriesExhausted {
                attempts: *attempts,
                elapsed: *elapsed,
                definite: *definite,
                last: Box::new(last.duplicate()),
            },
        }
    }

    /// The RocketMQ response code, when a server refused the request.
    pub fn response_code(&self) -> Option<i32> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::RetriesExhausted { last, .. } => last.response_code(),
            _ => None,
        }
    }

    /// True when the request certainly had no effect: it was refused by the server, never left this process,
    /// or the connection could not be made. False when the outcome is unknown (timeouts, broken connections).
    ///
    /// A broker refusal is definite except SYSTEM_ERROR (1), which RocketMQ brokers also use for failures
    /// whose outcome they cannot know (raftmq: "store outcome unknown" when Raft lost track of an entry).
    pub fn is_definite(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => *code != raftmq_remoting::ResponseCode::SYSTEM_ERROR.0,
            ClientError::NoRoute(_) | ClientError::NoQueue(_) | ClientError::InvalidMessage(_) | ClientError::State(_) => true,
            ClientError::Connection { source: NetError::Io(e), .. } => {
                matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable)
            }
            ClientError::RetriesExhausted { definite, .. } => *definite,
            _ => false,
        }
    }
}

impl From<RemotingError> for ClientError {
    fn from(e: RemotingError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<MessageError> for ClientError {
    fn from(e: MessageError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
