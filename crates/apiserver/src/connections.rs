//! Bounds on connections, so that clients that never authenticate cannot lock out those that
//! do: a cap on open connections below the process's file-descriptor limit, a smaller cap on
//! connections that have not proven who they are (evicting the oldest when a new one comes),
//! timeouts for the TLS handshake, for request headers and for idle connections, and
//! in-flight request budgets answered with 429 beyond them.
//!
//! Upstream relies on timeouts alone and has no cap: 20,000 idle TCP connections exhaust its
//! descriptors the same way. Here a flood of connections that never finish a handshake only
//! ever holds [`ConnectionLimits::max_unproven`] of them at a time, and a client presenting
//! a certificate gets in at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Connection bounds of one API server listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most; beyond it the oldest unproven one is closed, or, when none
    /// is, the new one is refused at once.
    pub max_connections: usize,
    /// Connections that have not (yet) presented a client certificate, at most; beyond it
    /// the oldest of them is closed.
    pub max_unproven: usize,
    /// Time to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send a request's headers (HTTP/1.1; it also closes a keep-alive connection
    /// that sends nothing for that long).
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1.1 or HTTP/2) with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection (upstream's
    /// `--http2-max-streams-per-connection`).
    pub max_concurrent_streams: u32,
    /// Largest header list a client may send over HTTP/2.
    pub max_header_list_size: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: descriptor_budget(),
            max_unproven: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 1000,
            max_header_list_size: 1 << 20,
        }
    }
}

/// Connections this process can afford: its open-file limit less room for the store, node
/// connections and outgoing clients.
fn descriptor_budget() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<usize>().ok()))
        })
        .unwrap_or(1024);
    limit.saturating_sub(limit / 8 + 256).max(64)
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Tracker {
    limits: ConnectionLimits,
    open: AtomicUsize,
    next_id: AtomicU64,
    /// Unproven connections by arrival order, each with the sender that closes it.
    unproven: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

/// One admitted connection: counted until dropped.
#[derive(Debug)]
pub struct Admitted {
    tracker: std::sync::Arc<Tracker>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Tracker {
    /// A tracker for these limits.
    pub fn new(limits: ConnectionLimits) -> Tracker {
        Tracker {
            limits,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            unproven: Mutex::new(BTreeMap::new()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn unproven(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.unproven.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection (unproven until [`Admitted::prove`]), evicting the oldest
    /// unproven one when a cap is reached; None when it must be refused.
    pub fn admit(self: &std::sync::Arc<Self>) -> Option<Admitted> {
        let mut unproven = self.unproven();
        let full = self.open.load(Ordering::Relaxed) >= self.limits.max_connections;
        if full || unproven.len() >= self.limits.max_unproven {
            match unproven.pop_first() {
                // The evicted connection's task closes it and gives back its slot shortly.
                Some((_, close)) => {
                    let _ = close.send(());
                }
                None if full => return None,
                None => {}
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, evicted) = oneshot::channel();
        unproven.insert(id, close);
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { tracker: self.clone(), id, evicted })
    }
}

impl Admitted {
    /// Resolves when the connection is evicted to make room; never, once it is proven.
    pub async fn evicted(&mut self) {
        if (&mut self.evicted).await.is_err() {
            // Proven: the sender was dropped without a word.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the connection has been told to close.
    #[cfg(test)]
    fn was_evicted(&mut self) -> bool {
        self.evicted.try_recv().is_ok()
    }

    /// The connection has proven who it is (a verified client certificate): it is no longer
    /// evicted for newcomers.
    pub fn prove(&self) {
        self.tracker.unproven().remove(&self.id);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.tracker.unproven().remove(&self.id);
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests in flight on one connection, and when it last had one, for the idle timeout.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request's end.
    last_ms: AtomicU64,
    epoch: Option<std::time::Instant>,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Activity {
        Activity { epoch: Some(std::time::Instant::now()), ..Activity::default() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.map_or(0, |e| e.elapsed().as_millis() as u64)
    }

    /// A request started; the guard ends it.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let since = Duration::from_millis(
                self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)),
            );
            if self.in_flight.load(Ordering::Relaxed) == 0 && since >= idle {
                return;
            }
            let wait = if self.in_flight.load(Ordering::Relaxed) > 0 { idle } else { idle - since };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }
}

/// One request in flight (until dropped, which is when its response body ends).
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Budgets of requests in flight across the server (upstream's `--max-requests-inflight` and
/// `--max-mutating-requests-inflight`), and a separate one for long-running requests
/// (watches, logs, exec, attach, port-forward), so that neither kind can starve the other:
/// a long-running request holds its slot for as long as it streams.
#[derive(Debug)]
pub struct InflightLimits {
    read_only: Arc<AtomicUsize>,
    mutating: Arc<AtomicUsize>,
    long_running: Arc<AtomicUsize>,
    max_read_only: usize,
    max_mutating: usize,
    max_long_running: usize,
}

impl Default for InflightLimits {
    fn default() -> Self {
        InflightLimits::new(400, 200)
    }
}

/// One counted request (until dropped).
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Long-running requests allowed at once by default: far above what clients hold (every
/// informer of every controller and node is one watch), far below what exhausts memory.
pub const MAX_LONG_RUNNING: usize = 16_384;

impl InflightLimits {
    /// Budgets of `max_read_only` and `max_mutating` requests (0 = unlimited).
    pub fn new(max_read_only: usize, max_mutating: usize) -> InflightLimits {
        InflightLimits::with_long_running(max_read_only, max_mutating, MAX_LONG_RUNNING)
    }

    /// The same, with a budget for long-running requests.
    pub fn with_long_running(
        max_read_only: usize,
        max_mutating: usize,
        max_long_running: usize,
    ) -> InflightLimits {
        InflightLimits {
            read_only: Arc::default(),
            mutating: Arc::default(),
            long_running: Arc::default(),
            max_read_only,
            max_mutating,
            max_long_running,
        }
    }

    /// Takes a slot for a request of `verb` (`long_running` for watches and streams), or
    /// None when its budget is spent.
    pub fn acquire(&self, verb: &str, long_running: bool) -> Option<Slot> {
        let (counter, max) = if long_running {
            (&self.long_running, self.max_long_running)
        } else if matches!(verb, "get" | "list" | "watch") {
            (&self.read_only, self.max_read_only)
        } else {
            (&self.mutating, self.max_mutating)
        };
        let now = counter.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(counter.clone());
        if max > 0 && now >= max {
            return None;
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unproven_connection_makes_room() {
        let tracker = std::sync::Arc::new(Tracker::new(ConnectionLimits {
            max_connections: 3,
            max_unproven: 2,
            ..ConnectionLimits::default()
        }));
        let mut a = tracker.admit().unwrap();
        let b = tracker.admit().unwrap();
        b.prove();
        let mut c = tracker.admit().unwrap();
        assert_eq!(tracker.open(), 3);
        // Full: the oldest unproven (a) is told to close; the proven one (b) is kept.
        let mut d = tracker.admit().unwrap();
        assert!(a.was_evicted());
        assert!(!c.was_evicted());
        drop(a);
        d.prove();
        c.prove();
        // Full of proven connections: a newcomer is refused.
        assert!(tracker.admit().is_none());
        drop((b, c));
        assert!(!d.was_evicted());
        assert!(tracker.admit().is_some());
    }

    #[test]
    fn inflight_budgets_are_separate_and_given_back() {
        let limits = InflightLimits::with_long_running(1, 1, 1);
        let read = limits.acquire("list", false).unwrap();
        assert!(limits.acquire("get", false).is_none());
        let write = limits.acquire("create", false).unwrap();
        assert!(limits.acquire("patch", false).is_none());
        let watch = limits.acquire("watch", true).unwrap();
        assert!(limits.acquire("watch", true).is_none());
        assert!(limits.acquire("create", true).is_none(), "exec shares the streams' budget");
        drop(read);
        assert!(limits.acquire("get", false).is_some());
        drop(write);
        assert!(limits.acquire("delete", false).is_some());
        drop(watch);
        assert!(limits.acquire("watch", true).is_some());
    }
}
