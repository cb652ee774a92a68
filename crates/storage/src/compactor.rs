//! Periodic compaction, the same for every backend: each interval, compact to the revision that
//! was current one interval ago, so clients always have at least one interval of history to
//! resume watches from.
//!
//! The loop never stops on an error: it logs it, counts it in [`CompactorStats`] (exported as
//! metrics) and tries again at the next tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::{Error, Revision, SharedStore};

/// Counters a health check or `/metrics` can read.
#[derive(Debug, Default)]
pub struct CompactorStats {
    /// Successful compactions.
    pub compactions: AtomicU64,
    /// Failed compaction attempts.
    pub failures: AtomicU64,
    /// The revision of the last successful compaction.
    pub last_revision: AtomicI64,
    /// Unix seconds of the last successful compaction (0 = never).
    pub last_success_unix: AtomicI64,
}

/// Runs compaction every `interval` until the task is dropped.
pub async fn run(store: SharedStore, interval: Duration, stats: Arc<CompactorStats>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<Revision> = None;
    loop {
        let pressed = tokio::select! {
            _ = ticker.tick() => false,
            () = store.space_pressure() => true,
        };
        if pressed {
            // Out of space: history goes now, not in an interval, so that what was deleted
            // frees its room at once (watchers behind the current revision get 410 and
            // relist, as after any compaction). A short pause lets a burst of deletes land
            // first and bounds these compactions to about one a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(current) = store.current_revision().await
                && current > stats.last_revision.load(Ordering::Relaxed)
            {
                match store.compact(current).await {
                    Ok(()) | Err(Error::Compacted { .. }) => {
                        stats.compactions.fetch_add(1, Ordering::Relaxed);
                        stats.last_revision.store(current, Ordering::Relaxed);
                        tracing::warn!(
                            revision = current,
                            "store at its quota: compacted all history to make room"
                        );
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "compaction under space pressure failed");
                    }
                }
            }
            continue;
        }
        let current = match store.current_revision().await {
            Ok(revision) => revision,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "compactor could not read the current revision");
                continue;
            }
        };
        if let Some(target) = previous.filter(|p| *p > stats.last_revision.load(Ordering::Relaxed))
        {
            match store.compact(target).await {
                // Someone (another server sharing etcd) compacted further already: fine.
                Ok(()) | Err(Error::Compacted { .. }) => {
                    stats.compactions.fetch_add(1, Ordering::Relaxed);
                    stats.last_revision.store(target, Ordering::Relaxed);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    stats.last_success_unix.store(now, Ordering::Relaxed);
                    tracing::debug!(revision = target, "compacted");
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, revision = target, "compaction failed; retrying next interval");
                }
            }
        }
        previous = Some(current);
    }
}
