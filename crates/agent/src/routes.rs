//! The pod network across nodes (flannel's host-gw mode): every other node's podCIDR is
//! routed through that node's address, so pods reach pods on any node by their own
//! addresses, with no NAT and no encapsulation. It needs the nodes to share a link; where
//! a gateway is not directly reachable the route is skipped (the host's own routing, e.g.
//! a default route through the other node, still carries the traffic). Routes are tagged
//! with krust's protocol number so the agent only ever removes its own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::AgentConfig;

/// How pod networks reach each other across nodes (k3s's `--flannel-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Routes through the other nodes' addresses: nodes share a link.
    #[default]
    HostGw,
    /// A VXLAN overlay: nodes only need to reach each other's addresses.
    Vxlan,
    /// Nothing: the cluster brings its own.
    None,
}

impl Backend {
    /// Parses the flag's value.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "host-gw" => Some(Backend::HostGw),
            "vxlan" => Some(Backend::Vxlan),
            "none" => Some(Backend::None),
            _ => None,
        }
    }

    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::None => "none",
        }
    }
}

/// The routing protocol number krust's routes carry (`ip route … proto 212`).
pub const ROUTE_PROTOCOL: &str = "212";

/// The routes this node wants: other nodes' podCIDRs → their InternalIP.
pub fn wanted(nodes: &[Arc<Node>], own: &str) -> BTreeMap<String, IpAddr> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own))
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.clone().filter(|c| !c.is_empty())?;
            let address = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some((cidr, address))
        })
        .collect()
}

async fn ip(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The IPv4 networks of this host's interfaces (`ip -o -4 addr`): a gateway is usable when
/// one of them holds it.
async fn local_networks() -> Vec<(u32, u32)> {
    let text = ip(&["-o", "-4", "addr", "show"]).await.unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (addr, prefix) = words.next()?.split_once('/')?;
            let addr: std::net::Ipv4Addr = addr.parse().ok()?;
            let prefix: u32 = prefix.parse().ok()?;
            let mask = u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0);
            Some((u32::from(addr) & mask, mask))
        })
        .collect()
}

fn on_link(networks: &[(u32, u32)], via: IpAddr) -> bool {
    let IpAddr::V4(v4) = via else { return false };
    networks.iter().any(|(net, mask)| *mask != u32::MAX && u32::from(v4) & mask == *net)
}

/// Where the agent records the routes it installed, so a restarted agent and `reset`
/// remove exactly those (agents sharing a host each keep their own).
fn state_file(config: &AgentConfig) -> std::path::PathBuf {
    config.data_dir.join("routes.json")
}

fn load(config: &AgentConfig) -> BTreeMap<String, IpAddr> {
    std::fs::read(state_file(config))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(config: &AgentConfig, routes: &BTreeMap<String, IpAddr>) {
    if let Ok(text) = serde_json::to_vec(routes) {
        let _ = std::fs::write(state_file(config), text);
    }
}

/// Sets up this node's VXLAN device and publishes its MAC and address on the Node.
async fn vxlan_announce(
    client: &kube::Client,
    config: &AgentConfig,
    nodes: &[Arc<Node>],
) -> Result<(), crate::AgentError> {
    let own = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(config.node_name.as_str()))
        .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
        .ok_or_else(|| crate::AgentError::Config("this node has no podCIDR yet".into()))?;
    let mac = crate::vxlan::setup(config, &own).await?;
    let patch = serde_json::json!({"metadata": {"annotations": {
        crate::vxlan::BACKEND_DATA: serde_json::json!({"VNI": crate::vxlan::VNI, "VtepMAC": mac}).to_string(),
        crate::vxlan::PUBLIC_IP: config.node_ip.to_string(),
        "flannel.alpha.coreos.com/backend-type": "vxlan",
    }}});
    kube::Api::<Node>::all(client.clone())
        .patch(
            &config.node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Removes the routes this agent installed (reset).
pub async fn remove_all(config: &AgentConfig) {
    for (destination, via) in load(config) {
        let via = via.to_string();
        let _ = ip(&["route", "delete", &destination, "via", &via, "proto", ROUTE_PROTOCOL]).await;
    }
    let _ = std::fs::remove_file(state_file(config));
    crate::vxlan::remove(config).await;
}

/// Keeps the routes to other nodes' pod networks until `shutdown` fires (they stay after:
/// pods keep talking while the agent restarts).
pub async fn run(
    client: kube::Client,
    config: Arc<AgentConfig>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (nodes, writer) = reflector::store::<Node>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let client_for_nodes = client.clone();
    let watch = reflector::reflector(
        writer,
        watcher(kube::Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(move |_| {
        notify.notify_one();
        futures::future::ready(())
    });
    let backend = config.flannel_backend;
    let sync = async {
        if backend == Backend::None {
            return std::future::pending().await;
        }
        let _ = nodes.wait_until_ready().await;
        let mut peers = BTreeMap::new();
        if backend == Backend::Vxlan {
            // Our device first, then our Node says how to reach it.
            loop {
                match vxlan_announce(&client_for_nodes, &config, &nodes.state()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "setting up the VXLAN device failed; retrying");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
        let mut ours = load(&config);
        let mut networks = local_networks().await;
        let mut recheck = true;
        loop {
            let want = match backend {
                Backend::Vxlan => {
                    peers = crate::vxlan::peers(&nodes.state(), &config.node_name);
                    peers.iter().map(|(c, p)| (c.clone(), IpAddr::V4(p.gateway))).collect()
                }
                _ => wanted(&nodes.state(), &config.node_name),
            };
            for (cidr, via) in &want {
                if !recheck && ours.get(cidr) == Some(via) {
                    continue;
                }
                if let Some(peer) = peers.get(cidr) {
                    match crate::vxlan::connect(&config, cidr, peer, ROUTE_PROTOCOL).await {
                        Ok(()) => {
                            ours.insert(cidr.clone(), *via);
                        }
                        Err(e) => {
                            tracing::warn!(pod_cidr = %cidr, error = %e, "tunnelling to a node's pod network failed")
                        }
                    }
                    continue;
                }
                if !on_link(&networks, *via) {
                    // Not on a shared link: host-gw cannot route it (simulated nodes, or
                    // nodes reached through a router that already carries the traffic).
                    continue;
                }
                let via_text = via.to_string();
                match ip(&["route", "replace", cidr, "via", &via_text, "proto", ROUTE_PROTOCOL])
                    .await
                {
                    Ok(_) => {
                        ours.insert(cidr.clone(), *via);
                    }
                    Err(e) => {
                        tracing::warn!(pod_cidr = %cidr, via = %via, error = %e, "routing a node's pod network failed")
                    }
                }
            }
            let gone: Vec<(String, IpAddr)> = ours
                .iter()
                .filter(|(cidr, via)| want.get(*cidr) != Some(*via))
                .map(|(c, v)| (c.clone(), *v))
                .collect();
            for (cidr, via) in gone {
                let via_text = via.to_string();
                let _ = ip(&["route", "delete", &cidr, "via", &via_text, "proto", ROUTE_PROTOCOL])
                    .await;
                ours.remove(&cidr);
            }
            save(&config, &ours);
            tokio::select! {
                () = changed.notified() => recheck = false,
                // Routes someone removed, and addresses that changed, are caught up with.
                () = tokio::time::sleep(Duration::from_secs(60)) => {
                    networks = local_networks().await;
                    recheck = true;
                }
            }
        }
    };
    tokio::select! {
        () = watch => {}
        () = sync => {}
        () = crate::stopped(&mut shutdown) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_pod_networks_go_through_their_addresses() {
        let node = |name: &str, cidr: &str, ip: &str| {
            Arc::new(
                serde_json::from_value::<Node>(serde_json::json!({
                    "metadata": {"name": name}, "spec": {"podCIDR": cidr},
                    "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
                }))
                .expect("node"),
            )
        };
        let routes = wanted(
            &[
                node("a", "10.42.0.0/24", "192.0.2.1"),
                node("b", "10.42.1.0/24", "192.0.2.2"),
                node("c", "", "192.0.2.3"),
            ],
            "a",
        );
        assert_eq!(routes.len(), 1);
        assert_eq!(routes["10.42.1.0/24"], "192.0.2.2".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn only_gateways_on_a_local_network_are_used() {
        let networks = [(u32::from(std::net::Ipv4Addr::new(192, 0, 2, 0)), 0xffff_ff00)];
        assert!(on_link(&networks, "192.0.2.9".parse().expect("ip")));
        assert!(!on_link(&networks, "198.51.100.9".parse().expect("ip")));
    }
}
