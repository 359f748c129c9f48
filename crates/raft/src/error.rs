//! Error types of the Raft glue crate.

/// A log body that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body ends before a field it announces.
    #[error("log body truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the log body")]
    Trailing(usize),
    /// A topic name is not UTF-8.
    #[error("topic name is not UTF-8")]
    BadTopic,
    /// A count or length does not fit its field.
    #[error("{0} too long for the log body encoding")]
    TooLong(&'static str),
    /// The command tag is unknown to this version.
    #[error("unknown command tag {0}")]
    UnknownTag(u8),
    /// A bincode-encoded part failed.
    #[error("bincode: {0}")]
    Bincode(String),
}

/// Why a message could not be read by physical offset.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The log failed to read or verify the record (its kind says whether IO or corruption).
    #[error(transparent)]
    Log(#[from] raftmq_commitlog::CommitLogError),
    /// The record verified but its body does not decode.
    #[error("log record {index}: {source}")]
    Payload {
        /// Raft index of the record.
        index: u64,
        /// The decode failure.
        source: PayloadError,
    },
}
