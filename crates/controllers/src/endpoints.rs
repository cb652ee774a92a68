//! The Endpoints controller: every Service with a selector has an Endpoints object of the
//! same name listing the addresses of the pods it selects, ready ones under `addresses` and
//! the others under `notReadyAddresses`, grouped into subsets by the ports they serve
//! (upstream's repacking). A Service without a selector keeps the Endpoints its owner
//! writes; a deleted Service loses its Endpoints.
//!
//! What the subsets are is a pure function of the Service and its pods (`subsets`); the
//! sync only compares and writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::informer::{Change, Informer, split_key};
use crate::queue::{Queue, Requeue, run_workers};

/// Upstream's label on the Endpoints of a headless Service.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The Endpoints controller; keys are `namespace/name` of Services.
pub struct EndpointsController {
    client: kube::Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<CachedPod>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for EndpointsController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointsController").finish_non_exhaustive()
    }
}

pub(crate) fn selects(service: &Service, pod: &CachedPod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if selector.is_empty() || service.namespace() != pod.metadata.namespace {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

impl EndpointsController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        services: Arc<Informer<Service>>,
        pods: Arc<Informer<CachedPod>>,
    ) -> Arc<EndpointsController> {
        let controller = Arc::new(EndpointsController {
            client,
            services: services.clone(),
            pods: pods.clone(),
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
            // Both the Services that selected the pod and those that select it now.
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
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "endpoints", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), namespace);
        let Some(service) = self.services.get(key) else {
            return match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(Requeue::No),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(Requeue::No),
                Err(e) => Err(e.into()),
            };
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.selector.as_ref().is_none_or(BTreeMap::is_empty)
            || spec.type_.as_deref() == Some("ExternalName")
        {
            return Ok(Requeue::No);
        }
        let pods: Vec<Arc<CachedPod>> =
            self.pods.list().into_iter().filter(|p| selects(&service, p)).collect();
        let subsets = subsets(&service, &pods);
        let mut labels = service.labels().clone();
        if spec.cluster_ip.as_deref() == Some("None") {
            labels.insert(HEADLESS_LABEL.into(), String::new());
        } else {
            labels.remove(HEADLESS_LABEL);
        }
        let current = api.get_opt(name).await?;
        let wanted_subsets = (!subsets.is_empty()).then_some(subsets);
        match current {
            Some(current)
                if current.subsets.clone().filter(|s| !s.is_empty()) == wanted_subsets
                    && current.metadata.labels.clone().unwrap_or_default() == labels =>
            {
                Ok(Requeue::No)
            }
            Some(mut current) => {
                current.subsets = wanted_subsets;
                current.metadata.labels = Some(labels);
                current.metadata.managed_fields = None;
                match api.replace(name, &PostParams::default(), &current).await {
                    Ok(_) => Ok(Requeue::No),
                    // Changed meanwhile: the next sync reads it again.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        Ok(Requeue::After(std::time::Duration::from_millis(100)))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            None => {
                let endpoints = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    subsets: wanted_subsets,
                };
                match api.create(&PostParams::default(), &endpoints).await {
                    Ok(_) => Ok(Requeue::No),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        Ok(Requeue::After(std::time::Duration::from_millis(100)))
                    }
                    // The namespace is going away.
                    Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(Requeue::No),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Whether the pod's `Ready` condition is true.
pub(crate) fn ready(pod: &CachedPod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port a Service port reaches on `pod`: a number as it is, a name through the pod's
/// container ports of that protocol; `None` when the pod has no such named port.
pub(crate) fn target_port(
    pod: &CachedPod,
    target: Option<&IntOrString>,
    port: i32,
    protocol: &str,
) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The Endpoints subsets of `service` over `pods` (those it selects): pods with an address,
/// not finished and not being deleted (unless `publishNotReadyAddresses`), grouped by the
/// ports they serve, addresses and ports in a stable order so that an unchanged set is
/// recognised as unchanged.
pub fn subsets(service: &Service, pods: &[Arc<CachedPod>]) -> Vec<EndpointSubset> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Port set → (ready, not ready) addresses.
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    let mut app_protocols: BTreeMap<String, String> = BTreeMap::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        if ip.is_empty() {
            continue;
        }
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
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
        // A pod that serves none of several ports is left out; a Service without ports
        // (headless) lists addresses alone.
        if ports.is_empty() && !spec.ports.as_ref().is_none_or(Vec::is_empty) {
            continue;
        }
        ports.sort();
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..EndpointAddress::default()
        };
        let group = groups.entry(ports).or_default();
        if publish_not_ready || ready(pod) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .map(|(name, port, protocol)| EndpointPort {
                    app_protocol: app_protocols.get(&name).cloned(),
                    name: (!name.is_empty()).then_some(name),
                    port,
                    protocol: Some(protocol),
                })
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                             "labels": {"app": "web"}},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": ports}]},
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

    #[test]
    fn ready_and_not_ready_pods_are_grouped_by_the_ports_they_serve() {
        let svc = service(json!({
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        }));
        let named = json!([{"name": "web", "containerPort": 8080}]);
        let other = json!([{"name": "web", "containerPort": 9090}]);
        let pods = vec![
            pod("b", "10.42.0.3", true, named.clone()),
            pod("a", "10.42.0.2", true, named.clone()),
            pod("c", "10.42.0.4", false, named),
            pod("d", "10.42.0.5", true, other),
            pod("e", "", true, json!([{"name": "web", "containerPort": 8080}])),
            pod("f", "10.42.0.7", true, json!([])),
        ];
        let subsets = subsets(&svc, &pods);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let first = &subsets[0];
        let ips = |a: &Option<Vec<EndpointAddress>>| -> Vec<String> {
            a.iter().flatten().map(|a| a.ip.clone()).collect()
        };
        assert_eq!(ips(&first.addresses), ["10.42.0.2", "10.42.0.3"]);
        assert_eq!(ips(&first.not_ready_addresses), ["10.42.0.4"]);
        let port = &first.ports.as_ref().expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
        assert_eq!(ips(&subsets[1].addresses), ["10.42.0.5"]);
        let target = first.addresses.as_ref().expect("addresses")[0].target_ref.clone();
        assert_eq!(target.and_then(|t| t.name).as_deref(), Some("a"));
    }

    #[test]
    fn publish_not_ready_addresses_and_finished_pods() {
        let svc = service(json!({
            "selector": {"app": "web"},
            "publishNotReadyAddresses": true,
            "ports": [{"port": 80, "targetPort": 8080}],
        }));
        let mut done = (*pod("done", "10.42.0.9", false, json!([]))).clone();
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        let pods = vec![pod("a", "10.42.0.2", false, json!([])), Arc::new(done)];
        let subsets = subsets(&svc, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
        assert!(subsets[0].not_ready_addresses.is_none());
        assert_eq!(subsets[0].ports.as_ref().expect("ports")[0].port, 8080);
        assert!(!selects(&service(json!({"ports": []})), &pods[0]), "no selector, no pods");
    }
}
