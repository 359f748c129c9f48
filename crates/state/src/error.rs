//! Errors of the replicated-state crate: log bodies that do not encode or decode.

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
