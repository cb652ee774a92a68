//! The pod as the shared informer caches it: the fields the scheduler and the controllers
//! read, in the same shape (and under the same names) as `k8s_openapi`'s `Pod`, and nothing
//! else.
//!
//! Why not the full type: a typed `Pod` holds every optional field of the API inline (a
//! `Container` alone is 2.3 KB before any of its strings), so a cached pod cost ~12 KB of
//! heap against ~1.5 KB here; at upstream's 150,000-pod maximum that is the difference
//! between fitting the control plane in 4 GB or not. Decoding into it also skips what it
//! does not keep (env, volumes, probes, managed fields of the spec) without allocating.
//! Writes still go through `Api<Pod>` with the full type.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, Pod, PodCondition, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;

/// A pod, as cached: metadata, and the parts of spec and status controllers read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedPod {
    /// Standard object metadata, without managedFields and annotations (never decoded).
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    /// What the scheduler and controllers read of the spec.
    #[serde(default)]
    pub spec: Option<CachedPodSpec>,
    /// What they read of the status.
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

/// The read part of `PodSpec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedPodSpec {
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `schedulerName`.
    pub scheduler_name: Option<String>,
    /// `priority`.
    pub priority: Option<i32>,
    /// `preemptionPolicy`.
    pub preemption_policy: Option<String>,
    /// `nodeSelector`.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// `affinity`.
    pub affinity: Option<Affinity>,
    /// `tolerations`.
    pub tolerations: Option<Vec<Toleration>>,
    /// `topologySpreadConstraints`.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// `overhead`.
    pub overhead: Option<BTreeMap<String, Quantity>>,
    /// `containers`.
    pub containers: Vec<CachedContainer>,
    /// `initContainers`.
    pub init_containers: Option<Vec<CachedContainer>>,
    /// `hostname` (a headless Service's per-pod DNS name).
    pub hostname: Option<String>,
    /// `subdomain` (the headless Service that gives the pod its DNS name).
    pub subdomain: Option<String>,
    /// `hostNetwork` (such a pod has the node's address, and no policy of its own).
    pub host_network: Option<bool>,
    /// `volumes`, only those backed by a claim (a `persistentVolumeClaim`, or an
    /// `ephemeral` one whose claim is `<pod>-<volume>`): what the scheduler binds and the
    /// claims' protection waits for. Other volumes are skipped.
    #[serde(deserialize_with = "claim_volumes")]
    pub volumes: Option<Vec<CachedVolume>>,
}

/// A pod volume backed by a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedVolume {
    /// The volume's name.
    pub name: String,
    /// The claim's name (for an ephemeral volume, `<pod>-<volume>`, filled in by
    /// [`CachedPod::claim_names`]; empty here).
    pub claim_name: String,
    /// Whether the claim is the pod's own ephemeral one.
    pub ephemeral: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVolume {
    name: String,
    #[serde(default)]
    persistent_volume_claim: Option<RawClaimSource>,
    #[serde(default)]
    ephemeral: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClaimSource {
    #[serde(default)]
    claim_name: String,
}

fn claim_volumes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<CachedVolume>>, D::Error> {
    let all: Option<Vec<RawVolume>> = Option::deserialize(d)?;
    let kept: Vec<CachedVolume> = all
        .into_iter()
        .flatten()
        .filter_map(|v| match (v.persistent_volume_claim, v.ephemeral) {
            (Some(c), _) => {
                Some(CachedVolume { name: v.name, claim_name: c.claim_name, ephemeral: false })
            }
            (None, Some(_)) => {
                Some(CachedVolume { name: v.name, claim_name: String::new(), ephemeral: true })
            }
            (None, None) => None,
        })
        .collect();
    Ok((!kept.is_empty()).then_some(kept))
}

impl CachedPod {
    /// The names of the claims the pod's volumes use (ephemeral ones as `<pod>-<volume>`).
    pub fn claim_names(&self) -> Vec<String> {
        self.claims().into_iter().map(|(name, _)| name).collect()
    }

    /// The claims the pod's volumes use, each with whether it is the pod's own ephemeral
    /// one (`<pod>-<volume>`, made by the ephemeral volume controller).
    pub fn claims(&self) -> Vec<(String, bool)> {
        let pod = self.metadata.name.as_deref().unwrap_or("");
        self.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .map(|v| {
                if v.ephemeral {
                    (format!("{pod}-{}", v.name), true)
                } else {
                    (v.claim_name.clone(), false)
                }
            })
            .collect()
    }
}

/// The read part of a `Container`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedContainer {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: Option<String>,
    /// `resources`.
    pub resources: Option<ResourceRequirements>,
    /// `ports`.
    pub ports: Option<Vec<ContainerPort>>,
    /// `restartPolicy` (`Always` marks a sidecar among init containers).
    pub restart_policy: Option<String>,
}

/// The read part of `PodStatus`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedPodStatus {
    /// `phase`.
    pub phase: Option<String>,
    /// `conditions` (only `Ready` is kept once cached).
    pub conditions: Option<Vec<PodCondition>>,
    /// `containerStatuses`.
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    /// `nominatedNodeName`.
    pub nominated_node_name: Option<String>,
    /// `podIP` (Endpoints list it).
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `startTime` (the HPA discounts the CPU of pods still starting).
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The read part of a `ContainerStatus`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedContainerStatus {
    /// `name`.
    pub name: String,
    /// `ready`.
    pub ready: bool,
    /// `restartCount`.
    pub restart_count: i32,
    /// `state`, only as far as a terminated container's exit code (a Job's pod failure
    /// policy matches on it).
    pub state: Option<CachedContainerState>,
}

/// The read part of a `ContainerState`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedContainerState {
    /// `terminated`.
    pub terminated: Option<CachedContainerStateTerminated>,
}

/// The read part of a `ContainerStateTerminated`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CachedContainerStateTerminated {
    /// `exitCode`.
    pub exit_code: i32,
}

/// The metadata fields a cached pod keeps; the rest (managedFields above all, a large
/// share of every pod) is skipped while decoding.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CachedMetadata {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(deserialize_with = "kept_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    finalizers: Option<Vec<String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
}

fn metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = CachedMetadata::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        generate_name: m.generate_name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        labels: m.labels,
        annotations: m.annotations,
        owner_references: m.owner_references,
        finalizers: m.finalizers,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        ..ObjectMeta::default()
    })
}

/// The annotation prefix a cached pod keeps: the Job controller's (a pod's completion
/// index and its index's failure count). Every other annotation is skipped unallocated.
pub const KEPT_ANNOTATION_PREFIX: &str = "batch.kubernetes.io/";

fn kept_annotations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> serde::de::Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key.starts_with(KEPT_ANNOTATION_PREFIX) {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok((!kept.is_empty()).then_some(kept))
        }
    }
    d.deserialize_any(Kept)
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<&Pod> for CachedPod {
    /// The cached view of a full pod (through its JSON form; for tests and cold paths).
    fn from(pod: &Pod) -> CachedPod {
        serde_json::to_value(pod).and_then(serde_json::from_value).unwrap_or_default()
    }
}

/// Trims what no reader of the cache uses and what changes on every status write.
pub fn slim(pod: &mut CachedPod) {
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        // Ready for every controller; DisruptionTarget (with its reason) for a Job's pod
        // failure policy.
        conditions.retain(|c| c.type_ == "Ready" || c.type_ == "DisruptionTarget");
        for c in conditions.iter_mut() {
            c.message = None;
            if c.type_ == "Ready" {
                c.reason = None;
            }
            c.last_probe_time = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_pod_decodes_into_the_cached_view() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "labels": {"app": "web"}, "annotations": {"a": "b"},
                         "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {
                "nodeName": "n1", "priority": 7, "tolerations": [{"key": "k", "operator": "Exists"}],
                "containers": [{"name": "web", "image": "w:1", "env": [{"name": "A", "value": "1"}],
                                "resources": {"requests": {"cpu": "100m"}},
                                "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                "initContainers": [{"name": "side", "image": "s", "restartPolicy": "Always"}]
            },
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "message": "m"},
                {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "web", "image": "w:1", "imageID": "", "ready": true, "restartCount": 3}]}
        }))
        .expect("pod");
        let mut cached = CachedPod::from(&pod);
        slim(&mut cached);
        let spec = cached.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.priority, Some(7));
        assert_eq!(spec.containers[0].ports.as_ref().map(|p| p[0].host_port), Some(Some(8080)));
        assert_eq!(
            spec.init_containers.as_ref().map(|c| c[0].restart_policy.clone()),
            Some(Some("Always".into()))
        );
        let status = cached.status.as_ref().expect("status");
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
        assert_eq!(status.container_statuses.as_ref().map(|c| c[0].restart_count), Some(3));
        assert_eq!(kube::ResourceExt::name_any(&cached), "p");
        assert_eq!(cached.metadata.labels.as_ref().map(BTreeMap::len), Some(1));
        assert!(cached.metadata.annotations.is_none() && cached.metadata.managed_fields.is_none());
        let indexed: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"a": "b", "batch.kubernetes.io/job-completion-index": "3"}},
            "status": {"containerStatuses": [{"name": "c", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                                              "state": {"terminated": {"exitCode": 42}}}]}
        }))
        .expect("pod");
        let cached = CachedPod::from(&indexed);
        let annotations = cached.metadata.annotations.expect("the Job's annotations");
        assert_eq!(annotations.len(), 1);
        let status = cached.status.expect("status");
        let terminated = status
            .container_statuses
            .as_ref()
            .and_then(|c| c[0].state.as_ref()?.terminated.as_ref());
        assert_eq!(terminated.map(|t| t.exit_code), Some(42));
    }
}
