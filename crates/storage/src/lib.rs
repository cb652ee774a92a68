//! krust's key-value store: etcd's data model (global revisions, per-key create/mod revision and
//! version, compare-and-swap transactions, watch from a revision, compaction) behind one trait.
//!
//! Two backends implement [`Store`]: [`embedded::EmbeddedStore`], the default, durable and in
//! process; and [`etcd::EtcdStore`], a client of a real etcd cluster for HA set-ups.
//! Only the API server uses this crate.
#![warn(missing_docs)]

pub mod compactor;
pub mod embedded;
mod error;
pub mod etcd;
pub mod testing;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use error::{Error, Result};

/// A store revision. Revisions increase by one with every successful write transaction and are
/// shared by every key, exactly as in etcd. An empty store is at revision 1.
pub type Revision = i64;

/// One key as stored at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes (empty for the tombstone carried by a delete event).
    pub value: Bytes,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes to this incarnation of the key (1 after creation).
    pub version: i64,
}

/// A condition a transaction checks before choosing its branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals the given one; `0` means "the key does not exist".
    ModRevision {
        /// The key to check.
        key: String,
        /// The expected mod revision, or 0 for absence.
        equals: Revision,
    },
}

/// One operation inside a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write the value.
    Put {
        /// The key to write.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Delete the key (a no-op when it does not exist).
    Delete {
        /// The key to delete.
        key: String,
    },
    /// Read the key as of the transaction.
    Get {
        /// The key to read.
        key: String,
    },
}

/// A compare-and-swap transaction: if every compare holds, run `success`, else run `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold for the success branch.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<Op>,
    /// Operations run otherwise (usually a `Get` to report the current state).
    pub failure: Vec<Op>,
}

/// What one operation of the chosen branch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A put; `prev` is the value it replaced.
    Put {
        /// The key's value before the put, if it existed.
        prev: Option<KeyValue>,
    },
    /// A delete; `prev` is the value it removed (None when the key did not exist).
    Delete {
        /// The removed value, if the key existed.
        prev: Option<KeyValue>,
    },
    /// A get.
    Get(Option<KeyValue>),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the success branch ran.
    pub succeeded: bool,
    /// The store revision after the transaction (the mod revision of every key it wrote).
    pub revision: Revision,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
}

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key of the range (inclusive).
    pub start: String,
    /// End of the range (exclusive); see [`prefix_end`] for prefix reads.
    pub end: String,
    /// Read at this revision; `None` reads the latest committed state.
    pub revision: Option<Revision>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
}

impl RangeRequest {
    /// Every key starting with `prefix`, at the latest revision.
    pub fn prefix(prefix: &str) -> RangeRequest {
        RangeRequest { start: prefix.to_owned(), end: prefix_end(prefix), revision: None, limit: 0 }
    }
}

/// The result of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    /// The keys found, in key order.
    pub kvs: Vec<KeyValue>,
    /// The store revision at which the range was read. A list built from this response carries
    /// this revision as its resourceVersion, never one derived from its items.
    pub revision: Revision,
    /// Whether more keys remained in the range beyond `limit`.
    pub more: bool,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the value is empty and `mod_revision` is the
    /// revision of the delete.
    pub kv: KeyValue,
    /// The key before the change, when it existed.
    pub prev_kv: Option<KeyValue>,
}

/// An item of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes in revision order. A revision is never split across two messages.
    Events(Vec<Event>),
    /// Every change to the watched range up to and including this revision has been delivered.
    Progress(Revision),
}

/// A stream of watch messages; it ends with an error (for example [`Error::Compacted`]) when
/// the watcher can no longer be served without a gap.
pub type WatchStream = BoxStream<'static, Result<WatchMessage>>;

/// etcd's data model. Implementations must deliver, for a watch started at any retained
/// revision, every later change to the range exactly once and in order, or end the stream with
/// an error; they must never skip an event silently.
pub trait Store: Send + Sync + 'static {
    /// Reads a range of keys.
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>>;

    /// Runs a transaction atomically. The write is durable when this returns `Ok`.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>>;

    /// Watches every key starting with `prefix`, delivering every change whose revision is
    /// `>= start_revision`. A `start_revision` at or below the compacted revision yields
    /// [`Error::Compacted`].
    fn watch(&self, prefix: &str, start_revision: Revision) -> BoxFuture<'_, Result<WatchStream>>;

    /// Discards history older than `revision`: reads and watches below it fail from then on.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>>;

    /// The latest committed revision.
    fn current_revision(&self) -> BoxFuture<'_, Result<Revision>>;

    /// Backend facts for health checks and metrics.
    fn status(&self) -> BoxFuture<'_, Result<StoreStatus>>;

    /// Resolves when the store runs out of space and history could give some back: a write
    /// was refused for the quota, or something was deleted since. The compactor then compacts
    /// at once instead of at its next tick. Backends that manage their own space never
    /// resolve it.
    fn space_pressure(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// Backend facts for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Which backend this is ("embedded" or "etcd").
    pub backend: &'static str,
    /// Latest committed revision.
    pub revision: Revision,
    /// Revision below which history has been discarded.
    pub compact_revision: Revision,
    /// Bytes counted against the quota (embedded) or the database size (etcd).
    pub size_bytes: u64,
    /// The quota the size is checked against, when known.
    pub quota_bytes: Option<u64>,
}

/// A shared handle to any backend.
pub type SharedStore = Arc<dyn Store>;

/// The smallest key greater than every key starting with `prefix` (etcd's "prefix end").
pub fn prefix_end(prefix: &str) -> String {
    // Keys here are UTF-8 paths; bumping the last char keeps the end a valid string. A prefix
    // ending in char::MAX never occurs for API paths, so falling back to "no end" is safe.
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    String::from(char::MAX)
}

/// Reads one key at the latest revision.
pub async fn get(store: &dyn Store, key: &str) -> Result<(Option<KeyValue>, Revision)> {
    let response = store
        .range(RangeRequest { start: key.to_owned(), end: key_end(key), revision: None, limit: 1 })
        .await?;
    Ok((response.kvs.into_iter().next(), response.revision))
}

/// The range end that selects exactly `key`.
pub fn key_end(key: &str) -> String {
    let mut end = key.to_owned();
    end.push('\0');
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bumps_the_last_char() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(prefix_end("a"), "b");
        assert!(prefix_end("/registry/pods/").as_str() > "/registry/pods/zzzz");
    }
}
