//! A work queue of object keys with upstream's guarantees: a key is never processed by two
//! workers at once, a key added while it is processed is processed again afterwards, keys
//! added many times before a worker takes them are processed once, and failures are retried
//! with exponential back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Keys whose batching window is open, and when it closes (see [`Queue::add_batched`]).
    batching: HashMap<String, tokio::time::Instant>,
}

/// The queue; share it behind an `Arc`.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).finish()
    }
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Arc<Queue> {
        Arc::new(Queue::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut state = self.state();
        if !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Queues `key` once `window` has passed, folding every add of it meanwhile into that
    /// one: for keys that a stream of events touches (a ReplicaSet whose pods change by the
    /// hundred), so that one sync sees a window's events instead of each event paying for a
    /// sync over every pod. A key already waiting is left as it is.
    pub fn add_batched(self: &Arc<Self>, key: impl Into<String>, window: Duration) {
        let key = key.into();
        let closes = tokio::time::Instant::now() + window;
        {
            let mut state = self.state();
            if state.dirty.contains(&key) {
                return;
            }
            // A window that closes sooner replaces a longer one still open (an owner whose
            // outstanding creations were all just seen is no longer content to wait long).
            match state.batching.get(&key) {
                Some(open) if *open <= closes => return,
                _ => {
                    state.batching.insert(key.clone(), closes);
                }
            }
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(closes).await;
            let mut state = queue.state();
            // Only the window still open adds the key; a replaced one ends silently.
            if state.batching.get(&key) != Some(&closes) {
                return;
            }
            state.batching.remove(&key);
            drop(state);
            queue.add(key);
        });
    }

    /// Queues `key` again after a delay that doubles with each consecutive failure
    /// (5 ms up to a minute).
    pub fn add_rate_limited(self: &Arc<Self>, key: impl Into<String>) -> u32 {
        let key = key.into();
        let failures = {
            let mut state = self.state();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = Duration::from_millis(5)
            .saturating_mul(1u32 << failures.min(14))
            .min(Duration::from_secs(60));
        self.add_after(key, delay);
        failures
    }

    /// Forgets the failures of `key` (after it succeeded).
    pub fn forget(&self, key: &str) {
        self.state().failures.remove(key);
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next key, waiting for one; call [`Queue::done`] when finished with it.
    pub async fn get(&self) -> String {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    if more {
                        // Another worker may be waiting while keys remain.
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; queues it again if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let mut state = self.state();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.to_owned());
            drop(state);
            self.notify.notify_one();
        }
    }
}

/// What a sync asks of the queue afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing: done until the next change.
    No,
    /// Look again after this long (e.g. when minReadySeconds run out).
    After(Duration),
}

/// Runs `workers` workers that take keys from `queue` and call `sync`; a failed sync is
/// retried with back-off.
pub async fn run_workers<F, Fut, E>(queue: Arc<Queue>, workers: usize, name: &'static str, sync: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Requeue, E>> + Send,
    E: std::fmt::Display,
{
    let sync = Arc::new(sync);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let sync = sync.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.get().await;
                let started = std::time::Instant::now();
                let result = sync(key.clone()).await;
                tracing::debug!(controller = name, %key, took = ?started.elapsed(), ok = result.is_ok(), "synced");
                match result {
                    Ok(requeue) => {
                        queue.forget(&key);
                        if let Requeue::After(delay) = requeue {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(e) => {
                        // A conflict or a lagging cache fails a sync now and then and the retry
                        // fixes it; one that keeps failing needs an operator's eyes.
                        let failures = queue.add_rate_limited(key.clone());
                        if failures >= 5 && failures.is_power_of_two() || failures == 5 {
                            tracing::warn!(controller = name, %key, failures, error = %e, "sync keeps failing; retrying with back-off");
                        } else {
                            tracing::debug!(controller = name, %key, error = %e, "sync failed; retrying");
                        }
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_reprocessed_when_added_during_processing() {
        let q = Queue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await;
        assert_eq!(a, "a");
        // Added while processing: not handed out again until done.
        q.add("a");
        assert_eq!(q.get().await, "b");
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.get().await, "a");
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn batched_adds_within_a_window_become_one() {
        let q = Queue::new();
        q.add_batched("rs", Duration::from_millis(20));
        q.add_batched("rs", Duration::from_millis(20));
        // Nothing is handed out before the window closes.
        assert!(q.is_empty());
        assert_eq!(q.get().await, "rs");
        q.done("rs");
        {
            let state = q.state();
            assert!(state.batching.is_empty() && state.dirty.is_empty() && state.queue.is_empty());
        }
        // A key already waiting is not batched again.
        q.add("rs");
        q.add_batched("rs", Duration::from_millis(20));
        assert!(q.state().batching.is_empty());
        assert_eq!(q.get().await, "rs");
        q.done("rs");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_window_replaces_a_longer_one_still_open() {
        let q = Queue::new();
        let start = tokio::time::Instant::now();
        q.add_batched("ds", Duration::from_millis(500));
        q.add_batched("ds", Duration::from_millis(50));
        assert_eq!(q.get().await, "ds");
        assert_eq!(start.elapsed(), Duration::from_millis(50), "the shorter window decides");
        q.done("ds");
        // The replaced window ends without adding the key once more.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(q.is_empty());
        // A longer window does not extend a shorter one.
        q.add_batched("ds", Duration::from_millis(50));
        q.add_batched("ds", Duration::from_millis(500));
        let start = tokio::time::Instant::now();
        assert_eq!(q.get().await, "ds");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }
}
