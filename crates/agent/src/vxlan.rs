//! The pod network across nodes that share no link (flannel's vxlan backend): each node has
//! a VXLAN device (VNI 1, UDP 8472) holding the first address of its podCIDR, publishes the
//! device's MAC and its own address in its Node's annotations (flannel's names), and points
//! every other node's podCIDR at that node's device: a route through the remote device's
//! address (on-link), a permanent neighbour entry for its MAC, and a forwarding entry
//! sending that MAC's frames to the node's address. The kernel encapsulates; nothing
//! floods or learns.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::{AgentConfig, AgentError};

/// The VXLAN network identifier every node uses.
pub const VNI: u32 = 1;
/// The UDP port of the encapsulated traffic (flannel's).
pub const PORT: u16 = 8472;
/// The Node annotation with the device's MAC (flannel's name and format).
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The Node annotation with the address tunnels go to.
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// The MTU pods get: the link's 1500 less the VXLAN headers.
pub const MTU: u32 = 1450;

/// The agent's VXLAN device: per agent, as its bridge.
pub fn device(config: &AgentConfig) -> String {
    let id = crate::image::sha256_hex(config.data_dir.display().to_string().as_bytes());
    format!("krv{}", &id[..8])
}

/// The first address of a CIDR (`10.42.1.0/24` → `10.42.1.0`), the device's address.
pub fn gateway(cidr: &str) -> Option<Ipv4Addr> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some(Ipv4Addr::from(u32::from(ip) & mask))
}

/// A remote node's tunnel end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The remote device's address (its podCIDR's first).
    pub gateway: Ipv4Addr,
    /// The remote device's MAC.
    pub mac: String,
    /// Where the tunnel goes.
    pub public_ip: IpAddr,
}

/// The other nodes' pod networks and how to reach them.
pub fn peers(nodes: &[Arc<Node>], own: &str) -> BTreeMap<String, Peer> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own))
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.clone().filter(|c| !c.is_empty())?;
            let annotations = n.metadata.annotations.as_ref()?;
            let data: serde_json::Value =
                serde_json::from_str(annotations.get(BACKEND_DATA)?).ok()?;
            let mac = data.get("VtepMAC")?.as_str()?.to_owned();
            let public_ip = annotations.get(PUBLIC_IP)?.parse().ok()?;
            Some((cidr.clone(), Peer { gateway: gateway(&cidr)?, mac, public_ip }))
        })
        .collect()
}

async fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates (or keeps) the device for `pod_cidr` and returns its MAC.
pub async fn setup(config: &AgentConfig, pod_cidr: &str) -> Result<String, AgentError> {
    let dev = device(config);
    let node_ip = config.node_ip.to_string();
    let vni = VNI.to_string();
    let port = PORT.to_string();
    // Asked of `ip`, not /sys: an agent in another network namespace sees the host's /sys.
    if link_mac(&dev).await.is_none() {
        run(
            "ip",
            &[
                "link",
                "add",
                &dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &node_ip,
                "dstport",
                &port,
                "nolearning",
            ],
        )
        .await
        .map_err(AgentError::Runtime)?;
    }
    let address = gateway(pod_cidr)
        .ok_or_else(|| AgentError::Config(format!("podCIDR {pod_cidr:?} is not an IPv4 CIDR")))?;
    let mtu = MTU.to_string();
    run("ip", &["link", "set", &dev, "mtu", &mtu, "up"]).await.map_err(AgentError::Runtime)?;
    run("ip", &["addr", "replace", &format!("{address}/32"), "dev", &dev])
        .await
        .map_err(AgentError::Runtime)?;
    link_mac(&dev)
        .await
        .ok_or_else(|| AgentError::Runtime(format!("the VXLAN device {dev} has no address")))
}

/// The MAC of link `dev`, if it exists.
async fn link_mac(dev: &str) -> Option<String> {
    let out = tokio::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", dev])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    words.next().map(str::to_owned)
}

/// Points `cidr` at `peer` through the device, the route tagged with `protocol`.
pub async fn connect(
    config: &AgentConfig,
    cidr: &str,
    peer: &Peer,
    protocol: &str,
) -> Result<(), String> {
    let dev = device(config);
    let gateway = peer.gateway.to_string();
    run(
        "ip",
        &["neigh", "replace", &gateway, "lladdr", &peer.mac, "dev", &dev, "nud", "permanent"],
    )
    .await?;
    run(
        "bridge",
        &[
            "fdb",
            "replace",
            &peer.mac,
            "dev",
            &dev,
            "dst",
            &peer.public_ip.to_string(),
            "self",
            "permanent",
        ],
    )
    .await?;
    run(
        "ip",
        &["route", "replace", cidr, "via", &gateway, "dev", &dev, "onlink", "proto", protocol],
    )
    .await
}

/// Removes the device, and with it every neighbour, forwarding entry and route through it.
pub async fn remove(config: &AgentConfig) {
    let _ = run("ip", &["link", "delete", &device(config)]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_come_from_the_nodes_annotations() {
        let node = |name: &str, cidr: &str, annotated: bool| {
            let mut annotations = serde_json::json!({});
            if annotated {
                annotations[BACKEND_DATA] =
                    serde_json::json!("{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:ff\"}");
                annotations[PUBLIC_IP] = serde_json::json!("192.0.2.9");
            }
            Arc::new(
                serde_json::from_value::<Node>(serde_json::json!({
                    "metadata": {"name": name, "annotations": annotations}, "spec": {"podCIDR": cidr}}))
                .expect("node"),
            )
        };
        let found = peers(
            &[
                node("a", "10.42.0.0/24", true),
                node("b", "10.42.1.0/24", true),
                node("c", "10.42.2.0/24", false),
            ],
            "a",
        );
        assert_eq!(found.len(), 1);
        let peer = &found["10.42.1.0/24"];
        assert_eq!(peer.gateway, Ipv4Addr::new(10, 42, 1, 0));
        assert_eq!(peer.mac, "aa:bb:cc:dd:ee:ff");
        assert_eq!(peer.public_ip.to_string(), "192.0.2.9");
    }
}
