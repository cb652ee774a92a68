//! The storage error type, shared by every backend.

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested revision has been compacted away.
    #[error("required revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        /// The revision the caller asked for.
        requested: crate::Revision,
        /// The store's compacted revision.
        compacted: crate::Revision,
    },
    /// The requested revision is newer than the store's latest revision.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: crate::Revision,
        /// The store's latest revision.
        current: crate::Revision,
    },
    /// The write would take the store over its size quota.
    #[error("database space exceeded: {used} bytes used, quota is {quota} bytes")]
    QuotaExceeded {
        /// Bytes the store would hold after the write.
        used: u64,
        /// The configured quota.
        quota: u64,
    },
    /// The store hit an unrecoverable I/O failure and refuses further writes; the process must
    /// be restarted so that it reopens from disk.
    #[error("store is failed after an unrecoverable error: {0}")]
    Failed(String),
    /// Reading or writing the data directory failed.
    #[error("store i/o on {path}: {source}")]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds a file that cannot be decoded.
    #[error("corrupt store file {path}: {reason}")]
    Corrupt {
        /// The file involved.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The etcd backend could not complete a request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
