//! The embedded backend: an in-memory multi-version index made durable by an append-only
//! write-ahead log with group commit, folded into a snapshot file when the log grows.
//!
//! Why this shape (see ARCHITECTURE.md, "Storage"): a cluster's data set is small and is read
//! far more than written, so the whole retained history lives in memory like etcd's index and
//! the apiserver's watch cache do; every write is appended to the log and fsynced before it is
//! acknowledged or made visible, and concurrent writers share one fsync. Disk use is bounded by
//! design: the log is rewritten into `snapshot` once it grows past the retained data (or a floor
//! of [`Config::checkpoint_min_bytes`]), so on-disk bytes stay below
//! `2 × retained + 2 × max(retained, checkpoint_min_bytes)` (old and new snapshot, and the
//! segments before and after a rotation, while a checkpoint runs), where "retained" is the
//! live data plus the history kept since the last compaction. Nothing here can stall that rewrite: readers
//! never hold the files, unlike SQLite's WAL checkpoints that starve under constant readers.
//!
//! Layout of the data directory:
//! - `snapshot`: every retained version of every key, with the revision and compacted
//!   revision; written to `snapshot.tmp`, fsynced, renamed, directory fsynced.
//! - `wal.<seq>`: log segments, records appended after the snapshot:
//!   `[len u32][crc32 u32][payload]`. A checkpoint starts a new segment and, once its snapshot
//!   is on disk, deletes the segments it covers. A torn or corrupt tail of the last segment (a
//!   write cut short by a crash, never acknowledged) is truncated on open.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    Compare, Error, Event, EventKind, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Result,
    Revision, Store, StoreStatus, Txn, TxnResponse, WatchMessage, WatchStream,
};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding `snapshot` and the `wal.<seq>` segments; created if missing.
    pub dir: PathBuf,
    /// Writes that would take the retained bytes over this fail with [`Error::QuotaExceeded`].
    pub quota_bytes: u64,
    /// The log is folded into a new snapshot once it exceeds both this and the retained bytes.
    pub checkpoint_min_bytes: u64,
}

impl Config {
    /// The defaults used by `krust server`: a 2 GiB quota (etcd's default) and a 64 MiB log floor.
    pub fn with_dir(dir: impl Into<PathBuf>) -> Config {
        Config { dir: dir.into(), quota_bytes: 2 << 30, checkpoint_min_bytes: 64 << 20 }
    }
}

/// The embedded store. Cloning shares the same store.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

struct Shared {
    state: RwLock<State>,
    /// The latest durable revision; watchers wait on it.
    head: watch::Sender<Revision>,
    quota_bytes: u64,
    /// Set when a write is refused for the quota; cleared when compaction brings the
    /// retained bytes back under nine tenths of it.
    under_pressure: std::sync::atomic::AtomicBool,
    /// Wakes [`Store::space_pressure`].
    pressure: tokio::sync::Notify,
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

/// Fixed per-version overhead counted against the quota, so that many tiny keys still count.
const VERSION_OVERHEAD: u64 = 64;
/// Most events a watcher takes from the log at once (a revision is never split).
const WATCH_BATCH: usize = 1000;
/// How often a caught-up watcher whose range is idle reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Version {
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    /// `None` marks a delete.
    value: Option<Bytes>,
}

#[derive(Default)]
struct State {
    /// Latest applied revision (may be ahead of `durable` while a batch is being synced).
    revision: Revision,
    /// Latest revision that is on disk; reads and watches never see past it.
    durable: Revision,
    compacted: Revision,
    keys: BTreeMap<String, Vec<Version>>,
    /// Every change since `compacted`, in revision order.
    log: VecDeque<(Revision, Event)>,
    retained_bytes: u64,
    failed: Option<String>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.dir`, replaying the snapshot and the log.
    pub fn open(config: Config) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, e))?;
        // The store holds every Secret: only its owner may enter the directory or read a
        // file (stores made before this get their modes fixed here).
        private_dir(&config.dir)?;
        let mut state = State { revision: 1, durable: 1, compacted: 0, ..State::default() };
        let snapshot_path = config.dir.join("snapshot");
        if snapshot_path.exists() {
            load_snapshot(&snapshot_path, &mut state)?;
        }
        let segments = wal_segments(&config.dir)?;
        let mut wal_len = 0;
        for (_, path) in &segments {
            wal_len = replay_wal(path, &mut state)?;
        }
        state.durable = state.revision;
        let wal_seq = segments.last().map_or(1, |(seq, _)| *seq);
        let wal_path = match segments.last() {
            Some((_, path)) => path.clone(),
            None => segment_path(&config.dir, wal_seq),
        };
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&wal_path)
            .map_err(|e| Error::io(&wal_path, e))?;
        // Cut off a torn tail so new records follow the last good one.
        wal.set_len(wal_len).map_err(|e| Error::io(&wal_path, e))?;
        wal.sync_all().map_err(|e| Error::io(&wal_path, e))?;
        sync_dir(&config.dir)?;
        tracing::info!(
            dir = %config.dir.display(),
            revision = state.revision,
            compacted = state.compacted,
            keys = state.keys.len(),
            "embedded store opened"
        );

        let (head, _) = watch::channel(state.durable);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            head,
            quota_bytes: config.quota_bytes,
            under_pressure: std::sync::atomic::AtomicBool::new(false),
            pressure: tokio::sync::Notify::new(),
        });
        let (requests, receiver) = mpsc::channel(4096);
        let committer = Committer {
            shared: shared.clone(),
            wal,
            wal_path,
            wal_len,
            wal_seq,
            checkpointing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            config,
        };
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| Error::io("store-commit thread", e))?;
        Ok(EmbeddedStore { shared, requests })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn range_now(&self, request: &RangeRequest) -> Result<RangeResponse> {
        let state = self.read_state();
        if let Some(reason) = &state.failed {
            return Err(Error::Failed(reason.clone()));
        }
        let at = request.revision.filter(|r| *r > 0).unwrap_or(state.durable);
        if at > state.durable {
            return Err(Error::FutureRevision { requested: at, current: state.durable });
        }
        if at < state.compacted {
            return Err(Error::Compacted { requested: at, compacted: state.compacted });
        }
        let mut kvs = Vec::new();
        let mut more = false;
        if request.start < request.end {
            for (key, versions) in state.keys.range(request.start.clone()..request.end.clone()) {
                let Some(kv) = visible_at(key, versions, at) else { continue };
                if request.limit > 0 && kvs.len() == request.limit {
                    more = true;
                    break;
                }
                kvs.push(kv);
            }
        }
        Ok(RangeResponse { kvs, revision: at, more })
    }

    /// Takes the next batch of events at or after `next` matching `prefix`. Returns the events
    /// and the next revision to read from.
    fn take_events(&self, prefix: &str, next: Revision) -> Result<(Vec<Event>, Revision)> {
        let state = self.read_state();
        if let Some(reason) = &state.failed {
            return Err(Error::Failed(reason.clone()));
        }
        if next < state.compacted {
            return Err(Error::Compacted { requested: next, compacted: state.compacted });
        }
        let mut events = Vec::new();
        // `reached` is the next revision to read once this batch is delivered.
        let mut reached = next;
        let mut cut_short = false;
        let start = state.log.partition_point(|(rev, _)| *rev < next);
        for (rev, event) in state.log.range(start..) {
            if *rev > state.durable {
                break;
            }
            // Only stop at a revision boundary so that one transaction is never split.
            if events.len() >= WATCH_BATCH && *rev >= reached {
                cut_short = true;
                break;
            }
            reached = rev + 1;
            if event.kv.key.starts_with(prefix) {
                events.push(event.clone());
            }
        }
        if !cut_short {
            reached = reached.max(state.durable + 1);
        }
        Ok((events, reached))
    }
}

fn visible_at(key: &str, versions: &[Version], at: Revision) -> Option<KeyValue> {
    let idx = versions.partition_point(|v| v.mod_revision <= at);
    let version = versions.get(idx.checked_sub(1)?)?;
    let value = version.value.clone()?;
    Some(KeyValue {
        key: key.to_owned(),
        value,
        create_revision: version.create_revision,
        mod_revision: version.mod_revision,
        version: version.version,
    })
}

fn latest(key: &str, versions: &[Version]) -> Option<KeyValue> {
    visible_at(key, versions, Revision::MAX)
}

impl Store for EmbeddedStore {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>> {
        Box::pin(async move { self.range_now(&request) })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>> {
        Box::pin(async move {
            let (reply, response) = oneshot::channel();
            self.requests.send(Request::Txn(txn, reply)).await.map_err(|_| Error::Closed)?;
            response.await.map_err(|_| Error::Closed)?
        })
    }

    fn watch(&self, prefix: &str, start_revision: Revision) -> BoxFuture<'_, Result<WatchStream>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let compacted = self.read_state().compacted;
            if start_revision < compacted {
                return Err(Error::Compacted { requested: start_revision, compacted });
            }
            let store = self.clone();
            let head = self.shared.head.subscribe();
            let cursor = WatchCursor {
                store,
                head,
                prefix,
                next: start_revision.max(1),
                last_sent: Instant::now(),
                done: false,
            };
            let stream = stream::unfold(cursor, |mut cursor| async move {
                let item = cursor.next_message().await?;
                Some((item, cursor))
            });
            Ok(stream.boxed())
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (reply, response) = oneshot::channel();
            self.requests
                .send(Request::Compact(revision, reply))
                .await
                .map_err(|_| Error::Closed)?;
            response.await.map_err(|_| Error::Closed)?
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move { Ok(self.read_state().durable) })
    }

    fn space_pressure(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.pressure.notified())
    }

    fn status(&self) -> BoxFuture<'_, Result<StoreStatus>> {
        Box::pin(async move {
            let state = self.read_state();
            Ok(StoreStatus {
                backend: "embedded",
                revision: state.durable,
                compact_revision: state.compacted,
                size_bytes: state.retained_bytes,
                quota_bytes: Some(self.shared.quota_bytes),
            })
        })
    }
}

struct WatchCursor {
    store: EmbeddedStore,
    head: watch::Receiver<Revision>,
    prefix: String,
    next: Revision,
    last_sent: Instant,
    done: bool,
}

impl WatchCursor {
    async fn next_message(&mut self) -> Option<Result<WatchMessage>> {
        if self.done {
            return None;
        }
        loop {
            // Mark the current head as seen before reading, so a commit that lands between the
            // read and the wait still wakes us.
            self.head.borrow_and_update();
            match self.store.take_events(&self.prefix, self.next) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok((events, reached)) => {
                    let advanced = reached > self.next;
                    self.next = reached;
                    if !events.is_empty() {
                        self.last_sent = Instant::now();
                        return Some(Ok(WatchMessage::Events(events)));
                    }
                    if advanced && self.last_sent.elapsed() >= PROGRESS_INTERVAL {
                        self.last_sent = Instant::now();
                        return Some(Ok(WatchMessage::Progress(self.next - 1)));
                    }
                    if advanced {
                        continue;
                    }
                }
            }
            if self.head.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// The shortest time between two write-ahead log flushes while writes keep arriving.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

struct Committer {
    shared: Arc<Shared>,
    wal: File,
    wal_path: PathBuf,
    wal_len: u64,
    /// Sequence number of the current log segment (`wal.<seq>`).
    wal_seq: u64,
    /// Set while a snapshot is being written in the background.
    checkpointing: Arc<std::sync::atomic::AtomicBool>,
    config: Config,
}

impl Committer {
    /// Tells the compactor when space is short and history could give some back: a write
    /// refused for the quota, or a delete while writes are being refused.
    fn note_pressure(&self, txn: &Txn, result: &Result<TxnResponse>) {
        let refused = matches!(result, Err(Error::QuotaExceeded { .. }));
        if refused {
            self.shared.under_pressure.store(true, Ordering::Relaxed);
        }
        let deleted = result.is_ok()
            && txn.success.iter().chain(&txn.failure).any(|op| matches!(op, Op::Delete { .. }));
        if refused || (deleted && self.shared.under_pressure.load(Ordering::Relaxed)) {
            self.shared.pressure.notify_one();
        }
    }

    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let mut buffer = Vec::new();
        let mut last_sync: Option<Instant> = None;
        while let Some(first) = receiver.blocking_recv() {
            // Under a steady stream of writes each fsync would carry only the two or three
            // that arrived during the previous one, and the flushes (a device round trip and
            // two thread wake-ups each) become the main cost. Spacing commits at least
            // MIN_COMMIT_INTERVAL apart while busy lets batches grow; an idle store (last
            // commit longer ago) commits at once, so a lone write waits no longer.
            if let Some(since) = last_sync.map(|t| t.elapsed())
                && since < MIN_COMMIT_INTERVAL
            {
                std::thread::sleep(MIN_COMMIT_INTERVAL - since);
            }
            let mut batch = vec![first];
            while batch.len() < 512 {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            buffer.clear();
            let mut replies = Vec::with_capacity(batch.len());
            {
                let mut state = self.shared.state.write().unwrap_or_else(PoisonError::into_inner);
                for request in batch {
                    if let Some(reason) = &state.failed {
                        replies.push(Reply::fail(request, reason));
                        continue;
                    }
                    match request {
                        Request::Txn(txn, reply) => {
                            let result =
                                state.apply_txn(&txn, self.shared.quota_bytes, &mut buffer);
                            self.note_pressure(&txn, &result);
                            replies.push(Reply::Txn(reply, result));
                        }
                        Request::Compact(revision, reply) => {
                            let result = state.compact(revision, &mut buffer);
                            if state.retained_bytes <= self.shared.quota_bytes / 10 * 9 {
                                self.shared.under_pressure.store(false, Ordering::Relaxed);
                            }
                            replies.push(Reply::Compact(reply, result));
                        }
                    }
                }
            }
            let durable = if buffer.is_empty() {
                Ok(())
            } else {
                last_sync = Some(Instant::now());
                self.append(&buffer)
            };
            let new_head = {
                let mut state = self.shared.state.write().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = &durable {
                    // The memory is now ahead of the disk and a retried fsync cannot be trusted
                    // (the kernel may have dropped the dirty pages): refuse everything until a
                    // restart replays what really is on disk.
                    tracing::error!(error = %e, "write-ahead log append failed; store is failed");
                    state.failed = Some(e.to_string());
                } else {
                    state.durable = state.revision;
                }
                state.durable
            };
            for reply in replies {
                reply.send(durable.as_ref().err().map(|e| e.to_string()));
            }
            self.shared.head.send_replace(new_head);
            if durable.is_ok()
                && let Err(e) = self.maybe_checkpoint()
            {
                tracing::error!(error = %e, "store checkpoint failed; will retry after the next write");
            }
        }
        tracing::debug!("store committer stopped");
    }

    fn append(&mut self, buffer: &[u8]) -> Result<()> {
        let path = &self.wal_path;
        self.wal.write_all(buffer).map_err(|e| Error::io(path, e))?;
        self.wal.sync_data().map_err(|e| Error::io(path, e))?;
        self.wal_len += buffer.len() as u64;
        Ok(())
    }

    /// Folds the log into a new snapshot once it has grown past the retained data. The state is
    /// copied (values are shared, not copied) and the log rotated to a new segment here; the
    /// snapshot is encoded and written on another thread, so writers do not wait for it.
    fn maybe_checkpoint(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let retained =
            self.shared.state.read().unwrap_or_else(PoisonError::into_inner).retained_bytes;
        if self.wal_len < self.config.checkpoint_min_bytes.max(retained)
            || self.checkpointing.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        let started = Instant::now();
        let copy = {
            let state = self.shared.state.read().unwrap_or_else(PoisonError::into_inner);
            SnapshotData {
                revision: state.durable,
                compacted: state.compacted,
                keys: state.keys.clone(),
            }
        };
        let covered = self.wal_seq;
        let next = segment_path(&self.config.dir, covered + 1);
        let rotated = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&next)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| Error::io(&next, e));
        let wal = match rotated.and_then(|f| sync_dir(&self.config.dir).map(|()| f)) {
            Ok(f) => f,
            Err(e) => {
                self.checkpointing.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let log_bytes = self.wal_len;
        self.wal = wal;
        self.wal_path = next;
        self.wal_seq = covered + 1;
        self.wal_len = 0;
        let dir = self.config.dir.clone();
        let checkpointing = self.checkpointing.clone();
        let copied_ms = started.elapsed().as_millis() as u64;
        let spawned = std::thread::Builder::new().name("store-snapshot".into()).spawn(move || {
            match write_snapshot(&dir, &copy, covered) {
                Ok(bytes) => tracing::info!(
                    snapshot_bytes = bytes,
                    log_bytes,
                    copy_ms = copied_ms,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store checkpoint written"
                ),
                // The old snapshot and every log segment are still there: nothing is lost, and
                // the next checkpoint tries again.
                Err(e) => tracing::error!(error = %e, "store checkpoint failed"),
            }
            checkpointing.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            self.checkpointing.store(false, Ordering::Release);
            return Err(Error::io("store-snapshot thread", e));
        }
        Ok(())
    }
}

/// A consistent copy of the state for a snapshot.
struct SnapshotData {
    revision: Revision,
    compacted: Revision,
    keys: BTreeMap<String, Vec<Version>>,
}

/// Makes `dir` 0700 and every file in it 0600.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let path = entry.path();
        if path.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes the snapshot atomically, then deletes the log segments it covers.
fn write_snapshot(dir: &Path, data: &SnapshotData, covered_seq: u64) -> Result<usize> {
    let snapshot = encode_snapshot(data);
    let tmp = dir.join(format!("snapshot.tmp.{covered_seq}"));
    let path = dir.join("snapshot");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&snapshot).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    // A crash before these removals only means the next open replays records the snapshot
    // already holds; replay skips them by revision.
    for (seq, segment) in wal_segments(dir)? {
        if seq <= covered_seq {
            std::fs::remove_file(&segment).map_err(|e| Error::io(&segment, e))?;
        }
    }
    sync_dir(dir)?;
    Ok(snapshot.len())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal.{seq:010}"))
}

/// The log segments in order: `wal.<seq>` files (and a bare `wal` from older stores, first).
fn wal_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seq = match name.strip_prefix("wal") {
            Some("") => Some(0),
            Some(rest) => rest.strip_prefix('.').and_then(|n| n.parse::<u64>().ok()),
            None => None,
        };
        if let Some(seq) = seq {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

enum Reply {
    Txn(oneshot::Sender<Result<TxnResponse>>, Result<TxnResponse>),
    Compact(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn fail(request: Request, reason: &str) -> Reply {
        match request {
            Request::Txn(_, reply) => Reply::Txn(reply, Err(Error::Failed(reason.to_owned()))),
            Request::Compact(_, reply) => {
                Reply::Compact(reply, Err(Error::Failed(reason.to_owned())))
            }
        }
    }

    fn send(self, sync_error: Option<String>) {
        // A dropped receiver means the caller gave up; the write stands regardless.
        match self {
            Reply::Txn(reply, result) => {
                let _ = reply.send(match sync_error {
                    Some(e) => Err(Error::Failed(e)),
                    None => result,
                });
            }
            Reply::Compact(reply, result) => {
                let _ = reply.send(match sync_error {
                    Some(e) => Err(Error::Failed(e)),
                    None => result,
                });
            }
        }
    }
}

const RECORD_TXN: u8 = 1;
const RECORD_COMPACT: u8 = 2;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

impl State {
    fn mod_revision_of(&self, key: &str) -> Revision {
        self.keys.get(key).and_then(|v| latest(key, v)).map_or(0, |kv| kv.mod_revision)
    }

    fn apply_txn(&mut self, txn: &Txn, quota: u64, wal: &mut Vec<u8>) -> Result<TxnResponse> {
        let succeeded = txn.compares.iter().all(|compare| match compare {
            Compare::ModRevision { key, equals } => self.mod_revision_of(key) == *equals,
        });
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let added: u64 = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() as u64 + value.len() as u64 + VERSION_OVERHEAD,
                _ => 0,
            })
            .sum();
        if added > 0 && self.retained_bytes + added > quota {
            return Err(Error::QuotaExceeded { used: self.retained_bytes + added, quota });
        }
        let writes = ops.iter().any(|op| match op {
            Op::Put { .. } => true,
            Op::Delete { key } => self.keys.get(key).and_then(|v| latest(key, v)).is_some(),
            Op::Get { .. } => false,
        });
        let revision = if writes { self.revision + 1 } else { self.revision };
        let mut results = Vec::with_capacity(ops.len());
        let mut record = Vec::new();
        let mut n_ops: u32 = 0;
        for op in ops {
            match op {
                Op::Get { key } => {
                    results.push(OpResult::Get(self.keys.get(key).and_then(|v| latest(key, v))))
                }
                Op::Put { key, value } => {
                    let prev = self.write(key, Some(value.clone()), revision);
                    encode_op(&mut record, OP_PUT, key, Some(value));
                    n_ops += 1;
                    results.push(OpResult::Put { prev });
                }
                Op::Delete { key } => {
                    let exists = self.keys.get(key).and_then(|v| latest(key, v)).is_some();
                    let prev = if exists { self.write(key, None, revision) } else { None };
                    if exists {
                        encode_op(&mut record, OP_DELETE, key, None);
                        n_ops += 1;
                    }
                    results.push(OpResult::Delete { prev });
                }
            }
        }
        if writes {
            self.revision = revision;
            let mut payload = Vec::with_capacity(record.len() + 13);
            payload.push(RECORD_TXN);
            payload.extend_from_slice(&revision.to_le_bytes());
            payload.extend_from_slice(&n_ops.to_le_bytes());
            payload.extend_from_slice(&record);
            frame(wal, &payload);
        }
        Ok(TxnResponse { succeeded, revision, results })
    }

    /// Records a new version of `key` at `revision` (a delete when `value` is None) and returns
    /// the previous live value.
    fn write(&mut self, key: &str, value: Option<Bytes>, revision: Revision) -> Option<KeyValue> {
        let versions = self.keys.entry(key.to_owned()).or_default();
        let prev = latest(key, versions);
        let (create_revision, version) = match (&prev, &value) {
            (Some(p), Some(_)) => (p.create_revision, p.version + 1),
            (None, Some(_)) => (revision, 1),
            (_, None) => (0, 0),
        };
        let size =
            key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64) + VERSION_OVERHEAD;
        // Two ops on one key in one txn: the later one replaces the earlier, as in etcd.
        if let Some(last) = versions.last_mut().filter(|v| v.mod_revision == revision) {
            self.retained_bytes -= key.len() as u64
                + last.value.as_ref().map_or(0, |v| v.len() as u64)
                + VERSION_OVERHEAD;
            *last =
                Version { create_revision, mod_revision: revision, version, value: value.clone() };
            self.log.retain(|(rev, e)| !(*rev == revision && e.kv.key == key));
        } else {
            versions.push(Version {
                create_revision,
                mod_revision: revision,
                version,
                value: value.clone(),
            });
        }
        self.retained_bytes += size;
        let event = match value {
            Some(value) => Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.to_owned(),
                    value,
                    create_revision,
                    mod_revision: revision,
                    version,
                },
                prev_kv: prev.clone(),
            },
            None => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_owned(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                },
                prev_kv: prev.clone(),
            },
        };
        self.log.push_back((revision, event));
        prev
    }

    fn compact(&mut self, revision: Revision, wal: &mut Vec<u8>) -> Result<()> {
        if revision <= self.compacted {
            return Err(Error::Compacted { requested: revision, compacted: self.compacted });
        }
        if revision > self.revision {
            return Err(Error::FutureRevision { requested: revision, current: self.revision });
        }
        self.compact_in_memory(revision);
        let mut payload = vec![RECORD_COMPACT];
        payload.extend_from_slice(&revision.to_le_bytes());
        frame(wal, &payload);
        Ok(())
    }

    fn compact_in_memory(&mut self, revision: Revision) {
        let mut freed = 0u64;
        self.keys.retain(|key, versions| {
            // Keep the newest version at or below `revision` (the state as of the compaction
            // point) and everything after it; a delete at or below it leaves nothing to keep.
            let keep_from =
                versions.partition_point(|v| v.mod_revision <= revision).saturating_sub(1);
            let mut drop_count = keep_from;
            if versions
                .get(keep_from)
                .is_some_and(|v| v.mod_revision <= revision && v.value.is_none())
            {
                drop_count += 1;
            }
            for v in versions.drain(..drop_count) {
                freed += key.len() as u64
                    + v.value.as_ref().map_or(0, |v| v.len() as u64)
                    + VERSION_OVERHEAD;
            }
            !versions.is_empty()
        });
        self.retained_bytes -= freed;
        let cut = self.log.partition_point(|(rev, _)| *rev < revision);
        self.log.drain(..cut);
        self.compacted = revision;
    }

    /// Applies a log record during recovery.
    fn replay(&mut self, payload: &[u8]) -> std::result::Result<(), String> {
        let mut reader = Reader { data: payload, pos: 0 };
        match reader.u8()? {
            RECORD_TXN => {
                let revision = reader.i64()?;
                let n = reader.u32()?;
                if revision <= self.revision {
                    return Ok(()); // already in the snapshot
                }
                for _ in 0..n {
                    let op = reader.u8()?;
                    let key = reader.string()?;
                    let value = if op == OP_PUT {
                        Some(Bytes::copy_from_slice(reader.bytes()?))
                    } else {
                        None
                    };
                    self.write(&key, value, revision);
                }
                self.revision = revision;
                Ok(())
            }
            RECORD_COMPACT => {
                let revision = reader.i64()?;
                if revision > self.compacted && revision <= self.revision {
                    self.compact_in_memory(revision);
                }
                Ok(())
            }
            other => Err(format!("unknown record type {other}")),
        }
    }
}

fn encode_op(out: &mut Vec<u8>, op: u8, key: &str, value: Option<&Bytes>) {
    out.push(op);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    if let Some(value) = value {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or("truncated record")?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> std::result::Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "key is not UTF-8".to_owned())
    }
}

/// Replays the log into `state`; returns the length of its valid prefix.
fn replay_wal(path: &Path, state: &mut State) -> Result<u64> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        state.replay(payload).map_err(|reason| Error::Corrupt { path: path.to_owned(), reason })?;
        pos += 8 + len;
    }
    if pos < data.len() {
        tracing::warn!(path = %path.display(), valid = pos, len = data.len(), "discarding torn tail of the write-ahead log");
    }
    Ok(pos as u64)
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"KRUSTSN1";

fn encode_snapshot(state: &SnapshotData) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + state.keys.len() * 256);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&state.revision.to_le_bytes());
    out.extend_from_slice(&state.compacted.to_le_bytes());
    out.extend_from_slice(&(state.keys.len() as u64).to_le_bytes());
    for (key, versions) in &state.keys {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(versions.len() as u32).to_le_bytes());
        for v in versions {
            out.extend_from_slice(&v.create_revision.to_le_bytes());
            out.extend_from_slice(&v.mod_revision.to_le_bytes());
            out.extend_from_slice(&v.version.to_le_bytes());
            match &v.value {
                Some(value) => {
                    out.push(1);
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(value);
                }
                None => out.push(0),
            }
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn load_snapshot(path: &Path, state: &mut State) -> Result<()> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |reason: String| Error::Corrupt { path: path.to_owned(), reason };
    if data.len() < SNAPSHOT_MAGIC.len() + 4 || &data[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut r = Reader { data: body, pos: 8 };
    state.revision = r.i64().map_err(corrupt)?;
    state.compacted = r.i64().map_err(corrupt)?;
    let n_keys = r.i64().map_err(corrupt)?;
    let mut events = Vec::new();
    for _ in 0..n_keys {
        let key = r.string().map_err(corrupt)?;
        let n = r.u32().map_err(corrupt)?;
        let mut versions: Vec<Version> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let create_revision = r.i64().map_err(corrupt)?;
            let mod_revision = r.i64().map_err(corrupt)?;
            let version = r.i64().map_err(corrupt)?;
            let value = match r.u8().map_err(corrupt)? {
                1 => Some(Bytes::copy_from_slice(r.bytes().map_err(corrupt)?)),
                _ => None,
            };
            state.retained_bytes +=
                key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64) + VERSION_OVERHEAD;
            // Rebuild the watch log: every version newer than the compaction point is an event.
            if mod_revision >= state.compacted {
                let prev = versions.last().and_then(|p| {
                    p.value.clone().map(|value| KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: p.create_revision,
                        mod_revision: p.mod_revision,
                        version: p.version,
                    })
                });
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone().unwrap_or_default(),
                    create_revision: if value.is_some() { create_revision } else { 0 },
                    mod_revision,
                    version: if value.is_some() { version } else { 0 },
                };
                let kind = if value.is_some() { EventKind::Put } else { EventKind::Delete };
                events.push((mod_revision, Event { kind, kv, prev_kv: prev }));
            }
            versions.push(Version { create_revision, mod_revision, version, value });
        }
        state.keys.insert(key, versions);
    }
    events.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.kv.key.cmp(&b.1.kv.key)));
    state.log = events.into();
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RangeRequest;

    fn put(key: &str, value: &[u8]) -> Txn {
        Txn {
            success: vec![Op::Put { key: key.into(), value: Bytes::copy_from_slice(value) }],
            ..Txn::default()
        }
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    async fn dump(store: &EmbeddedStore) -> Vec<KeyValue> {
        store.range(RangeRequest::prefix("/")).await.unwrap().kvs
    }

    #[tokio::test]
    async fn reopen_restores_every_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
            for i in 0..50 {
                store.txn(put(&format!("/k/{i}"), format!("v{i}").as_bytes())).await.unwrap();
            }
            store
                .txn(Txn { success: vec![Op::Delete { key: "/k/7".into() }], ..Txn::default() })
                .await
                .unwrap();
            store.compact(10).await.unwrap();
            (dump(&store).await, store.current_revision().await.unwrap())
        };
        let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
        assert_eq!((dump(&store).await, store.current_revision().await.unwrap()), before);
        assert_eq!(
            store.status().await.unwrap().compact_revision,
            10,
            "compaction survives a restart"
        );
    }

    #[tokio::test]
    async fn only_the_owner_may_read_the_store() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        {
            let store = EmbeddedStore::open(Config::with_dir(&store_dir)).unwrap();
            store.txn(put("/registry/secrets/a", b"secret")).await.unwrap();
        }
        // A file left readable by an older krust is closed again on open.
        let segment = wal_segments(&store_dir).unwrap().pop().unwrap().1;
        std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = EmbeddedStore::open(Config::with_dir(&store_dir)).unwrap();
        store.txn(put("/b", b"2")).await.unwrap();
        assert_eq!(mode(&store_dir), 0o700);
        for entry in std::fs::read_dir(&store_dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }

    #[tokio::test]
    async fn torn_log_tail_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
            store.txn(put("/a", b"1")).await.unwrap();
            dump(&store).await
        };
        // A crash in the middle of an append leaves a partial record.
        let segment = wal_segments(dir.path()).unwrap().pop().unwrap().1;
        let mut wal = OpenOptions::new().append(true).open(segment).unwrap();
        wal.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 1, 9]).unwrap();
        drop(wal);
        let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
        assert_eq!(dump(&store).await, before);
        store.txn(put("/b", b"2")).await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
        assert_eq!(dump(&store).await.len(), 2, "writes after a torn tail are replayed too");
    }

    #[tokio::test]
    async fn churn_keeps_disk_use_within_the_stated_bound() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            dir: dir.path().to_owned(),
            quota_bytes: 1 << 30,
            checkpoint_min_bytes: 256 << 10,
        };
        let store = EmbeddedStore::open(config.clone()).unwrap();
        let value = vec![b'x'; 1024];
        let mut max_seen = 0;
        for round in 0..40 {
            for i in 0..100 {
                store.txn(put(&format!("/lease/{}", i % 20), &value)).await.unwrap();
            }
            // Like the periodic compactor: keep only recent history.
            let revision = store.current_revision().await.unwrap();
            store.compact(revision - 50).await.unwrap();
            let retained = store.status().await.unwrap().size_bytes;
            let on_disk = dir_bytes(dir.path());
            max_seen = max_seen.max(on_disk);
            let bound = 2 * retained + 2 * config.checkpoint_min_bytes.max(retained) + 64 * 1024;
            assert!(
                on_disk <= bound,
                "round {round}: {on_disk} bytes on disk exceeds bound {bound}"
            );
        }
        // 4,000 writes of 1 KiB went in; without rewriting the log it would hold over 4 MiB.
        assert!(max_seen < 1 << 20, "disk use {max_seen} should stay near the checkpoint floor");
        drop(store);
        let store = EmbeddedStore::open(config).unwrap();
        assert_eq!(dump(&store).await.len(), 20);
    }

    #[tokio::test]
    async fn quota_rejects_writes_but_allows_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config { dir: dir.path().to_owned(), quota_bytes: 4096, checkpoint_min_bytes: 1 << 20 };
        let store = EmbeddedStore::open(config).unwrap();
        store.txn(put("/a", &[0; 1000])).await.unwrap();
        let err = store.txn(put("/b", &[0; 4000])).await.unwrap_err();
        assert!(matches!(err, Error::QuotaExceeded { .. }), "{err}");
        assert!(err.to_string().contains("database space exceeded"));
        store
            .txn(Txn { success: vec![Op::Delete { key: "/a".into() }], ..Txn::default() })
            .await
            .unwrap();
        assert_eq!(dump(&store).await.len(), 0);
    }

    #[tokio::test]
    async fn slow_watcher_gets_compacted_error_instead_of_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(Config::with_dir(dir.path())).unwrap();
        let mut watch = store.watch("/w/", 2).await.unwrap();
        for i in 0..3000 {
            store.txn(put(&format!("/w/{}", i % 10), b"v")).await.unwrap();
        }
        // The watcher has read nothing yet; compaction overtakes it.
        store.compact(2500).await.unwrap();
        let mut delivered = 0usize;
        let mut last = 0;
        let outcome = loop {
            match futures::StreamExt::next(&mut watch).await {
                Some(Ok(WatchMessage::Events(events))) => {
                    for e in events {
                        assert_eq!(
                            e.kv.mod_revision,
                            if last == 0 { 2 } else { last + 1 },
                            "no gaps"
                        );
                        last = e.kv.mod_revision;
                        delivered += 1;
                    }
                }
                Some(Ok(WatchMessage::Progress(_))) => {}
                Some(Err(e)) => break e,
                None => panic!("stream ended without telling the watcher"),
            }
        };
        assert!(matches!(outcome, Error::Compacted { .. }));
        assert!(delivered < 3000);
    }
}
