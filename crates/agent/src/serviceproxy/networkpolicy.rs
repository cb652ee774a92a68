//! NetworkPolicy, as the node enforces it for its own pods: a pure translation of the
//! policies, pods and namespaces into, for each local pod a policy isolates, the traffic its
//! rules let in (ingress) and out (egress). `nftables` renders it into the proxy's table.
//!
//! Upstream's semantics: a pod is isolated in a direction once any policy of its namespace
//! selects it with that policy type (`Ingress` always when unset, `Egress` when the policy has
//! egress rules); isolated traffic passes when some rule of some selecting policy allows it;
//! replies to allowed connections always pass. Peers are pods by label (in the policy's
//! namespace, or in namespaces picked by label) and address blocks with exceptions; ports
//! are numbers, ranges (`endPort`) or names resolved through the pods' container ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use controller_runtime::cached_pod::CachedPod;
use controller_runtime::selectors::label_selector_matches;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::plan::Protocol;

/// Ports a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// The protocol.
    pub protocol: Protocol,
    /// First port.
    pub first: u16,
    /// Last port (the same as `first` for one port).
    pub last: u16,
}

/// Who a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Anyone.
    Any,
    /// These pod addresses, and these blocks (CIDR and its exceptions).
    Some {
        /// Pod addresses.
        pods: BTreeSet<Ipv4Addr>,
        /// Address blocks with their exceptions.
        blocks: Vec<(String, Vec<String>)>,
    },
}

/// One allowing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Who.
    pub peers: Peers,
    /// Which ports (none: all).
    pub ports: Vec<PortRange>,
}

/// A local pod that some policy isolates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFilter {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// What may come in, when isolated for ingress.
    pub ingress: Option<Vec<Allow>>,
    /// What may go out, when isolated for egress.
    pub egress: Option<Vec<Allow>>,
}

/// Whether `text` is an IPv4 CIDR (`a.b.c.d/n`).
fn ipv4_cidr(text: &str) -> bool {
    text.split_once('/').is_some_and(|(ip, prefix)| {
        ip.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
    })
}

fn pod_ip(pod: &CachedPod) -> Option<Ipv4Addr> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

/// A namespace's labels, with the name label upstream always sets.
fn namespace_labels(namespaces: &[Arc<Namespace>], name: &str) -> BTreeMap<String, String> {
    let mut labels = namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), name.to_owned());
    labels
}

fn peers_of(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    namespace: &str,
    pods: &[Arc<CachedPod>],
    namespaces: &[Arc<Namespace>],
) -> Peers {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else { return Peers::Any };
    let mut ips = BTreeSet::new();
    let mut blocks = Vec::new();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            // IPv4 blocks only (the cluster is IPv4); the API refuses malformed ones.
            if ipv4_cidr(&block.cidr) {
                let except = block.except.iter().flatten().filter(|e| ipv4_cidr(e)).cloned();
                blocks.push((block.cidr.clone(), except.collect()));
            }
            continue;
        }
        for pod in pods {
            let pod_namespace = pod.metadata.namespace.as_deref().unwrap_or("");
            let in_namespace = match &peer.namespace_selector {
                Some(selector) => {
                    label_selector_matches(selector, &namespace_labels(namespaces, pod_namespace))
                }
                None => pod_namespace == namespace,
            };
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let selected =
                peer.pod_selector.as_ref().is_none_or(|s| label_selector_matches(s, &labels));
            if in_namespace
                && selected
                && let Some(ip) = pod_ip(pod)
            {
                ips.insert(ip);
            }
        }
    }
    Peers::Some { pods: ips, blocks }
}

/// The numbers a named port has on `pods` (a container port of that name and protocol).
fn named_port(pods: &[&Arc<CachedPod>], name: &str, protocol: &str) -> BTreeSet<u16> {
    pods.iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect()
}

fn ports_of(
    ports: Option<&Vec<NetworkPolicyPort>>,
    named_on: &[&Arc<CachedPod>],
) -> Vec<PortRange> {
    let mut out = Vec::new();
    for port in ports.into_iter().flatten() {
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = match protocol_name {
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => Protocol::Tcp,
        };
        match &port.port {
            None => out.push(PortRange { protocol, first: 0, last: u16::MAX }),
            Some(IntOrString::Int(n)) => {
                let Ok(first) = u16::try_from(*n) else { continue };
                let last = port.end_port.and_then(|e| u16::try_from(e).ok()).unwrap_or(first);
                out.push(PortRange { protocol, first, last: last.max(first) });
            }
            Some(IntOrString::String(name)) => {
                for n in named_port(named_on, name, protocol_name) {
                    out.push(PortRange { protocol, first: n, last: n });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The filters of the pods on `node_name`.
pub fn pod_filters(
    policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<CachedPod>],
    namespaces: &[Arc<Namespace>],
    node_name: &str,
) -> Vec<PodFilter> {
    let mut out = Vec::new();
    for pod in pods {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node_name) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut filter = PodFilter { ip, ingress: None, egress: None };
        for policy in policies {
            if policy.metadata.namespace.as_deref() != Some(namespace) {
                continue;
            }
            let Some(spec) = policy.spec.as_ref() else { continue };
            if !label_selector_matches(&spec.pod_selector.clone().unwrap_or_default(), &labels) {
                continue;
            }
            let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
                let mut t = vec!["Ingress".to_owned()];
                if spec.egress.is_some() {
                    t.push("Egress".to_owned());
                }
                t
            });
            if types.iter().any(|t| t == "Ingress") {
                let allowed = filter.ingress.get_or_insert_with(Vec::new);
                for rule in spec.ingress.iter().flatten() {
                    allowed.push(Allow {
                        peers: peers_of(rule.from.as_ref(), namespace, pods, namespaces),
                        // A named port is the target pod's own.
                        ports: ports_of(rule.ports.as_ref(), &[pod]),
                    });
                }
            }
            if types.iter().any(|t| t == "Egress") {
                let allowed = filter.egress.get_or_insert_with(Vec::new);
                for rule in spec.egress.iter().flatten() {
                    let peers = peers_of(rule.to.as_ref(), namespace, pods, namespaces);
                    // A named port is the destination's: any pod's port of that name.
                    let all: Vec<&Arc<CachedPod>> = pods.iter().collect();
                    allowed.push(Allow { peers, ports: ports_of(rule.ports.as_ref(), &all) });
                }
            }
        }
        if filter.ingress.is_some() || filter.egress.is_some() {
            out.push(filter);
        }
    }
    out.sort_by_key(|f| f.ip);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, namespace: &str, ip: &str, labels: serde_json::Value) -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"nodeName": "a", "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .expect("pod"),
        )
    }

    fn policy(spec: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
            )
            .expect("policy"),
        )
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("ns"),
        )
    }

    #[test]
    fn default_deny_plus_one_allow() {
        let pods = [
            pod("db", "shop", "10.42.0.2", json!({"app": "db"})),
            pod("api", "shop", "10.42.0.3", json!({"app": "api"})),
            pod("other", "lab", "10.42.0.4", json!({"app": "api"})),
        ];
        let namespaces = [namespace("shop", json!({})), namespace("lab", json!({"team": "lab"}))];
        let policies = [
            policy(json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            policy(json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "web"}]}]})),
        ];
        let filters = pod_filters(&policies, &pods, &namespaces, "a");
        assert_eq!(filters.len(), 2, "both shop pods are isolated, the lab pod is not");
        let db = filters.iter().find(|f| f.ip.to_string() == "10.42.0.2").expect("db");
        assert!(db.egress.is_none());
        let ingress = db.ingress.as_ref().expect("isolated");
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0].peers,
            Peers::Some { pods: ["10.42.0.3".parse().expect("ip")].into(), blocks: vec![] },
            "only api pods of the same namespace"
        );
        assert_eq!(
            ingress[0].ports,
            [PortRange { protocol: Protocol::Tcp, first: 8080, last: 8080 }]
        );
        let api = filters.iter().find(|f| f.ip.to_string() == "10.42.0.3").expect("api");
        assert_eq!(api.ingress.as_deref(), Some(&[][..]), "denied all");
    }

    #[test]
    fn namespaces_blocks_ranges_and_egress() {
        let pods =
            [pod("web", "shop", "10.42.0.2", json!({})), pod("x", "lab", "10.42.0.4", json!({}))];
        let namespaces = [namespace("shop", json!({})), namespace("lab", json!({"team": "lab"}))];
        let policies = [policy(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "lab"}}},
                                  {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.7/32"]}}]}],
            "egress": [{"ports": [{"port": 8000, "endPort": 8080, "protocol": "UDP"}]}]}))];
        let filters = pod_filters(&policies, &pods, &namespaces, "a");
        let web = filters.iter().find(|f| f.ip.to_string() == "10.42.0.2").expect("web");
        let ingress = web.ingress.as_ref().expect("ingress");
        assert_eq!(
            ingress[0].peers,
            Peers::Some {
                pods: ["10.42.0.4".parse().expect("ip")].into(),
                blocks: vec![("192.0.2.0/24".into(), vec!["192.0.2.7/32".into()])],
            }
        );
        let egress = web.egress.as_ref().expect("egress");
        assert_eq!(egress[0].peers, Peers::Any);
        assert_eq!(
            egress[0].ports,
            [PortRange { protocol: Protocol::Udp, first: 8000, last: 8080 }]
        );
    }
}
