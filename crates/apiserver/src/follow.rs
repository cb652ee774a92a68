//! Keeping an in-memory view of part of the store current, for the server's own indexes
//! (RBAC, the node authorizer's graph): read whole, then every change after it from a
//! watch; when a watch ends (compaction, a store restart) the view is read whole again.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use storage::{Event, Revision, SharedStore, WatchMessage};

/// Feeds every change under `prefixes` after `revision` to `apply`, and calls `reload` (which
/// reads the view whole and returns the revision it read at) whenever a watch ends; `what`
/// names the view in the log. Never returns: stop it by dropping its task.
pub async fn follow<R, F>(
    store: SharedStore,
    prefixes: &[&str],
    what: &str,
    mut revision: Revision,
    mut apply: impl FnMut(&[Event]),
    mut reload: R,
) where
    R: FnMut() -> F,
    F: Future<Output = Result<Revision, storage::Error>>,
{
    loop {
        let watches = futures::future::try_join_all(
            prefixes.iter().map(|prefix| store.watch(prefix, revision + 1)),
        )
        .await;
        match watches {
            Ok(streams) => {
                let mut all = futures::stream::select_all(streams);
                while let Some(message) = all.next().await {
                    match message {
                        Ok(WatchMessage::Events(events)) => {
                            if let Some(last) = events.iter().map(|e| e.kv.mod_revision).max() {
                                revision = revision.max(last);
                            }
                            apply(&events);
                        }
                        // With several watches, each may be at another revision: a reload
                        // reads everything again anyway.
                        Ok(WatchMessage::Progress(_)) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, view = what, "watch ended; reading again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, view = what, "watching failed"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match reload().await {
            Ok(r) => revision = r,
            Err(e) => tracing::warn!(error = %e, view = what, "reading again failed"),
        }
    }
}
