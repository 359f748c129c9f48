//! raftmq's codec for the Apache RocketMQ 4.x *remoting* protocol, so that unmodified RocketMQ clients (Java,
//! C++, Python, Go, Rust) can talk to raftmq's nameserver and brokers.
//!
//! Pure: no network I/O, no broker logic, no clocks (callers pass time in). Every decoder is bounds-checked
//! and returns an error value on malformed input — network and disk bytes never cause a panic, and no
//! length read from the wire is trusted before it is checked against the input or a named cap.
//!
//! - [`frame`]: [`RemotingCommand`] ↔ frames, JSON and ROCKETMQ binary headers, and [`RemotingCodec`] for
//!   `tokio_util::codec::Framed`.
//! - [`codes`]: [`RequestCode`], [`ResponseCode`] (unknown codes stay representable), flag bits,
//!   [`LanguageCode`], version ordinals.
//! - [`header`]: typed custom headers parsed from / written to `extFields` ([`CommandHeader`]).
//! - [`body`]: JSON bodies — heartbeats, queue locks, routes, cluster info, registration.
//! - [`message`]: the stored-message layout served by PULL, SEND_BATCH bodies, properties, tag hashes,
//!   offsetMsgId and UNIQ_KEY.
//! - [`acl`]: plain-ACL request signatures (field names, signed content, HmacSHA1 signature).
//! - [`error`]: [`RemotingError`] and [`MessageError`].
//! - [`cluster_auth`]: the cluster secret and signed nameserver registrations.
//!
//! A broker's read loop, in outline:
//!
//! ```
//! use bytes::BytesMut;
//! use raftmq_remoting::{header::PullMessageRequestHeader, RemotingCommand, RequestCode, ResponseCode};
//!
//! // A client's PULL request as it arrives on the socket.
//! let request = RemotingCommand::request(RequestCode::PULL_MESSAGE, 7)
//!     .with_ext("consumerGroup", "G")
//!     .with_ext("topic", "T")
//!     .with_ext("queueId", "0")
//!     .with_ext("queueOffset", "0")
//!     .with_ext("maxMsgNums", "32")
//!     .with_ext("sysFlag", "2");
//! let mut socket_bytes = BytesMut::new();
//! request.encode(&mut socket_bytes, raftmq_remoting::FRAME_BYTES_MAX_DEFAULT)?;
//!
//! let cmd = RemotingCommand::decode(&mut socket_bytes, raftmq_remoting::FRAME_BYTES_MAX_DEFAULT)?.expect("whole frame");
//! assert!(!cmd.is_response() && !cmd.is_oneway());
//! let response = match cmd.request_code() {
//!     RequestCode::PULL_MESSAGE => {
//!         let header: PullMessageRequestHeader = cmd.decode_header()?;
//!         assert_eq!(header.max_msg_nums, 32);
//!         RemotingCommand::response_to(&cmd, ResponseCode::PULL_NOT_FOUND, None)
//!     }
//!     _ => RemotingCommand::not_supported_to(&cmd),
//! };
//! assert_eq!(response.opaque, 7);
//! # Ok::<(), raftmq_remoting::RemotingError>(())
//! ```

#![deny(missing_docs)]

pub mod acl;
pub mod body;
pub mod cluster_auth;
pub mod codes;
pub mod error;
pub mod frame;
pub mod header;
pub mod message;

pub use codes::{LanguageCode, RequestCode, ResponseCode};
pub use error::{MessageError, RemotingError, Result};
pub use frame::{ExtFields, RemotingCodec, RemotingCommand, SerializeType, FRAME_BYTES_MAX_DEFAULT};
pub use header::CommandHeader;
pub use message::{decode_stored_message, encode_stored_message, DecodedMessage, MessageToStore, OffsetMsgId};
