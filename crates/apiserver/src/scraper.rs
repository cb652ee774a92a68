//! The metrics API's scraper: every node agent's `/stats/summary`, each resolution period,
//! into [`Samples`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;

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

/// What the scraper reads of a Node. Typed rather than a JSON `Value`: every scrape reads
/// every Node, and building the whole of 5,000 of them (images, conditions, capacity) was a
/// visible share of a busy server's CPU in each period.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ScrapedNode {
    metadata: NodeName,
    status: ScrapedStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeName {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ScrapedStatus {
    conditions: Vec<NodeCondition>,
    addresses: Vec<NodeAddress>,
    daemon_endpoints: DaemonEndpoints,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeAddress {
    #[serde(rename = "type")]
    type_: String,
    address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct DaemonEndpoints {
    kubelet_endpoint: KubeletEndpoint,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubeletEndpoint {
    #[serde(rename = "Port")]
    port: Option<u64>,
}

impl ScrapedNode {
    /// Whether the node is Ready (a NotReady node's failed scrape is expected, not news).
    fn ready(&self) -> bool {
        self.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    }

    /// The agent endpoint of a node that has one: a kubelet port of 0 means it serves none
    /// (simulated nodes).
    fn endpoint(&self) -> Option<std::net::SocketAddr> {
        let port = self.status.daemon_endpoints.kubelet_endpoint.port;
        if port == Some(0) {
            return None;
        }
        let addresses =
            self.status.addresses.iter().map(|a| (a.type_.as_str(), Some(a.address.as_str())));
        crate::proxy::kubelet_endpoint(addresses, port)
    }
}

async fn scrape(rest: &Rest, proxy: &NodeProxy, samples: &Samples, timeout: Duration) {
    let Some(nodes_rt) = rest.registry.lookup("", "v1", "nodes") else { return };
    let nodes = match rest.list(&nodes_rt, None, &ListOptions::default()).await {
        // A node that does not read as one is skipped, not every node's scrape with it.
        Ok(page) => page
            .items
            .iter()
            .filter_map(|b| {
                serde_json::from_slice::<ScrapedNode>(b)
                    .inspect_err(|e| tracing::warn!(error = %e, "metrics: reading a node failed"))
                    .ok()
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: listing nodes failed");
            return;
        }
    };
    let names: HashSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    samples.retain(|n| names.contains(n));
    futures::stream::iter(&nodes)
        .for_each_concurrent(PARALLEL, |node| async move {
            let name = node.metadata.name.as_str();
            let Some(addr) = node.endpoint() else {
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
                    if node.ready() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> ScrapedNode {
        serde_json::from_value(json).expect("a node decodes")
    }

    #[test]
    fn a_node_is_read_for_its_name_readiness_and_agent_endpoint_only() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "status": {
                "images": [{"names": ["x"], "sizeBytes": 1}],
                "conditions": [{"type": "MemoryPressure", "status": "False"},
                               {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"},
                              {"type": "InternalIP", "address": "10.0.0.7"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}
            }
        }));
        assert_eq!(n.metadata.name, "n1");
        assert!(n.ready());
        assert_eq!(n.endpoint(), Some("10.0.0.7:10251".parse().unwrap()));
        // No port: the kubelet's default. A port of 0: no endpoint (simulated nodes).
        let default = node(serde_json::json!({"metadata": {"name": "n2"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.8"}]}}));
        assert!(!default.ready());
        assert_eq!(default.endpoint(), Some("10.0.0.8:10250".parse().unwrap()));
        let simulated = node(serde_json::json!({"metadata": {"name": "n3"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}}}));
        assert_eq!(simulated.endpoint(), None);
        // A node with no addresses yet has none either.
        assert_eq!(node(serde_json::json!({"metadata": {"name": "n4"}})).endpoint(), None);
    }
}
