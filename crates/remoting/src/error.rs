//! The crate's two error types: [`RemotingError`] for frames, headers and JSON bodies, and [`MessageError`] for
//! the stored-message layout, batches, properties and message ids.
//!
//! Every failure on network or disk input is one of these values, never a panic. Each variant carries the
//! field or length that was wrong so that a broker can log it and answer `SYSTEM_ERROR` with a useful remark.

use std::io;

/// Errors of the frame codec, of typed request/response headers and of JSON bodies.
#[derive(Debug, thiserror::Error)]
pub enum RemotingError {
    /// The transport failed (only produced through the `tokio_util` codec traits).
    #[error("remoting transport error: {source}")]
    Io {
        /// The underlying error.
        #[from]
        source: io::Error,
    },
    /// A frame's length prefix exceeds the configured cap; rejected before any allocation.
    #[error("frame of {frame_bytes} bytes exceeds the maximum of {frame_bytes_max} bytes")]
    FrameTooLarge {
        /// Bytes the frame would take, length prefix included.
        frame_bytes: u64,
        /// The codec's cap.
        frame_bytes_max: usize,
    },
    /// A frame's length prefix is negative or too small to hold the header-length word.
    #[error("invalid frame length {length}: must be at least 4")]
    FrameLengthInvalid {
        /// The length prefix as read.
        length: i32,
    },
    /// The header length does not fit inside the frame.
    #[error("header length {header_len} does not fit in a frame of {frame_len} bytes")]
    HeaderLengthInvalid {
        /// Header length from the header-length word.
        header_len: usize,
        /// Frame length (without the length prefix).
        frame_len: usize,
    },
    /// The serialize-type byte is neither JSON (0) nor ROCKETMQ (1).
    #[error("unknown header serialize type {serialize_type}")]
    UnknownSerializeType {
        /// The byte as read.
        serialize_type: u8,
    },
    /// A JSON header is not valid JSON, not an object, or has a field of the wrong type.
    #[error("malformed JSON header: {source}")]
    HeaderJson {
        /// What was wrong and at which byte of the header (the header parser reports through serde_json's
        /// error type).
        #[source]
        source: serde_json::Error,
    },
    /// A binary (ROCKETMQ) header ends before a field it announces.
    #[error("binary header truncated reading {field} at offset {offset}: need {needed} bytes, {available} left")]
    HeaderTruncated {
        /// The field being read.
        field: &'static str,
        /// Offset inside the header.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// A length inside a binary header is negative.
    #[error("binary header field {field} has negative length {len}")]
    HeaderLengthNegative {
        /// The field whose length is negative.
        field: &'static str,
        /// The length as read.
        len: i64,
    },
    /// A binary header carries more `extFields` entries than [`crate::frame::EXT_FIELDS_MAX`].
    #[error("header carries more than {entries_max} extFields entries")]
    TooManyExtFields {
        /// The cap.
        entries_max: usize,
    },
    /// Text in a header is not valid UTF-8.
    #[error("header field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A command field cannot be encoded (for example a string longer than its length prefix allows).
    #[error("cannot encode {field}: {reason}")]
    Unencodable {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A required `extFields` key is absent (or was JSON `null`).
    #[error("missing required header field {key:?} ({name})")]
    MissingField {
        /// The key on the wire (`"b"` for a V2 send header).
        key: &'static str,
        /// The Java field name it stands for.
        name: &'static str,
    },
    /// An `extFields` value does not parse as the expected type.
    #[error("header field {key:?} ({name}) has invalid value {value:?}: expected {expected}")]
    InvalidField {
        /// The key on the wire.
        key: &'static str,
        /// The Java field name it stands for.
        name: &'static str,
        /// The value as received (truncated to a short prefix).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A JSON body does not parse as the expected structure.
    #[error("malformed {what} body: {source}")]
    BodyJson {
        /// Which body (for example `"HeartbeatData"`).
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored message, batch, property block or message id is malformed.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Errors of the stored-message layout, SEND_BATCH bodies, property blocks, compression and message ids.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// The input ends before a field.
    #[error("message truncated reading {field} at offset {offset}: need {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Offset inside the input.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// A length field is negative or disagrees with the bytes around it.
    #[error("message field {field} has invalid length {len}")]
    InvalidLength {
        /// The field.
        field: &'static str,
        /// The length as read.
        len: i64,
    },
    /// The magic code is not a known message magic.
    #[error("unknown message magic code {magic:#010x}")]
    BadMagic {
        /// The magic as read.
        magic: i32,
    },
    /// The stored body CRC does not match the body.
    #[error("body CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyCrcMismatch {
        /// CRC in the message.
        stored: u32,
        /// CRC of the body bytes.
        computed: u32,
    },
    /// A field exceeds what the layout (or the C++ client) can carry.
    #[error("{field} of {len} bytes exceeds the maximum of {len_max} bytes")]
    TooLong {
        /// The field (`"topic"`, `"properties"`, `"body"`).
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        len_max: usize,
    },
    /// Text is not valid UTF-8.
    #[error("message field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A property name or value contains a separator byte (0x01 or 0x02), or the name is empty.
    #[error("property {name:?} cannot be encoded: names must be non-empty and neither names nor values may contain 0x01 or 0x02")]
    InvalidProperty {
        /// The offending name.
        name: String,
    },
    /// The stored message uses an IPv6 host where only IPv4 can be written (interop rule 5).
    #[error("{field} must be an IPv4 address: C++ clients decode only V1/IPv4 messages")]
    Ipv6Host {
        /// The field.
        field: &'static str,
    },
    /// The body uses a compression codec this crate does not implement.
    #[error("unsupported body compression type {compression_type}")]
    UnsupportedCompression {
        /// The codec bits (sysFlag >> 8 & 7): 1 LZ4, 2 ZSTD.
        compression_type: i32,
    },
    /// The compressed body is corrupt.
    #[error("corrupt compressed body: {reason}")]
    Compression {
        /// The inflater's message.
        reason: String,
    },
    /// A message id string is malformed.
    #[error("invalid message id {id:?}: {reason}")]
    InvalidMsgId {
        /// The id (truncated to a short prefix).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Result alias for the remoting codec.
pub type Result<T, E = RemotingError> = std::result::Result<T, E>;

/// Bytes of untrusted input quoted back in an error, so that a hostile client cannot make logs huge.
pub(crate) const QUOTE_BYTES_MAX: usize = 64;

/// A short prefix of `s` for error messages, cut at a character boundary.
pub(crate) fn quote(s: &str) -> String {
    if s.len() <= QUOTE_BYTES_MAX {
        return s.to_owned();
    }
    let mut end = QUOTE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
