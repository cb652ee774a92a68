//! What the service proxy programs, as a pure function of the Services, their
//! EndpointSlices and the node: one [`ServicePort`] per port of every Service that carries
//! traffic (not headless, not `ExternalName`), with the endpoints cluster traffic and
//! external traffic may reach from this node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A transport protocol as nftables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' name.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One backend of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The port on it.
    pub port: u16,
}

/// One port of one Service, as the node's rules carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port` (the port's name, or its number when unnamed).
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service's cluster addresses.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Addresses reached from outside: `externalIPs` and load-balancer ingress addresses.
    pub external_ips: Vec<Ipv4Addr>,
    /// The Service port.
    pub port: u16,
    /// The node port, if any.
    pub node_port: Option<u16>,
    /// Where cluster traffic goes (empty: rejected).
    pub cluster_backends: Vec<Backend>,
    /// Where traffic from outside goes (only this node's endpoints under
    /// `externalTrafficPolicy: Local`).
    pub external_backends: Vec<Backend>,
    /// `externalTrafficPolicy: Local`: the client address is kept.
    pub external_local: bool,
    /// `sessionAffinity: ClientIP`'s timeout.
    pub affinity_seconds: Option<u32>,
    /// Endpoint addresses that may be pods of this node (their slice names this node, or no
    /// node): only a pod here can reach itself through the Service on this node (hairpin),
    /// so a node's hairpin set stays the size of its pods, not of the cluster's endpoints.
    pub hairpin: Vec<Ipv4Addr>,
}

/// An endpoint as a slice gives it, with what the choice of backends needs.
struct SliceEndpoint {
    backend: Backend,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    maybe_here: bool,
    /// The zones its topology hint names (empty: no hint).
    hinted_zones: Vec<String>,
}

/// Upstream's choice: the ready endpoints; when none is ready, the ones still serving while
/// they terminate (so a rolling restart does not drop traffic).
fn usable(endpoints: &[&SliceEndpoint]) -> Vec<Backend> {
    let ready: BTreeSet<Backend> =
        endpoints.iter().filter(|e| e.ready).map(|e| e.backend.clone()).collect();
    if !ready.is_empty() {
        return ready.into_iter().collect();
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.backend.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Upstream's use of topology hints: when this node has a zone and every usable endpoint
/// carries a hint, the endpoints hinted for this zone, if there are any; otherwise all.
fn in_zone<'a>(endpoints: &[&'a SliceEndpoint], zone: Option<&str>) -> Vec<&'a SliceEndpoint> {
    let Some(zone) = zone else { return endpoints.to_vec() };
    let usable: BTreeSet<Backend> = usable(endpoints).into_iter().collect();
    let candidates: Vec<&&SliceEndpoint> =
        endpoints.iter().filter(|e| usable.contains(&e.backend)).collect();
    if candidates.is_empty() || candidates.iter().any(|e| e.hinted_zones.is_empty()) {
        return endpoints.to_vec();
    }
    let here: Vec<&SliceEndpoint> = candidates
        .into_iter()
        .filter(|e| e.hinted_zones.iter().any(|z| z == zone))
        .copied()
        .collect();
    if here.is_empty() { endpoints.to_vec() } else { here }
}

/// The Service ports this node carries, sorted by name. `zone` is this node's zone, for
/// topology hints.
pub fn service_ports(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
    zone: Option<&str>,
) -> Vec<ServicePort> {
    // Slices by (namespace, service name).
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(service) =
            slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((namespace, service.clone())).or_default().push(slice);
    }
    let mut out = Vec::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| ipv4(s))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if cluster_ips.is_empty() {
            // Headless, or not allocated yet: nothing to program.
            continue;
        }
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let mut external_ips: BTreeSet<Ipv4Addr> =
            spec.external_ips.iter().flatten().filter_map(|s| ipv4(s)).collect();
        let own_load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
        if own_load_balancer {
            for ingress in service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
            {
                if let Some(ip) = ingress.ip.as_deref().and_then(ipv4) {
                    external_ips.insert(ip);
                }
            }
        }
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let slices = by_service.get(&(namespace.clone(), name.clone()));
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            let Ok(number) = u16::try_from(port.port) else { continue };
            let port_name = port.name.clone().unwrap_or_default();
            let mut endpoints = Vec::new();
            for slice in slices.into_iter().flatten() {
                // The slice's port of the same name (and protocol) gives the target.
                let Some(target) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for endpoint in slice.endpoints.iter().flatten() {
                    let conditions = endpoint.conditions.clone().unwrap_or_default();
                    // Upstream reads an unset `ready` as ready, `serving` as `ready`.
                    let ready = conditions.ready.unwrap_or(true);
                    let serving = conditions.serving.unwrap_or(ready);
                    for ip in endpoint.addresses.iter().filter_map(|a| ipv4(a)) {
                        endpoints.push(SliceEndpoint {
                            backend: Backend { ip, port: target },
                            ready,
                            serving,
                            terminating: conditions.terminating.unwrap_or(false),
                            local: endpoint.node_name.as_deref() == Some(node_name),
                            maybe_here: endpoint
                                .node_name
                                .as_deref()
                                .is_none_or(|node| node == node_name),
                            hinted_zones: endpoint
                                .hints
                                .as_ref()
                                .and_then(|h| h.for_zones.as_ref())
                                .map(|zones| zones.iter().map(|z| z.name.clone()).collect())
                                .unwrap_or_default(),
                        });
                    }
                }
            }
            let every: Vec<&SliceEndpoint> = endpoints.iter().collect();
            let all = in_zone(&every, zone);
            let local: Vec<&SliceEndpoint> = endpoints.iter().filter(|e| e.local).collect();
            let hairpin: BTreeSet<Ipv4Addr> =
                endpoints.iter().filter(|e| e.maybe_here).map(|e| e.backend.ip).collect();
            let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
            let shown = if port_name.is_empty() { number.to_string() } else { port_name };
            out.push(ServicePort {
                name: format!("{namespace}/{name}:{shown}"),
                protocol,
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.iter().copied().collect(),
                port: number,
                node_port,
                cluster_backends: usable(if internal_local { &local } else { &all }),
                external_backends: usable(if external_local { &local } else { &all }),
                external_local,
                affinity_seconds,
                hairpin: hairpin.into_iter().collect(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec}),
            )
            .expect("service"),
        )
    }

    fn slice(endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .map(Arc::new)
        .expect("slice")
    }

    fn ep(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }

    fn ips(backends: &[Backend]) -> Vec<String> {
        backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect()
    }

    #[test]
    fn ready_endpoints_serve_and_terminating_ones_only_when_nothing_else_does() {
        let svc = service(json!({"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}));
        let ports = service_ports(
            std::slice::from_ref(&svc),
            &[slice(json!([
                ep("10.42.0.2", "a", true, false),
                ep("10.42.1.2", "b", false, false),
                ep("10.42.1.3", "b", false, true)
            ]))],
            "a",
            None,
        );
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name, "ns/web:http");
        assert_eq!(ips(&ports[0].cluster_backends), ["10.42.0.2:8080"]);
        let ports = service_ports(
            &[svc],
            &[slice(json!([
                ep("10.42.1.2", "b", false, false),
                ep("10.42.1.3", "b", false, true)
            ]))],
            "a",
            None,
        );
        assert_eq!(ips(&ports[0].cluster_backends), ["10.42.1.3:8080"]);
    }

    #[test]
    fn topology_hints_keep_traffic_in_the_zone_when_every_endpoint_has_one() {
        let svc = service(json!({"clusterIP": "10.43.0.9",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}));
        let hinted = |ip: &str, zone: &str| {
            let mut e = ep(ip, "x", true, false);
            e["hints"] = json!({"forZones": [{"name": zone}]});
            e
        };
        let slices = [slice(json!([hinted("10.42.0.2", "east"), hinted("10.42.1.2", "west")]))];
        let backends = |zone: Option<&str>| {
            ips(&service_ports(std::slice::from_ref(&svc), &slices, "a", zone)[0].cluster_backends)
        };
        assert_eq!(backends(Some("east")), ["10.42.0.2:8080"]);
        assert_eq!(backends(Some("west")), ["10.42.1.2:8080"]);
        // A node without a zone, or in a zone no endpoint is hinted for: all of them.
        assert_eq!(backends(None).len(), 2);
        assert_eq!(backends(Some("north")).len(), 2);
        // One endpoint without a hint: the hints are not used.
        let slices =
            [slice(json!([hinted("10.42.0.2", "east"), ep("10.42.1.2", "x", true, false)]))];
        let ports = service_ports(std::slice::from_ref(&svc), &slices, "a", Some("east"));
        assert_eq!(ports[0].cluster_backends.len(), 2);
    }

    #[test]
    fn local_policies_keep_to_this_node() {
        let svc = service(
            json!({"type": "NodePort", "clusterIP": "10.43.0.9", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        );
        let slices =
            [slice(json!([ep("10.42.0.2", "a", true, false), ep("10.42.1.2", "b", true, false)]))];
        let ports = service_ports(&[svc], &slices, "a", None);
        let p = &ports[0];
        assert_eq!(p.node_port, Some(30080));
        assert!(p.external_local);
        assert_eq!(ips(&p.cluster_backends), ["10.42.0.2:8080", "10.42.1.2:8080"]);
        assert_eq!(ips(&p.external_backends), ["10.42.0.2:8080"]);
        let internal = service(json!({"clusterIP": "10.43.0.9", "internalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]}));
        let ports = service_ports(&[internal], &slices, "b", None);
        assert_eq!(ips(&ports[0].cluster_backends), ["10.42.1.2:8080"]);
    }

    #[test]
    fn headless_and_external_name_services_carry_nothing() {
        let headless = service(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        let external = service(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert!(service_ports(&[headless, external], &[], "a", None).is_empty());
    }

    #[test]
    fn load_balancer_ingress_and_external_ips_are_external_addresses() {
        let mut svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.9", "externalIPs": ["192.0.2.7"],
            "sessionAffinity": "ClientIP", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}})).expect("service");
        svc.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}}))
                .ok();
        let ports = service_ports(&[Arc::new(svc)], &[], "a", None);
        assert_eq!(ports[0].external_ips.len(), 2);
        assert_eq!(ports[0].affinity_seconds, Some(10800));
        assert!(ports[0].cluster_backends.is_empty());
    }
}
