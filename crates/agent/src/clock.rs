//! The agent's clock: wall time in nanoseconds since the epoch, as the runtime stamps its
//! containers. A unit test moves it forward to walk through back-offs without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall time, with an offset a test can advance. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ns: Arc<AtomicI64>,
}

impl Clock {
    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> i64 {
        jiff::Timestamp::now().as_nanosecond() as i64 + self.offset_ns.load(Ordering::Relaxed)
    }

    /// Moves the clock forward by `by`.
    #[cfg(test)]
    pub fn advance(&self, by: std::time::Duration) {
        self.offset_ns.fetch_add(by.as_nanos() as i64, Ordering::Relaxed);
    }
}
