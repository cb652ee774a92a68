//! Node lifecycle, as upstream's node-lifecycle, taint-eviction and pod-GC controllers:
//! - a node whose Lease (and status) has not been renewed for the grace period gets its
//!   conditions set to Unknown ("Kubelet stopped posting node status.");
//! - Ready=False nodes get the `node.kubernetes.io/not-ready` taints, Ready=Unknown nodes
//!   the `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute), removed when
//!   the node is Ready again; cordoned nodes get `node.kubernetes.io/unschedulable`;
//! - pods on a node with a NoExecute taint they do not tolerate are deleted, at once or
//!   when their `tolerationSeconds` run out (their ReplicaSets then replace them);
//! - pods bound to nodes that no longer exist are force-deleted, unscheduled pods being
//!   deleted are force-deleted, and terminated pods beyond a threshold are deleted oldest
//!   first.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{BY_NODE, Informer};
use crate::selectors::tolerates;

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Settings (upstream's flags of the same names).
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// How long a node may go without a heartbeat before it is Unknown (upstream: 50 s).
    pub node_monitor_grace_period: Duration,
    /// How often nodes are checked (upstream: 5 s).
    pub node_monitor_period: Duration,
    /// Terminated pods kept before pod GC deletes the oldest (upstream: 12500).
    pub terminated_pod_gc_threshold: usize,
}

impl Default for NodeLifecycleConfig {
    fn default() -> NodeLifecycleConfig {
        NodeLifecycleConfig {
            node_monitor_grace_period: Duration::from_secs(50),
            node_monitor_period: Duration::from_secs(5),
            terminated_pod_gc_threshold: 12_500,
        }
    }
}

/// The node lifecycle controller (with taint eviction and pod GC).
pub struct NodeLifecycleController {
    client: kube::Client,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<Lease>>,
    pods: Arc<Informer<CachedPod>>,
    config: NodeLifecycleConfig,
    recorder: Recorder,
}

impl std::fmt::Debug for NodeLifecycleController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLifecycleController").field("config", &self.config).finish()
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// The taints a node should carry for its Ready condition and cordon, with the others it
/// has kept; None when they are already right.
fn wanted_taints(node: &Node, now: &Time) -> Option<Vec<Taint>> {
    let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let ready = ready_condition(node).map(|c| c.status.as_str()).unwrap_or("Unknown");
    let mut managed: Vec<(&str, &str)> = match ready {
        "True" => vec![],
        "False" => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        _ => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        managed.push((UNSCHEDULABLE, "NoSchedule"));
    }
    let is_managed = |t: &Taint| [NOT_READY, UNREACHABLE, UNSCHEDULABLE].contains(&t.key.as_str());
    let mut next: Vec<Taint> = current.iter().filter(|t| !is_managed(t)).cloned().collect();
    for (key, effect) in &managed {
        // Keep the original timeAdded: eviction deadlines count from it.
        let existing = current.iter().find(|t| t.key == *key && t.effect == *effect).cloned();
        next.push(existing.unwrap_or_else(|| Taint {
            key: (*key).into(),
            effect: (*effect).into(),
            value: None,
            time_added: (*effect == "NoExecute").then(|| now.clone()),
        }));
    }
    let same = next.len() == current.len() && next.iter().all(|t| current.contains(t));
    (!same).then_some(next)
}

/// When a pod on a node with these taints must go: None if never, Some(0) for now, else
/// seconds after the taint was added (the smallest tolerationSeconds that applies).
fn eviction_delay(pod: &CachedPod, taints: &[Taint]) -> Option<(i64, jiff::Timestamp)> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let mut deadline: Option<(i64, jiff::Timestamp)> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or_else(jiff::Timestamp::now);
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let seconds = if matching.is_empty() {
            0
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        } else {
            matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0)
        };
        let at = added + jiff::SignedDuration::from_secs(seconds);
        if deadline.is_none_or(|(_, d)| at < d) {
            deadline = Some((seconds, at));
        }
    }
    deadline
}

impl NodeLifecycleController {
    /// A controller over these informers (the pods informer must have the node index).
    pub fn new(
        client: kube::Client,
        nodes: Arc<Informer<Node>>,
        leases: Arc<Informer<Lease>>,
        pods: Arc<Informer<CachedPod>>,
        config: NodeLifecycleConfig,
    ) -> Arc<NodeLifecycleController> {
        Arc::new(NodeLifecycleController {
            recorder: Recorder::new(client.clone(), "node-controller"),
            client,
            nodes,
            leases,
            pods,
            config,
        })
    }

    /// Checks nodes and pods every monitor period until dropped.
    pub async fn run(self: Arc<Self>) {
        self.nodes.wait_synced().await;
        self.leases.wait_synced().await;
        self.pods.wait_synced().await;
        // Nodes get a full grace period from the time this controller starts watching, as
        // upstream does, so a restart of the control plane does not mark every node Unknown.
        let started = jiff::Timestamp::now();
        let mut passes: u64 = 0;
        loop {
            if let Err(e) = self.monitor_nodes(started).await {
                tracing::warn!(error = %e, "node monitoring failed");
            }
            self.evict_tainted().await;
            passes += 1;
            if passes.is_multiple_of(4) {
                self.collect_pods().await;
            }
            tokio::time::sleep(self.config.node_monitor_period).await;
        }
    }

    async fn monitor_nodes(&self, started: jiff::Timestamp) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let now = Time(jiff::Timestamp::now());
        let grace = jiff::SignedDuration::try_from(self.config.node_monitor_grace_period)
            .unwrap_or_default();
        for node in self.nodes.list() {
            let name = node.name_any();
            let lease = self.leases.get(&format!("kube-node-lease/{name}"));
            let renewed =
                lease.as_ref().and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
            let heartbeat =
                ready_condition(&node).and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
            let last =
                [renewed, heartbeat, Some(started)].into_iter().flatten().max().unwrap_or(started);
            let stale = last + grace < now.0;
            let ready_status = ready_condition(&node).map(|c| c.status.clone());
            if stale && ready_status.as_deref() != Some("Unknown") {
                let conditions: Vec<NodeCondition> = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut c| {
                        if c.status != "Unknown" {
                            c.last_transition_time = Some(now.clone());
                        }
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c
                    })
                    .collect();
                let patch = serde_json::json!({"status": {"conditions": conditions}});
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => {
                        self.recorder.record(
                            object_ref(node.as_ref()),
                            EventType::Normal,
                            "NodeNotReady",
                            format!("Node {name} status is now: NodeNotReady"),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "marking a node Unknown failed")
                    }
                }
                // The taints follow from the new condition on the next pass.
                continue;
            }
            if let Some(taints) = wanted_taints(&node, &now) {
                let patch = serde_json::json!({"spec": {"taints": taints}, "metadata": {"resourceVersion": node.resource_version()}});
                match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "updating node taints failed")
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes pods whose NoExecute toleration ran out (or that have none).
    async fn evict_tainted(&self) {
        let now = jiff::Timestamp::now();
        for node in self.nodes.list() {
            let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            if !taints.iter().any(|t| t.effect == "NoExecute") {
                continue;
            }
            for pod in self.pods.by_index(BY_NODE, &node.name_any()) {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some((_, at)) = eviction_delay(&pod, &taints) else { continue };
                if at > now {
                    continue;
                }
                let api: Api<Pod> =
                    Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                self.recorder.record(
                    object_ref(pod.as_ref()),
                    EventType::Normal,
                    "TaintManagerEviction",
                    format!(
                        "Marking for deletion Pod {}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ),
                );
                match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(pod = %pod.name_any(), error = %e, "evicting a pod failed")
                    }
                }
            }
        }
    }

    /// Pod GC: pods of nodes that are gone, unscheduled pods being deleted, and terminated
    /// pods over the threshold.
    async fn collect_pods(&self) {
        let nodes: HashSet<String> = self.nodes.list().iter().map(|n| n.name_any()).collect();
        let force = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        let mut terminated = Vec::new();
        for pod in self.pods.list() {
            let node =
                pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let orphaned = node.as_ref().is_some_and(|n| !nodes.contains(n));
            let unscheduled_deleting = node.is_none() && pod.metadata.deletion_timestamp.is_some();
            if orphaned {
                // Confirm with the API: the informer may be behind a node just registered.
                let node_api: Api<Node> = Api::all(self.client.clone());
                if matches!(node_api.get_opt(node.as_deref().unwrap_or("")).await, Ok(Some(_))) {
                    continue;
                }
            }
            if orphaned || unscheduled_deleting {
                match api.delete(&pod.name_any(), &force).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => tracing::debug!(pod = %pod.name_any(), error = %e, "pod GC failed"),
                }
                continue;
            }
            if matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) {
                terminated.push(pod);
            }
        }
        if terminated.len() <= self.config.terminated_pod_gc_threshold {
            return;
        }
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = terminated.len() - self.config.terminated_pod_gc_threshold;
        for pod in terminated.into_iter().take(excess) {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            if let Err(e) = api.delete(&pod.name_any(), &force).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "deleting a terminated pod failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, Toleration};

    fn node(ready: &str, taints: Vec<Taint>) -> Node {
        Node {
            spec: Some(NodeSpec { taints: Some(taints), ..NodeSpec::default() }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn taints_follow_the_ready_condition_and_keep_their_time() {
        let now = Time(jiff::Timestamp::now());
        let taints = wanted_taints(&node("Unknown", vec![]), &now).unwrap();
        assert_eq!(
            taints.iter().map(|t| (t.key.as_str(), t.effect.as_str())).collect::<Vec<_>>(),
            vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        assert!(wanted_taints(&node("Unknown", taints.clone()), &now).is_none());
        let own =
            Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Taint::default() };
        let mut mixed = taints;
        mixed.push(own.clone());
        assert_eq!(wanted_taints(&node("True", mixed), &now).unwrap(), vec![own]);
    }

    #[test]
    fn eviction_waits_for_the_shortest_toleration() {
        let added = jiff::Timestamp::now();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(added)),
        };
        let pod = |secs: Option<i64>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(vec![Toleration {
                    key: Some(UNREACHABLE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: secs,
                    value: None,
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(
            eviction_delay(&CachedPod::from(&pod(Some(5))), std::slice::from_ref(&taint))
                .map(|d| d.0),
            Some(5)
        );
        assert_eq!(
            eviction_delay(&CachedPod::from(&pod(None)), std::slice::from_ref(&taint)),
            None
        );
        assert_eq!(
            eviction_delay(&CachedPod::default(), std::slice::from_ref(&taint)).map(|d| d.0),
            Some(0)
        );
    }
}
