//! The commitlog's error type: every failure of the store is one of these values, never a panic.

use std::io;
use std::path::PathBuf;

/// Errors returned by the commitlog.
#[derive(Debug, thiserror::Error)]
pub enum CommitLogError {
    /// An operating-system call failed on a file of the store.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Data on disk failed verification where it cannot be a torn tail; the node must not start.
    #[error("corrupt commitlog: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset inside that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An append did not continue the log (a hole or an overlap).
    #[error("append is not contiguous: expected index {expected}, got {got}")]
    NonContiguous {
        /// The index the log expected next.
        expected: u64,
        /// The index that was offered.
        got: u64,
    },
    /// A record cannot fit in one segment.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Encoded record length.
        len: u64,
        /// Largest record a segment can hold.
        max: u64,
    },
    /// The configuration is inconsistent.
    #[error("invalid commitlog config: {0}")]
    InvalidConfig(String),
    /// An earlier write or fsync failed; the store refuses further writes (its page-cache state is unknown).
    #[error("commitlog is failed after an earlier IO error: {0}")]
    Poisoned(String),
    /// The operation does not fit the log's current state.
    #[error("invalid commitlog state: {0}")]
    InvalidState(String),
    /// The IO thread has stopped (the store was closed).
    #[error("commitlog IO thread is not running")]
    Closed,
}

impl CommitLogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CommitLogError::Io { op, path: path.into(), source }
    }

    /// A copy of this error for reporting: IO errors keep their kind and OS error number (`io::Error` is
    /// not `Clone`), other variants keep their text.
    pub fn duplicate(&self) -> Self {
        match self {
            CommitLogError::Io { op, path, source } => {
                let source = match source.raw_os_error() {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::new(source.kind(), source.to_string()),
                };
                CommitLogError::Io { op, path: path.clone(), source }
            }
            CommitLogError::Corrupt { file, offset, reason } => {
                CommitLogError::Corrupt { file: file.clone(), offset: *offset, reason: reason.clone() }
            }
            CommitLogError::NonContiguous { expected, got } => CommitLogError::NonContiguous { expected: *expected, got: *got },
            CommitLogError::RecordTooLarge { len, max } => CommitLogError::RecordTooLarge { len: *len, max: *max },
            CommitLogError::InvalidConfig(s) => CommitLogError::InvalidConfig(s.clone()),
            CommitLogError::Poisoned(s) => CommitLogError::Poisoned(s.clone()),
            CommitLogError::InvalidState(s) => CommitLogError::InvalidState(s.clone()),
            CommitLogError::Closed => CommitLogError::Closed,
        }
    }

    /// Converts into an `io::Error` for callers (such as openraft's flush callback) that only take those.
    pub fn into_io(self) -> io::Error {
        match self {
            CommitLogError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Result alias for the commitlog.
pub type Result<T, E = CommitLogError> = std::result::Result<T, E>;
