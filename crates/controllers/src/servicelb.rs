//! ServiceLB (k3s's name): LoadBalancer Services without a cloud. Every Service of type
//! `LoadBalancer` that names no other `loadBalancerClass` gets the addresses of the ready
//! nodes as its `status.loadBalancer.ingress` (only the nodes labelled
//! `svccontroller.k3s.cattle.io/enablelb=true` when any node is, as k3s does); each node's
//! service proxy accepts the Service's ports on its own address. A Service that stops being
//! a load balancer loses the ingress.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::informer::{Change, Informer, split_key};
use crate::queue::{Queue, Requeue, run_workers};

/// The label that picks load-balancer nodes, k3s's.
pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";

/// The ingress addresses a load-balancer Service gets over these nodes.
pub fn ingress_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let ready = |n: &&Arc<Node>| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let labelled: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| n.labels().get(ENABLE_LB_LABEL).is_some_and(|v| v == "true"))
        .collect();
    let pool: Vec<&Arc<Node>> = if labelled.is_empty() { nodes.iter().collect() } else { labelled };
    pool.into_iter()
        .filter(ready)
        .filter_map(|n| {
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            addresses.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether ServiceLB serves this Service.
pub fn serves(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_deref()).is_none()
}

/// The controller; keys are `namespace/name` of Services.
pub struct ServiceLbController {
    client: kube::Client,
    services: Arc<Informer<Service>>,
    nodes: Arc<Informer<Node>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for ServiceLbController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLbController").finish_non_exhaustive()
    }
}

impl ServiceLbController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        services: Arc<Informer<Service>>,
        nodes: Arc<Informer<Node>>,
    ) -> Arc<ServiceLbController> {
        let controller = Arc::new(ServiceLbController {
            client,
            services: services.clone(),
            nodes: nodes.clone(),
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
        nodes.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            // A node's readiness or address changes every load balancer's ingress.
            let relevant = match change {
                Change::Updated(old, new) => {
                    ingress_addresses(&[Arc::clone(old)]) != ingress_addresses(&[Arc::clone(new)])
                        || old.labels().get(ENABLE_LB_LABEL) != new.labels().get(ENABLE_LB_LABEL)
                }
                _ => true,
            };
            if relevant {
                for service in c.services.list().iter().filter(|s| serves(s)) {
                    c.queue.add(crate::informer::key_of(service.as_ref()));
                }
            }
        });
        controller
    }

    /// Syncs Services until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.services.wait_synced().await;
        self.nodes.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "servicelb", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(service) = self.services.get(key) else { return Ok(Requeue::No) };
        let (namespace, name) = split_key(key);
        let current: Vec<serde_json::Value> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| serde_json::to_value(i).ok()).collect())
            .unwrap_or_default();
        let wanted: Vec<serde_json::Value> = if serves(&service) {
            ingress_addresses(&self.nodes.list())
                .into_iter()
                .map(|ip| serde_json::json!({"ip": ip, "ipMode": "VIP"}))
                .collect()
        } else if service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
            // Another controller's load balancer: not ours to touch.
            return Ok(Requeue::No);
        } else {
            Vec::new()
        };
        if current == wanted {
            return Ok(Requeue::No);
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace.unwrap_or_default());
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": wanted}}});
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => Ok(Requeue::No),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Requeue::No),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: bool, lb: Option<&str>) -> Arc<Node> {
        let mut labels = serde_json::json!({});
        if let Some(v) = lb {
            labels[ENABLE_LB_LABEL] = serde_json::json!(v);
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .expect("node"),
        )
    }

    #[test]
    fn ready_nodes_or_the_labelled_ones_carry_load_balancers() {
        let nodes = [
            node("a", "192.0.2.2", true, None),
            node("b", "192.0.2.1", true, None),
            node("c", "192.0.2.3", false, None),
        ];
        assert_eq!(ingress_addresses(&nodes), ["192.0.2.1", "192.0.2.2"]);
        let labelled =
            [node("a", "192.0.2.2", true, Some("true")), node("b", "192.0.2.1", true, None)];
        assert_eq!(ingress_addresses(&labelled), ["192.0.2.2"]);
    }

    #[test]
    fn another_class_is_left_alone() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}}))
        .expect("service");
        assert!(!serves(&svc));
    }
}
