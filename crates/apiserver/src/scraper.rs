//! The metrics API's scraper: every node agent's `/stats/summary`, each resolution period,
//! into [`Samples`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::proxy::NodeProxy;
use crate::resource_metrics::{Samples, Summary};
use crate::rest::{ListOptions, Rest};

/// Agents scraped at once.
const PARALLEL: usize = 64;

/// The largest summary believed (110 pods of a few containers take ~100 KB); with 64 reads
/// at once, a hostile agent set can hold at most 256 MiB of the server.
const MAX_SUMMARY_BYTES: usize = 4 * 1024 * 1024;

/// Scrapes until dropped, every `resolution`.
pub async fn run(rest: Arc<Rest>, proxy: NodeProxy, samples: Arc<Samples>, resolution: Duration) {
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A scrape that takes longer than the period is cut there: a slow agent must not
        // hold back every other node's next reading.
        let timeout = resolution.min(Duration::from_secs(10));
        let started = std::time::Instant::now();
        scrape(&rest, &proxy, &samples, timeout).await;
        samples.scraped(started.elapsed());
    }
}

/// Whether the node is Ready (a NotReady node's failed scrape is expected, not news).
fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The agent endpoint of a node that has one: a kubelet port of 0 means it serves none
/// (simulated nodes).
fn endpoint(node: &Value) -> Option<std::net::SocketAddr> {
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port");
    if port.and_then(Value::as_u64) == Some(0) {
        return None;
    }
    crate::proxy::node_endpoint(node)
}

async fn scrape(rest: &Rest, proxy: &NodeProxy, samples: &Samples, timeout: Duration) {
    let Some(nodes_rt) = rest.registry.lookup("", "v1", "nodes") else { return };
    let nodes = match rest.list(&nodes_rt, None, &ListOptions::default()).await {
        Ok(page) => match page.objects() {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading nodes failed");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "metrics: listing nodes failed");
            return;
        }
    };
    let names: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    samples.retain(|n| names.contains(n));
    futures::stream::iter(nodes)
        .for_each_concurrent(PARALLEL, |node| async move {
            let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let Some(addr) = endpoint(&node) else {
                samples.forget(name);
                return;
            };
            let read = tokio::time::timeout(
                timeout,
                proxy.get(addr, "/stats/summary", MAX_SUMMARY_BYTES),
            )
            .await;
            let summary = match read {
                Ok(Ok(bytes)) => serde_json::from_slice::<Summary>(&bytes)
                    .map_err(|e| format!("decoding the summary: {e}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            match summary {
                Ok(summary) => samples.record(name, summary),
                Err(error) => {
                    if ready(&node) {
                        tracing::warn!(node = name, %error, "metrics: scraping the node failed");
                    } else {
                        tracing::debug!(node = name, %error, "metrics: node not ready, not scraped");
                    }
                    samples.forget(name);
                }
            }
        })
        .await;
}
