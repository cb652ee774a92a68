//! The EndpointSlice controller: every Service with a selector has EndpointSlices
//! (`discovery.k8s.io/v1`) listing the pods it selects, at most 100 endpoints per slice,
//! one slice per set of ports the pods serve, each endpoint with its `ready`, `serving` and
//! `terminating` conditions, node, zone and target pod. The service proxies and cluster DNS
//! read these, not Endpoints.
//!
//! What the slices hold is a pure function of the Service, its pods and the nodes' zones
//! (`desired`); the sync matches it to the slices the controller already owns for the
//! Service (same ports first), updates those that differ, creates what is missing and
//! deletes the rest, so an unchanged Service costs no write.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::endpoints::{ready, selects, target_port};
use crate::informer::{Change, Informer, split_key};
use crate::queue::{Queue, Requeue, run_workers};

/// Most endpoints one slice holds (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`], upstream's.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Where the nodes are: each node's zone, and each zone's allocatable CPU (cores), which
/// topology hints share endpoints by.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Node name to zone (nodes with a zone label).
    pub zone_of_node: BTreeMap<String, String>,
    /// Zone to the allocatable CPU of its nodes.
    pub zone_cpu: BTreeMap<String, f64>,
}

impl Topology {
    /// The topology of `nodes`.
    pub fn of(nodes: &[Arc<Node>]) -> Topology {
        let mut out = Topology::default();
        for node in nodes {
            let Some(zone) = node.labels().get(ZONE_LABEL) else { continue };
            out.zone_of_node.insert(node.name_any(), zone.clone());
            let cpu = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get("cpu"))
                .and_then(crate::quantity::parse_quantity)
                .unwrap_or(0.0);
            *out.zone_cpu.entry(zone.clone()).or_default() += cpu;
        }
        out
    }
}

/// One slice as it should be: its ports and endpoints (sorted, so equal means unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSlice {
    /// The ports every endpoint of the slice serves.
    pub ports: Vec<EndpointPort>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The slices of `service` over `pods` (those it selects), with the endpoints' zones and,
/// when the Service asks for them, topology hints from `topology`. Pods without an address or finished are left out; a terminating pod stays with
/// `ready: false` and `terminating: true` (and `serving` as its readiness), so a proxy can
/// fall back on it while nothing else serves. A Service whose pods serve nothing still
/// gets one empty slice with its ports, as upstream, so readers can tell "no endpoints" from
/// "not synced yet".
pub fn desired(
    service: &Service,
    pods: &[Arc<CachedPod>],
    topology: &Topology,
) -> Vec<DesiredSlice> {
    let zones = &topology.zone_of_node;
    let hint_mode = crate::topology_hints::mode(service);
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let service_name = service.name_any();
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    let mut app_protocols: BTreeMap<String, String> = BTreeMap::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else {
            continue;
        };
        // Only IPv4 is served on these nodes; an IPv6 address would need its own slice.
        if ip.contains(':') {
            continue;
        }
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let Some(number) = target_port(pod, p.target_port.as_ref(), p.port, &protocol) else {
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            if let Some(app) = &p.app_protocol {
                app_protocols.insert(name.clone(), app.clone());
            }
            ports.push((name, number, protocol));
        }
        if ports.is_empty() && !spec.ports.as_ref().is_none_or(Vec::is_empty) {
            continue;
        }
        ports.sort();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = publish_not_ready || ready(pod);
        let pod_spec = pod.spec.as_ref();
        let node_name = pod_spec.and_then(|s| s.node_name.clone());
        // The per-pod DNS name of a headless Service (StatefulSets rely on it).
        let hostname = pod_spec
            .filter(|s| s.subdomain.as_deref() == Some(service_name.as_str()))
            .and_then(|s| s.hostname.clone());
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(serving && (!terminating || publish_not_ready)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            zone: node_name.as_ref().and_then(|n| zones.get(n)).cloned(),
            node_name,
            hostname,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    let port_list = |ports: Vec<(String, i32, String)>| -> Vec<EndpointPort> {
        ports
            .into_iter()
            .map(|(name, port, protocol)| EndpointPort {
                app_protocol: app_protocols.get(&name).cloned(),
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
            })
            .collect()
    };
    let mut slices = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        // Hints go to the ready endpoints of each set of ports (a proxy picks among those).
        let ready_zones: Vec<Option<String>> = endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .map(|e| e.zone.clone())
            .collect();
        if let Some(hints) =
            crate::topology_hints::allocate(hint_mode, &ready_zones, &topology.zone_cpu)
        {
            let ready = endpoints
                .iter_mut()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
            for (endpoint, zone) in ready.zip(hints) {
                endpoint.hints = Some(EndpointHints {
                    for_zones: Some(vec![ForZone { name: zone }]),
                    ..EndpointHints::default()
                });
            }
        }
        let ports = port_list(ports);
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            slices.push(DesiredSlice { ports: ports.clone(), endpoints: chunk.to_vec() });
        }
    }
    if slices.is_empty() {
        // The Service's own ports, with numeric targets where they are numbers.
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let target = match &p.target_port {
                    None => Some(p.port),
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        Some(*n)
                    }
                    Some(_) => None,
                };
                (p.name.clone().unwrap_or_default(), target, p.protocol.clone())
            })
            .filter_map(|(name, port, protocol)| {
                port.map(|port| (name, port, protocol.unwrap_or_else(|| "TCP".into())))
            })
            .collect();
        slices.push(DesiredSlice { ports: port_list(ports), endpoints: Vec::new() });
    }
    slices
}

/// Which existing slice (by index) carries which desired one: slices with the same ports
/// first, in order; `None` means create. Returns the assignment and the existing slices
/// left over (to delete).
pub fn assign(
    existing: &[DesiredSlice],
    wanted: &[DesiredSlice],
) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut used = vec![false; existing.len()];
    let mut out = vec![None; wanted.len()];
    // An identical slice stays as it is.
    for (w, want) in wanted.iter().enumerate() {
        if let Some(i) = (0..existing.len()).find(|&i| !used[i] && existing[i] == *want) {
            used[i] = true;
            out[w] = Some(i);
        }
    }
    // Then one with the same ports is rewritten.
    for (w, want) in wanted.iter().enumerate() {
        if out[w].is_none()
            && let Some(i) =
                (0..existing.len()).find(|&i| !used[i] && existing[i].ports == want.ports)
        {
            used[i] = true;
            out[w] = Some(i);
        }
    }
    let left = (0..existing.len()).filter(|&i| !used[i]).collect();
    (out, left)
}

/// The EndpointSlice controller; keys are `namespace/name` of Services.
pub struct EndpointSliceController {
    client: kube::Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<CachedPod>>,
    nodes: Arc<Informer<Node>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for EndpointSliceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSliceController").finish_non_exhaustive()
    }
}

impl EndpointSliceController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        services: Arc<Informer<Service>>,
        pods: Arc<Informer<CachedPod>>,
        nodes: Arc<Informer<Node>>,
    ) -> Arc<EndpointSliceController> {
        let controller = Arc::new(EndpointSliceController {
            client,
            services: services.clone(),
            pods: pods.clone(),
            nodes,
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        services.on_change(move |change| {
            let (Change::Added(s) | Change::Updated(_, s) | Change::Deleted(s)) = change;
            if let Some(c) = this.upgrade() {
                c.queue.add(crate::informer::key_of(s.as_ref()));
            }
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (old, new) = match change {
                Change::Added(p) | Change::Deleted(p) => (None, p),
                Change::Updated(old, new) => (Some(old), new),
            };
            for service in c.services.list() {
                if selects(&service, new) || old.is_some_and(|o| selects(&service, o)) {
                    c.queue.add(crate::informer::key_of(service.as_ref()));
                }
            }
        });
        controller
    }

    /// Syncs Services until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.services.wait_synced().await;
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "endpointslice", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let owned = ListParams::default()
            .labels(&format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let existing = api.list(&owned).await?.items;
        let service = self.services.get(key).filter(|s| {
            let spec = s.spec.as_ref();
            spec.and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty())
                && spec.and_then(|s| s.type_.as_deref()) != Some("ExternalName")
        });
        let Some(service) = service else {
            // A deleted Service's slices also go with it through their owner reference;
            // a Service that lost its selector keeps none of ours.
            for slice in existing {
                delete(&api, &slice.name_any()).await?;
            }
            return Ok(Requeue::No);
        };
        let pods: Vec<Arc<CachedPod>> =
            self.pods.list().into_iter().filter(|p| selects(&service, p)).collect();
        let topology = Topology::of(&self.nodes.list());
        let wanted = desired(&service, &pods, &topology);
        let labels = slice_labels(&service);
        let current: Vec<DesiredSlice> = existing
            .iter()
            .map(|s| DesiredSlice {
                ports: s.ports.clone().unwrap_or_default(),
                endpoints: s.endpoints.clone().unwrap_or_default(),
            })
            .collect();
        let (assignment, left) = assign(&current, &wanted);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: service.name_any(),
            uid: service.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        for (want, slot) in wanted.into_iter().zip(assignment) {
            match slot {
                Some(i)
                    if current[i] == want
                        && existing[i].metadata.labels.as_ref() == Some(&labels) => {}
                Some(i) => {
                    let mut slice = existing[i].clone();
                    slice.ports = Some(want.ports);
                    slice.endpoints = Some(want.endpoints);
                    slice.metadata.labels = Some(labels.clone());
                    slice.metadata.managed_fields = None;
                    match api.replace(&slice.name_any(), &PostParams::default(), &slice).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                            return Ok(Requeue::After(std::time::Duration::from_millis(100)));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{name}-")),
                            namespace: Some(namespace.to_owned()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..ObjectMeta::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints: Some(want.endpoints),
                        ports: Some(want.ports),
                    };
                    match api.create(&PostParams::default(), &slice).await {
                        Ok(_) => {}
                        // The namespace is going away.
                        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {
                            return Ok(Requeue::No);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        for i in left {
            delete(&api, &existing[i].name_any()).await?;
        }
        Ok(Requeue::No)
    }
}

/// The Service's labels plus the slice's own (upstream copies the Service's labels).
fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), service.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

async fn delete(api: &Api<EndpointSlice>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, deleting: bool) -> Arc<CachedPod> {
        let mut meta = json!({"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                              "labels": {"app": "web"}});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": meta,
                "spec": {"nodeName": "node-a", "hostname": name, "subdomain": "web",
                         "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .expect("pod"),
        )
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec}),
        )
        .expect("service")
    }

    fn conditions(e: &Endpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready.unwrap_or(false), c.serving.unwrap_or(false), c.terminating.unwrap_or(false))
    }

    #[test]
    fn ready_endpoints_get_zone_hints_when_the_service_asks() {
        let svc = service(json!({"selector": {"app": "web"}, "trafficDistribution": "PreferClose",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        let pods = vec![pod("a", "10.42.0.2", true, false), pod("b", "10.42.0.3", false, false)];
        let topology = Topology {
            zone_of_node: BTreeMap::from([("node-a".to_owned(), "z1".to_owned())]),
            zone_cpu: BTreeMap::from([("z1".to_owned(), 2.0)]),
        };
        let slices = desired(&svc, &pods, &topology);
        let hints: Vec<Option<String>> = slices[0]
            .endpoints
            .iter()
            .map(|e| {
                let zones = e.hints.as_ref().and_then(|h| h.for_zones.clone()).unwrap_or_default();
                zones.first().map(|z| z.name.clone())
            })
            .collect();
        assert_eq!(hints, [Some("z1".to_owned()), None], "only the ready one");
        // Without asking, none.
        let plain = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        let slices = desired(&plain, &pods, &topology);
        assert!(slices[0].endpoints.iter().all(|e| e.hints.is_none()));
    }

    #[test]
    fn endpoints_carry_ready_serving_and_terminating() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        let pods = vec![
            pod("b", "10.42.0.3", true, false),
            pod("a", "10.42.0.2", false, false),
            pod("c", "10.42.0.4", true, true),
        ];
        let topology = Topology {
            zone_of_node: BTreeMap::from([("node-a".to_owned(), "z1".to_owned())]),
            ..Topology::default()
        };
        let slices = desired(&svc, &pods, &topology);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.ports[0].port, Some(8080));
        assert_eq!(s.ports[0].name.as_deref(), Some("http"));
        let got: Vec<_> =
            s.endpoints.iter().map(|e| (e.addresses[0].as_str(), conditions(e))).collect();
        assert_eq!(
            got,
            [
                ("10.42.0.2", (false, false, false)),
                ("10.42.0.3", (true, true, false)),
                ("10.42.0.4", (false, true, true)),
            ]
        );
        assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
        assert_eq!(s.endpoints[0].hostname.as_deref(), Some("a"));
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn large_services_are_split_at_a_hundred_and_empty_ones_keep_their_ports() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}));
        let pods: Vec<_> = (0..250)
            .map(|i| pod(&format!("p{i}"), &format!("10.42.{}.{}", i / 200, i % 200), true, false))
            .collect();
        let slices = desired(&svc, &pods, &Topology::default());
        assert_eq!(slices.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(), [100, 100, 50]);
        let empty = desired(&svc, &[], &Topology::default());
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
        assert_eq!(empty[0].ports[0].port, Some(8080));
    }

    #[test]
    fn publish_not_ready_makes_every_endpoint_ready() {
        let svc = service(json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true,
            "ports": [{"port": 80}]}));
        let slices = desired(&svc, &[pod("a", "10.42.0.2", false, false)], &Topology::default());
        assert_eq!(conditions(&slices[0].endpoints[0]), (true, true, false));
    }

    #[test]
    fn unchanged_slices_are_kept_and_others_reused_by_ports() {
        let port = |n| EndpointPort { port: Some(n), ..EndpointPort::default() };
        let ep = |ip: &str| Endpoint { addresses: vec![ip.into()], ..Endpoint::default() };
        let a = DesiredSlice { ports: vec![port(80)], endpoints: vec![ep("1")] };
        let b = DesiredSlice { ports: vec![port(80)], endpoints: vec![ep("2")] };
        let c = DesiredSlice { ports: vec![port(81)], endpoints: vec![ep("3")] };
        // `b` stays where it is, `a`'s slot takes the new one with the same ports, `c`'s
        // goes.
        let new = DesiredSlice { ports: vec![port(80)], endpoints: vec![ep("4")] };
        let (slots, left) = assign(&[a, b.clone(), c], &[b, new]);
        assert_eq!(slots, [Some(1), Some(0)]);
        assert_eq!(left, [2]);
    }
}
