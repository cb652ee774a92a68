//! The cluster's names, as a pure index built from Services and EndpointSlices: what a
//! name under the cluster domain answers, as upstream's DNS specification for Kubernetes
//! says.
//!
//! - `<service>.<namespace>.svc.<domain>`: the ClusterIP; for a headless Service the ready
//!   endpoints' addresses; for an `ExternalName` Service a CNAME.
//! - `<hostname>.<service>.<namespace>.svc.<domain>` for the endpoints of a headless
//!   Service (the pod's `hostname`, or its address with dashes).
//! - `_<port>._<protocol>.<service>.<namespace>.svc.<domain>` SRV for named ports.
//! - `<a-b-c-d>.<namespace>.pod.<domain>`: the address in the name.
//! - PTR for Service addresses and headless endpoints.
//!
//! Names are kept lower-case and without the final dot; lookups are case-insensitive.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// An address.
    A(Ipv4Addr),
    /// An alias.
    Cname(String),
    /// A service location: port and target name.
    Srv {
        /// The port.
        port: u16,
        /// The target name.
        target: String,
    },
}

/// The record types the index answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A.
    A,
    /// AAAA (never present: the cluster is IPv4).
    Aaaa,
    /// SRV.
    Srv,
    /// PTR.
    Ptr,
    /// Any other type.
    Other,
}

/// What a name under the cluster domain resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records (possibly none of the asked type: NODATA).
    Found(Vec<Rec>),
    /// A PTR answer.
    Ptr(String),
    /// The name does not exist (NXDOMAIN).
    Missing,
    /// Not a cluster name: forward it.
    NotOurs,
}

/// The cluster's names.
#[derive(Debug, Default)]
pub struct Index {
    domain: String,
    names: HashMap<String, Vec<Rec>>,
    /// Names that exist without records of their own (`<ns>.svc.<domain>`, …).
    parents: HashSet<String>,
    ptr: HashMap<Ipv4Addr, String>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

impl Index {
    /// The index of `services` and their `slices` under `domain` (e.g. `cluster.local`).
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Index {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut index = Index { domain: domain.clone(), ..Index::default() };
        index.parents.insert(domain.clone());
        index.parents.insert(format!("svc.{domain}"));
        index.parents.insert(format!("pod.{domain}"));
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let Some(name) =
                slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
            else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
            by_service.entry((namespace, name.as_str())).or_default().push(slice);
        }
        for service in services {
            let (Some(name), Some(namespace)) =
                (service.metadata.name.as_deref(), service.metadata.namespace.as_deref())
            else {
                continue;
            };
            let Some(spec) = service.spec.as_ref() else { continue };
            let fqdn = format!("{name}.{namespace}.svc.{domain}");
            index.parents.insert(format!("{namespace}.svc.{domain}"));
            index.parents.insert(format!("{namespace}.pod.{domain}"));
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                    let target = target.trim_end_matches('.').to_ascii_lowercase();
                    index.names.insert(fqdn, vec![Rec::Cname(target)]);
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let slices = by_service.get(&(namespace, name)).cloned().unwrap_or_default();
            let mut records = Vec::new();
            // Per-endpoint names of a headless Service: ready endpoints, or all of them
            // with publishNotReadyAddresses (the slice controller marks those ready).
            let mut endpoint_names: Vec<(String, Ipv4Addr)> = Vec::new();
            if headless {
                let mut seen = BTreeSet::new();
                for slice in &slices {
                    for endpoint in slice.endpoints.iter().flatten() {
                        let conditions = endpoint.conditions.clone().unwrap_or_default();
                        if !conditions.ready.unwrap_or(true) {
                            continue;
                        }
                        for ip in
                            endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok())
                        {
                            if !seen.insert(ip) {
                                continue;
                            }
                            records.push(Rec::A(ip));
                            let host = endpoint
                                .hostname
                                .clone()
                                .filter(|h| !h.is_empty())
                                .unwrap_or_else(|| dashed(ip))
                                .to_ascii_lowercase();
                            let endpoint_fqdn = format!("{host}.{fqdn}");
                            index.names.entry(endpoint_fqdn.clone()).or_default().push(Rec::A(ip));
                            if endpoint.hostname.as_deref().is_some_and(|h| !h.is_empty()) {
                                index.ptr.insert(ip, endpoint_fqdn.clone());
                            }
                            endpoint_names.push((endpoint_fqdn, ip));
                        }
                    }
                }
            } else {
                for ip in spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .collect::<BTreeSet<_>>()
                {
                    records.push(Rec::A(ip));
                    index.ptr.insert(ip, fqdn.clone());
                }
            }
            for port in spec.ports.iter().flatten() {
                let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let protocol = port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let srv_name = format!("_{}._{protocol}.{fqdn}", port_name.to_ascii_lowercase());
                let mut srv = Vec::new();
                if headless {
                    // Each endpoint at the port its slice gives for this name.
                    for (endpoint_fqdn, _) in &endpoint_names {
                        let target_port = slices
                            .iter()
                            .flat_map(|s| s.ports.iter().flatten())
                            .find(|p| p.name.as_deref() == Some(port_name))
                            .and_then(|p| p.port)
                            .and_then(|p| u16::try_from(p).ok());
                        if let Some(port) = target_port {
                            srv.push(Rec::Srv { port, target: endpoint_fqdn.clone() });
                        }
                    }
                } else if let Ok(port) = u16::try_from(port.port) {
                    srv.push(Rec::Srv { port, target: fqdn.clone() });
                }
                if !srv.is_empty() {
                    index.parents.insert(format!("_{protocol}.{fqdn}"));
                    index.names.insert(srv_name, srv);
                }
            }
            index.names.entry(fqdn).or_default().extend(records);
        }
        index
    }

    /// The cluster domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Resolves `name` (any case, with or without the final dot) for `kind`.
    pub fn lookup(&self, name: &str, kind: Kind) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if kind == Kind::Ptr {
            return match reverse(&name) {
                Some(ip) => match self.ptr.get(&ip) {
                    Some(target) => Lookup::Ptr(target.clone()),
                    // Reverse names of the service network are ours only when known.
                    None => Lookup::NotOurs,
                },
                None if self.under_domain(&name) => Lookup::Missing,
                None => Lookup::NotOurs,
            };
        }
        if !self.under_domain(&name) {
            return Lookup::NotOurs;
        }
        if let Some(records) = self.names.get(&name) {
            let cname = records.iter().find(|r| matches!(r, Rec::Cname(_)));
            let wanted: Vec<Rec> = match (cname, kind) {
                // An alias answers every type with itself.
                (Some(c), _) => vec![c.clone()],
                (None, Kind::A) => {
                    records.iter().filter(|r| matches!(r, Rec::A(_))).cloned().collect()
                }
                (None, Kind::Srv) => {
                    records.iter().filter(|r| matches!(r, Rec::Srv { .. })).cloned().collect()
                }
                _ => Vec::new(),
            };
            return Lookup::Found(wanted);
        }
        if let Some(ip) = self.pod_address(&name) {
            return Lookup::Found(if kind == Kind::A { vec![Rec::A(ip)] } else { Vec::new() });
        }
        if self.parents.contains(&name) {
            return Lookup::Found(Vec::new());
        }
        Lookup::Missing
    }

    fn under_domain(&self, name: &str) -> bool {
        name == self.domain
            || name.strip_suffix(self.domain.as_str()).is_some_and(|rest| rest.ends_with('.'))
    }

    /// `a-b-c-d.<namespace>.pod.<domain>`.
    fn pod_address(&self, name: &str) -> Option<Ipv4Addr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (host, namespace) = rest.split_once('.')?;
        if namespace.is_empty() || namespace.contains('.') {
            return None;
        }
        host.replace('-', ".").parse().ok()
    }
}

/// The address a `d.c.b.a.in-addr.arpa` name asks about.
fn reverse(name: &str) -> Option<Ipv4Addr> {
    let digits = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = digits.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [d, c, b, a] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}),
            )
            .expect("service"),
        )
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))
            .expect("slice"),
        )
    }

    fn index() -> Index {
        Index::build(
            "cluster.local",
            &[
                service(
                    "web",
                    serde_json::json!({"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}),
                ),
                service(
                    "db",
                    serde_json::json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
                ),
                service(
                    "out",
                    serde_json::json!({"type": "ExternalName", "externalName": "Example.COM."}),
                ),
            ],
            &[slice(
                "db",
                serde_json::json!([
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.7"], "hostname": "db-2", "conditions": {"ready": false}},
                ]),
            )],
        )
    }

    fn a(ip: &str) -> Rec {
        Rec::A(ip.parse().expect("ip"))
    }

    #[test]
    fn services_headless_endpoints_and_aliases_resolve() {
        let index = index();
        assert_eq!(
            index.lookup("web.ns.svc.cluster.local.", Kind::A),
            Lookup::Found(vec![a("10.43.0.20")])
        );
        assert_eq!(
            index.lookup("WEB.ns.svc.Cluster.Local", Kind::A),
            Lookup::Found(vec![a("10.43.0.20")])
        );
        assert_eq!(
            index.lookup("db.ns.svc.cluster.local", Kind::A),
            Lookup::Found(vec![a("10.42.0.5"), a("10.42.0.6")]),
            "ready endpoints only"
        );
        assert_eq!(
            index.lookup("db-0.db.ns.svc.cluster.local", Kind::A),
            Lookup::Found(vec![a("10.42.0.5")])
        );
        assert_eq!(
            index.lookup("10-42-0-6.db.ns.svc.cluster.local", Kind::A),
            Lookup::Found(vec![a("10.42.0.6")])
        );
        assert_eq!(
            index.lookup("out.ns.svc.cluster.local", Kind::A),
            Lookup::Found(vec![Rec::Cname("example.com".into())])
        );
        assert_eq!(index.lookup("web.ns.svc.cluster.local", Kind::Aaaa), Lookup::Found(vec![]));
        assert_eq!(index.lookup("nope.ns.svc.cluster.local", Kind::A), Lookup::Missing);
        assert_eq!(index.lookup("ns.svc.cluster.local", Kind::A), Lookup::Found(vec![]));
        assert_eq!(index.lookup("example.org", Kind::A), Lookup::NotOurs);
        assert_eq!(index.lookup("notcluster.local", Kind::A), Lookup::NotOurs);
    }

    #[test]
    fn srv_pod_and_reverse_records() {
        let index = index();
        assert_eq!(
            index.lookup("_http._tcp.web.ns.svc.cluster.local", Kind::Srv),
            Lookup::Found(vec![Rec::Srv { port: 80, target: "web.ns.svc.cluster.local".into() }])
        );
        assert_eq!(
            index.lookup("_http._tcp.db.ns.svc.cluster.local", Kind::Srv),
            Lookup::Found(vec![
                Rec::Srv { port: 8080, target: "db-0.db.ns.svc.cluster.local".into() },
                Rec::Srv { port: 8080, target: "10-42-0-6.db.ns.svc.cluster.local".into() },
            ])
        );
        assert_eq!(
            index.lookup("10-42-1-9.ns.pod.cluster.local", Kind::A),
            Lookup::Found(vec![a("10.42.1.9")])
        );
        assert_eq!(
            index.lookup("20.0.43.10.in-addr.arpa", Kind::Ptr),
            Lookup::Ptr("web.ns.svc.cluster.local".into())
        );
        assert_eq!(
            index.lookup("5.0.42.10.in-addr.arpa.", Kind::Ptr),
            Lookup::Ptr("db-0.db.ns.svc.cluster.local".into())
        );
        assert_eq!(index.lookup("9.9.9.9.in-addr.arpa", Kind::Ptr), Lookup::NotOurs);
    }
}
