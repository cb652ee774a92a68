//! The ResourceQuota controller: keeps each quota's status, `hard` as its spec says and `used`
//! as its namespace holds, for every resource the quota names: object counts (`pods`,
//! `services`, `count/<resource>.<group>`…), compute requests and limits of the pods that are
//! not finished, NodePorts and load balancers, and claimed storage (also per storage class).
//! Admission (`ResourceQuota` in the API server) charges each create to the quota; this
//! controller gives back what goes away and recounts in full now and then.
//!
//! What is counted is worked out by [`usage`], a pure function of what the namespace holds; the
//! sync only gathers those facts through the API and writes the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::informer::{Change, Informer, key_of, split_key};
use crate::quantity::parse_quantity;
use crate::queue::{Queue, Requeue, run_workers};

/// How often a quota is recounted in full (what other kinds give back, and any drift).
const RESYNC: Duration = Duration::from_secs(30);
/// Pod changes within this window are counted in one sync.
const POD_BATCH: Duration = Duration::from_millis(500);

/// The storage classes' quota resources end in these.
const CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// What a namespace holds, as far as the quotas in it ask.
#[derive(Debug, Default, Clone)]
pub struct NamespaceFacts {
    /// The pods that are not finished: (requests, limits) per container, summed as upstream
    /// (regular containers added up, init containers as their largest).
    pub pods: Vec<(BTreeMap<String, f64>, BTreeMap<String, f64>)>,
    /// Services: (type, number of node ports).
    pub services: Vec<(String, usize)>,
    /// Claims: (storage class, requested bytes).
    pub claims: Vec<(String, f64)>,
    /// Object counts by quota name (`configmaps`, `count/replicasets.apps`…).
    pub counts: BTreeMap<String, usize>,
}

/// Formats a sum as a quantity: whole numbers plainly, fractions in thousandths (CPU).
fn quantity(value: f64) -> Quantity {
    if (value - value.round()).abs() < 1e-9 {
        Quantity(format!("{}", value.round() as i64))
    } else {
        Quantity(format!("{}m", (value * 1000.0).ceil() as i64))
    }
}

/// The `used` of a quota whose `hard` names `resources`, given the namespace's `facts`.
pub fn usage(resources: &[String], facts: &NamespaceFacts) -> BTreeMap<String, Quantity> {
    let mut used = BTreeMap::new();
    let pod_sum = |which: usize, name: &str| -> f64 {
        facts
            .pods
            .iter()
            .map(|p| if which == 0 { &p.0 } else { &p.1 })
            .filter_map(|m| m.get(name))
            .sum()
    };
    for resource in resources {
        let value = match resource.as_str() {
            "pods" | "count/pods" => facts.pods.len() as f64,
            "services" | "count/services" => facts.services.len() as f64,
            "services.loadbalancers" => {
                facts.services.iter().filter(|(t, _)| t == "LoadBalancer").count() as f64
            }
            "services.nodeports" => facts.services.iter().map(|(_, n)| *n).sum::<usize>() as f64,
            "persistentvolumeclaims" | "count/persistentvolumeclaims" => facts.claims.len() as f64,
            "requests.storage" => facts.claims.iter().map(|(_, s)| s).sum(),
            "cpu" | "requests.cpu" => pod_sum(0, "cpu"),
            "memory" | "requests.memory" => pod_sum(0, "memory"),
            "ephemeral-storage" | "requests.ephemeral-storage" => pod_sum(0, "ephemeral-storage"),
            "limits.cpu" => pod_sum(1, "cpu"),
            "limits.memory" => pod_sum(1, "memory"),
            "limits.ephemeral-storage" => pod_sum(1, "ephemeral-storage"),
            other => {
                if let Some((class, what)) = other.split_once(CLASS_SUFFIX) {
                    let claims = facts.claims.iter().filter(|(c, _)| c == class);
                    match what {
                        "persistentvolumeclaims" => claims.count() as f64,
                        "requests.storage" => claims.map(|(_, s)| s).sum(),
                        _ => 0.0,
                    }
                } else if let Some(extended) = other.strip_prefix("requests.") {
                    pod_sum(0, extended)
                } else {
                    facts.counts.get(other).copied().unwrap_or(0) as f64
                }
            }
        };
        used.insert(resource.clone(), quantity(value));
    }
    used
}

/// A pod's requests and limits as the quota counts them.
fn pod_resources(pod: &Pod) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else { return (requests, limits) };
    let add = |into: &mut BTreeMap<String, f64>, list: Option<&BTreeMap<String, Quantity>>| {
        for (name, q) in list.into_iter().flatten() {
            *into.entry(name.clone()).or_default() += parse_quantity(q).unwrap_or(0.0);
        }
    };
    for c in &spec.containers {
        let r = c.resources.as_ref();
        add(&mut requests, r.and_then(|r| r.requests.as_ref()));
        add(&mut limits, r.and_then(|r| r.limits.as_ref()));
    }
    // An init container runs alone: the pod needs the most any one of them asks.
    for c in spec.init_containers.iter().flatten() {
        let r = c.resources.as_ref();
        for (into, list) in [
            (&mut requests, r.and_then(|r| r.requests.as_ref())),
            (&mut limits, r.and_then(|r| r.limits.as_ref())),
        ] {
            for (name, q) in list.into_iter().flatten() {
                let v = parse_quantity(q).unwrap_or(0.0);
                let entry = into.entry(name.clone()).or_default();
                *entry = entry.max(v);
            }
        }
    }
    (requests, limits)
}

/// Whether a quota's scopes (`spec.scopes`, `spec.scopeSelector`) select `pod` (as the
/// admission plugin decides it; a quota without scopes selects every pod).
pub fn in_scope(quota: &ResourceQuota, pod: &Pod) -> bool {
    let spec = quota.spec.as_ref();
    let mut wanted: Vec<(&str, &str, Vec<String>)> = spec
        .and_then(|s| s.scopes.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.as_str(), "Exists", Vec::new()))
        .collect();
    for e in spec
        .and_then(|s| s.scope_selector.as_ref())
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
    {
        wanted.push((
            e.scope_name.as_str(),
            e.operator.as_str(),
            e.values.clone().unwrap_or_default(),
        ));
    }
    let pod_spec = pod.spec.as_ref();
    let terminating = pod_spec.and_then(|s| s.active_deadline_seconds).is_some_and(|d| d >= 0);
    let best_effort = pod_spec.is_none_or(|s| {
        s.containers.iter().chain(s.init_containers.iter().flatten()).all(|c| {
            let r = c.resources.as_ref();
            [r.and_then(|r| r.requests.as_ref()), r.and_then(|r| r.limits.as_ref())]
                .into_iter()
                .flatten()
                .all(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
        })
    });
    let class = pod_spec.and_then(|s| s.priority_class_name.as_deref()).filter(|p| !p.is_empty());
    wanted.iter().all(|(scope, operator, values)| {
        let holds = match *scope {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => {
                return match *operator {
                    "In" => class.is_some_and(|p| values.iter().any(|v| v == p)),
                    "NotIn" => class.is_none_or(|p| !values.iter().any(|v| v == p)),
                    "Exists" => class.is_some(),
                    "DoesNotExist" => class.is_none(),
                    _ => false,
                };
            }
            _ => false,
        };
        if *operator == "DoesNotExist" { !holds } else { holds }
    })
}

/// The ResourceQuota controller; keys are `namespace/name` of quotas.
pub struct ResourceQuotaController {
    client: kube::Client,
    quotas: Arc<Informer<ResourceQuota>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for ResourceQuotaController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceQuotaController").finish_non_exhaustive()
    }
}

impl ResourceQuotaController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        quotas: Arc<Informer<ResourceQuota>>,
        pods: &Arc<Informer<CachedPod>>,
    ) -> Arc<ResourceQuotaController> {
        let controller = Arc::new(ResourceQuotaController {
            client,
            quotas: quotas.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        quotas.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            // A new quota, or new limits. Not a status change: admission charging a create
            // writes the status, and a recount then would miss the object not yet stored.
            match change {
                Change::Added(q) => c.queue.add(key_of(q.as_ref())),
                Change::Updated(old, q) if old.spec != q.spec => c.queue.add(key_of(q.as_ref())),
                _ => {}
            }
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            // Replenishment, as upstream: admission charges a create to the quota itself, so
            // only pods that go away (deleted, or finished) give back; recounting on every
            // create would race admission's charge with a list that misses the new pod.
            let finished = |p: &CachedPod| {
                matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            };
            let pod = match change {
                Change::Deleted(p) => p,
                Change::Updated(old, p) if finished(p) && !finished(old) => p,
                Change::Updated(old, p)
                    if p.metadata.deletion_timestamp.is_some()
                        && old.metadata.deletion_timestamp.is_none() =>
                {
                    p
                }
                _ => return,
            };
            let namespace = pod.namespace();
            for quota in c.quotas.list() {
                if quota.namespace() == namespace {
                    c.queue.add_batched(key_of(quota.as_ref()), POD_BATCH);
                }
            }
        });
        controller
    }

    /// Syncs quotas until dropped.
    pub async fn run(self: Arc<Self>) {
        self.quotas.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), 2, "resourcequota", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(quota) = self.quotas.get(key) else { return Ok(Requeue::No) };
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
        let resources: Vec<String> = hard.keys().cloned().collect();
        let facts = self.facts(namespace, &resources, &quota).await?;
        let used = usage(&resources, &facts);
        let status = quota.status.clone().unwrap_or_default();
        if status.hard.as_ref() != Some(&hard) || status.used.as_ref() != Some(&used) {
            let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
            let patch = serde_json::json!({"status": {"hard": hard, "used": used}});
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Requeue::After(RESYNC))
    }

    /// Reads what the quota's resources need from the namespace (and nothing else).
    async fn facts(
        &self,
        namespace: &str,
        resources: &[String],
        quota: &ResourceQuota,
    ) -> Result<NamespaceFacts, Error> {
        let wants = |pred: &dyn Fn(&str) -> bool| resources.iter().any(|r| pred(r));
        let params = ListParams::default();
        let mut facts = NamespaceFacts::default();
        if wants(&|r| {
            r == "pods"
                || r == "count/pods"
                || r.starts_with("requests.")
                || r.starts_with("limits.")
                || matches!(r, "cpu" | "memory" | "ephemeral-storage")
        }) {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            for pod in pods.list(&params).await? {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed"))
                    || pod.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                if !in_scope(quota, &pod) {
                    continue;
                }
                facts.pods.push(pod_resources(&pod));
            }
        }
        if wants(&|r| r.starts_with("services") || r == "count/services") {
            let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
            for svc in services.list(&params).await? {
                let spec = svc.spec.unwrap_or_default();
                let node_ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.node_port.is_some_and(|n| n > 0))
                    .count();
                facts.services.push((spec.type_.unwrap_or_default(), node_ports));
            }
        }
        if wants(&|r| r.contains("persistentvolumeclaims") || r.ends_with("requests.storage")) {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), namespace);
            for pvc in claims.list(&params).await? {
                let spec = pvc.spec.unwrap_or_default();
                let size = spec
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage"))
                    .and_then(parse_quantity)
                    .unwrap_or(0.0);
                facts.claims.push((spec.storage_class_name.unwrap_or_default(), size));
            }
        }
        for resource in resources {
            let count = match resource.as_str() {
                "configmaps" | "count/configmaps" => {
                    Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                        .list_metadata(&params)
                        .await?
                        .items
                        .len()
                }
                "secrets" | "count/secrets" => {
                    Api::<Secret>::namespaced(self.client.clone(), namespace)
                        .list_metadata(&params)
                        .await?
                        .items
                        .len()
                }
                "replicationcontrollers" | "count/replicationcontrollers" => {
                    Api::<ReplicationController>::namespaced(self.client.clone(), namespace)
                        .list_metadata(&params)
                        .await?
                        .items
                        .len()
                }
                "resourcequotas" | "count/resourcequotas" => self
                    .quotas
                    .list()
                    .iter()
                    .filter(|q| q.namespace().as_deref() == Some(namespace))
                    .count(),
                other => match other.strip_prefix("count/") {
                    Some(what) => self.count_of(namespace, what).await?,
                    None => continue,
                },
            };
            facts.counts.insert(resource.clone(), count);
        }
        Ok(facts)
    }

    /// The number of objects of `<resource>.<group>` (or a core `<resource>`) in `namespace`,
    /// read through discovery so that any served type (custom ones too) can be counted.
    async fn count_of(&self, namespace: &str, what: &str) -> Result<usize, Error> {
        let (plural, group) = what.split_once('.').unwrap_or((what, ""));
        let version = if group.is_empty() {
            "v1".to_owned()
        } else {
            match kube::discovery::group(&self.client, group).await {
                Ok(g) => g.preferred_version_or_latest().to_owned(),
                // A group not served has nothing to count.
                Err(_) => return Ok(0),
            }
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, &version, "");
        let resource = kube::discovery::ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        match api.list_metadata(&ListParams::default()).await {
            Ok(list) => Ok(list.items.len()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_what_the_quota_names() {
        let cpu = |v: f64| BTreeMap::from([("cpu".to_owned(), v)]);
        let facts = NamespaceFacts {
            pods: vec![(cpu(0.25), cpu(1.0)), (cpu(0.5), BTreeMap::new())],
            services: vec![
                ("NodePort".into(), 2),
                ("LoadBalancer".into(), 1),
                ("ClusterIP".into(), 0),
            ],
            claims: vec![("gold".into(), 1024.0 * 1024.0 * 1024.0), ("".into(), 1.0)],
            counts: BTreeMap::from([
                ("resourcequotas".to_owned(), 1),
                ("count/replicasets.apps".to_owned(), 3),
            ]),
        };
        let names: Vec<String> = [
            "pods",
            "requests.cpu",
            "limits.cpu",
            "services",
            "services.nodeports",
            "services.loadbalancers",
            "resourcequotas",
            "count/replicasets.apps",
            "gold.storageclass.storage.k8s.io/persistentvolumeclaims",
            "gold.storageclass.storage.k8s.io/requests.storage",
            "requests.example.com/dongle",
            "configmaps",
        ]
        .map(str::to_owned)
        .to_vec();
        let used = usage(&names, &facts);
        let get = |k: &str| used[k].0.clone();
        assert_eq!(get("pods"), "2");
        assert_eq!(get("requests.cpu"), "750m");
        assert_eq!(get("limits.cpu"), "1");
        assert_eq!(get("services"), "3");
        assert_eq!(get("services.nodeports"), "3");
        assert_eq!(get("services.loadbalancers"), "1");
        assert_eq!(get("resourcequotas"), "1");
        assert_eq!(get("count/replicasets.apps"), "3");
        assert_eq!(get("gold.storageclass.storage.k8s.io/persistentvolumeclaims"), "1");
        assert_eq!(get("gold.storageclass.storage.k8s.io/requests.storage"), "1073741824");
        assert_eq!(get("requests.example.com/dongle"), "0");
        // Counted only when listed: an unknown count is zero, never missing.
        assert_eq!(get("configmaps"), "0");
        assert_eq!(used.len(), names.len());
    }
}
