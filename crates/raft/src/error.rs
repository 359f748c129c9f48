//! Error types of the Raft glue crate, and the cell that records the storage failure that stops a node.

pub use raftmq_state::PayloadError;

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

/// A storage failure after which this node cannot go on: the disk refused a write, an allocation or an
/// fsync (for example `ENOSPC`), or stored data could not be read back. It names the operation, the file
/// and the OS error, and keeps the [`std::io::ErrorKind`] and errno so callers can tell a full disk
/// (`StorageFull`, errno 28) from other failures, and both from stored data that failed verification
/// ([`StoreFailure::is_corrupt`]: kind `InvalidData`, which no system call produces). Cloneable: one value
/// is reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {}: {message}", path.display())]
pub struct StoreFailure {
    /// What the store was doing (`fallocate consume queue`, `write checkpoint`, …).
    pub op: String,
    /// The file or directory involved.
    pub path: std::path::PathBuf,
    /// Kind of the underlying IO error.
    pub kind: std::io::ErrorKind,
    /// The OS error number, when the failure came from a system call.
    pub errno: Option<i32>,
    /// The underlying error's text (includes `os error N` for system calls).
    pub message: String,
}

impl StoreFailure {
    /// A failure of `op` on `path` with the IO error `e`.
    pub fn io(op: impl Into<String>, path: impl Into<std::path::PathBuf>, e: &std::io::Error) -> Self {
        StoreFailure { op: op.into(), path: path.into(), kind: e.kind(), errno: e.raw_os_error(), message: e.to_string() }
    }

    /// A commitlog error as a store failure; `dir` stands in for the path when the error names none.
    pub fn from_commitlog(e: &raftmq_commitlog::CommitLogError, dir: &std::path::Path) -> Self {
        use raftmq_commitlog::CommitLogError as E;
        match e {
            E::Io { op, path, source } => StoreFailure::io(format!("commitlog {op}"), path.clone(), source),
            E::Corrupt { file, .. } => StoreFailure::corrupt("commitlog verify", file.clone(), e.to_string()),
            other => StoreFailure {
                op: "commitlog".into(),
                path: dir.to_path_buf(),
                kind: std::io::ErrorKind::Other,
                errno: None,
                message: other.to_string(),
            },
        }
    }

    /// Stored data at `path` failed verification (a checksum mismatch, a file that does not decode, a
    /// record where none can be): restarting cannot cure it. `message` says what check failed.
    pub fn corrupt(op: impl Into<String>, path: impl Into<std::path::PathBuf>, message: impl Into<String>) -> Self {
        StoreFailure { op: op.into(), path: path.into(), kind: std::io::ErrorKind::InvalidData, errno: None, message: message.into() }
    }

    /// True when stored data failed verification ([`StoreFailure::corrupt`], or an IO error of kind
    /// `InvalidData`, the kind this crate's decoders give a damaged file). Such a node needs its data
    /// replaced; a restart fails the same way.
    pub fn is_corrupt(&self) -> bool {
        self.kind == std::io::ErrorKind::InvalidData
    }

    /// True when the disk is full (`ENOSPC`).
    pub fn is_disk_full(&self) -> bool {
        self.kind == std::io::ErrorKind::StorageFull || self.errno == Some(libc::ENOSPC)
    }

    /// An `io::Error` of the same kind (and errno when known), for APIs that take one.
    pub fn to_io(&self) -> std::io::Error {
        std::io::Error::new(self.kind, self.to_string())
    }
}

/// Where a component records the storage failure that stops the node. The first failure recorded is
/// kept (it is the cause; later ones are consequences); waiters see it through a watch.
#[derive(Debug, Clone)]
pub struct FailureCell(std::sync::Arc<tokio::sync::watch::Sender<Option<StoreFailure>>>);

impl Default for FailureCell {
    fn default() -> Self {
        FailureCell(std::sync::Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl FailureCell {
    /// Records `f` unless a failure is already recorded. Returns whether `f` was recorded.
    pub fn set(&self, f: StoreFailure) -> bool {
        self.0.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(f);
                true
            } else {
                false
            }
        })
    }

    /// The recorded failure, if any.
    pub fn get(&self) -> Option<StoreFailure> {
        self.0.borrow().clone()
    }

    /// A watch of the recorded failure.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<StoreFailure>> {
        self.0.subscribe()
    }

    /// Waits until a failure is recorded.
    pub async fn wait(&self) -> StoreFailure {
        let mut rx = self.subscribe();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen; wait forever rather than invent a failure.
                std::future::pending::<()>().await;
            }
        }
    }
}
