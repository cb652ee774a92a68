//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector, adopting
//! orphans that match and releasing owned pods that no longer do, deleting unscheduled,
//! unready and newest pods first, and reporting replicas, ready and available counts.
//! The same controller keeps ReplicationControllers (a plain label map as their selector),
//! as upstream's does: both kinds are a [`ReplicaOwner`].
//!
//! Expectations (upstream's mechanism) keep it from acting twice on one need: after it
//! creates or deletes pods it waits until the informer has seen those changes (or five
//! minutes pass) before it counts pods again, so a slow watch never makes it over- or
//! under-shoot.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{self, Change, Informer, key_of, split_key};
use crate::pod_control::{self, Expectations, controller_ref};
use crate::queue::{Queue, Requeue, run_workers};
use crate::selectors::label_selector_matches;

/// At most this many pods are created or deleted in one sync (upstream's burstReplicas).
const BURST: usize = 500;
/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &CachedPod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod became Ready, if it is.
pub fn ready_since(pod: &CachedPod) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Whether the pod has been Ready for `min_ready_seconds`.
pub fn is_available(pod: &CachedPod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds <= 0
            || since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now
    })
}

/// Whether the pod is still counted (not finished, not being deleted).
pub fn is_active(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// A new pod from a template, owned by `owner`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: Some(namespace.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The order pods are deleted in when scaling down: unscheduled before scheduled, pending
/// before running, unready before ready, ready for less time, more restarts, then newer.
fn deletion_rank(pod: &CachedPod) -> impl Ord {
    let spec_node =
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let ready = ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (spec_node, phase, ready.is_some(), Reverse(ready), Reverse(restarts), Reverse(created))
}

/// A kind that owns a number of identical pods: ReplicaSet, ReplicationController.
pub trait ReplicaOwner:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    /// The controller's name in events.
    const CONTROLLER: &'static str;
    /// Its workers' name in logs.
    const WORKERS: &'static str;
    /// The pods' selector, as a label selector.
    fn selector(&self) -> LabelSelector;
    /// The wanted number of pods.
    fn replicas(&self) -> i32;
    /// How long a pod must be ready to count as available.
    fn min_ready_seconds(&self) -> i32;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The status, in the ReplicaSet's shape (both kinds' status has the same fields).
    fn replica_status(&self) -> ReplicaSetStatus;
}

impl ReplicaOwner for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset-controller";
    const WORKERS: &'static str = "replicaset";

    fn selector(&self) -> LabelSelector {
        self.spec.selector.clone()
    }

    fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec.min_ready_seconds.unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }

    fn replica_status(&self) -> ReplicaSetStatus {
        self.status.clone().unwrap_or_default()
    }
}

impl ReplicaOwner for ReplicationController {
    const CONTROLLER: &'static str = "replication-controller";
    const WORKERS: &'static str = "replicationcontroller";

    fn selector(&self) -> LabelSelector {
        let labels = self.spec.as_ref().and_then(|s| s.selector.clone());
        LabelSelector { match_labels: labels, match_expressions: None }
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }

    fn replica_status(&self) -> ReplicaSetStatus {
        // Same JSON field names; a round trip through JSON maps one onto the other.
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}

/// The ReplicaSet controller.
pub type ReplicaSetController = ReplicaController<ReplicaSet>;

/// The ReplicationController controller.
pub type ReplicationControllerController = ReplicaController<ReplicationController>;

/// The controller of one [`ReplicaOwner`] kind.
pub struct ReplicaController<K: ReplicaOwner> {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    replica_sets: Arc<Informer<K>>,
    queue: Arc<Queue>,
    expectations: Expectations,
    recorder: Recorder,
}

impl<K: ReplicaOwner> std::fmt::Debug for ReplicaController<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(K::CONTROLLER).finish_non_exhaustive()
    }
}

fn owner_key<K: ReplicaOwner>(pod: &CachedPod) -> Option<String> {
    let owner = informer::controller_of(pod)?;
    (owner.kind == K::kind(&()) && owner.api_version == K::api_version(&()))
        .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
}

impl<K: ReplicaOwner> ReplicaController<K> {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        replica_sets: Arc<Informer<K>>,
    ) -> Arc<ReplicaController<K>> {
        let controller = Arc::new(ReplicaController {
            recorder: Recorder::new(client.clone(), K::CONTROLLER),
            client,
            pods: pods.clone(),
            replica_sets: replica_sets.clone(),
            queue: Queue::new(),
            expectations: Expectations::default(),
        });
        let this = Arc::downgrade(&controller);
        replica_sets.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            match change {
                Change::Added(rs) | Change::Updated(_, rs) => c.queue.add(key_of(rs.as_ref())),
                Change::Deleted(rs) => {
                    let key = key_of(rs.as_ref());
                    c.expectations.forget(&key);
                    c.queue.add(key);
                }
            }
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            c.pod_changed(change);
        });
        controller
    }

    fn pod_changed(&self, change: &Change<'_, CachedPod>) {
        match change {
            Change::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return;
                }
                match owner_key::<K>(pod) {
                    Some(key) => {
                        self.expectations.created(&key);
                        pod_control::enqueue_owner(&self.queue, &self.expectations, key, true);
                    }
                    None if informer::controller_of(pod.as_ref()).is_none() => {
                        self.enqueue_matching(pod)
                    }
                    None => {}
                }
            }
            Change::Updated(old, pod) => {
                let key = owner_key::<K>(pod);
                let newly_deleting = pod.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none();
                if newly_deleting && let Some(k) = &key {
                    // A pod being deleted counts as gone for expectations, as upstream.
                    self.expectations.deleted(k, &key_of(pod.as_ref()));
                }
                let old_key = owner_key::<K>(old);
                if old_key != key
                    && let Some(k) = &old_key
                {
                    self.queue.add(k.clone());
                }
                match key {
                    Some(k) if old_key.as_ref() != Some(&k) => self.queue.add(k),
                    Some(k) if pod_control::counted_differently(old, pod) => {
                        pod_control::enqueue_owner(
                            &self.queue,
                            &self.expectations,
                            k,
                            newly_deleting,
                        );
                    }
                    // Binding and other changes that neither the status nor any decision
                    // of the ReplicaSet depends on.
                    Some(_) => {}
                    None if informer::controller_of(pod.as_ref()).is_none()
                        && (old.metadata.labels != pod.metadata.labels
                            || informer::controller_of(old.as_ref()).is_some()) =>
                    {
                        self.enqueue_matching(pod);
                    }
                    None => {}
                }
            }
            Change::Deleted(pod) => {
                if let Some(key) = owner_key::<K>(pod) {
                    self.expectations.deleted(&key, &key_of(pod.as_ref()));
                    self.queue.add(key);
                }
            }
        }
    }

    /// Queues the ReplicaSets of the pod's namespace that select it (to adopt an orphan).
    fn enqueue_matching(&self, pod: &CachedPod) {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        for rs in self.replica_sets.list() {
            let selector = rs.selector();
            if rs.namespace().as_deref() == Some(ns.as_str())
                && !crate::selectors::is_empty_selector(&selector)
                && label_selector_matches(&selector, labels)
            {
                self.queue.add(key_of(rs.as_ref()));
            }
        }
    }

    /// Syncs ReplicaSets until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.pods.wait_synced().await;
        self.replica_sets.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, K::WORKERS, move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(rs) = self.replica_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Requeue::No);
        };
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let uid = rs.uid().unwrap_or_default();
        let satisfied = self.expectations.satisfied(key);
        let selector = rs.selector();
        let empty_selector = crate::selectors::is_empty_selector(&selector);
        let selects =
            |p: &CachedPod| !empty_selector && label_selector_matches(&selector, p.labels());
        let pods = crate::pod_control::claim_pods(
            &self.client,
            &self.pods,
            rs.as_ref(),
            selects,
            !empty_selector,
        )
        .await?;
        let active: Vec<Arc<CachedPod>> = pods.into_iter().filter(|p| is_active(p)).collect();
        let mut failure = None;
        if satisfied && rs.meta().deletion_timestamp.is_none() {
            let want = usize::try_from(rs.replicas()).unwrap_or(0);
            if let Err(e) = self.manage_replicas(&rs, key, namespace, name, &active, want).await {
                failure = Some(e);
            }
        }
        let now = jiff::Timestamp::now();
        let min_ready = rs.min_ready_seconds();
        let template_labels = rs
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
        let available = active.iter().filter(|p| is_available(p, min_ready, now)).count() as i32;
        let fully_labeled = active
            .iter()
            .filter(|p| template_labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .count() as i32;
        let current = rs.replica_status();
        let mut conditions: Vec<ReplicaSetCondition> = current
            .conditions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_.as_deref() != Some("ReplicaFailure"))
            .collect();
        if let Some(Error::Api(kube::Error::Api(status))) = &failure {
            conditions.push(ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some(status.message.clone()),
                last_transition_time: Some(Time(now)),
            });
        }
        let status = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: Some(fully_labeled),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.meta().generation,
            conditions: (!conditions.is_empty()).then_some(conditions),
            terminating_replicas: None,
        };
        if !same_status(&current, &status) && rs.uid().as_deref() == Some(uid.as_str()) {
            let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
            let mut patch = serde_json::json!({"status": status});
            if status.conditions.is_none() {
                // A merge patch keeps what it leaves out: a cleared failure must be nulled.
                patch["status"]["conditions"] = serde_json::Value::Null;
            }
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if min_ready > 0 && ready > available {
            return Ok(Requeue::After(
                Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))
                    .max(Duration::from_secs(1)),
            ));
        }
        Ok(Requeue::No)
    }

    async fn manage_replicas(
        &self,
        rs: &K,
        key: &str,
        namespace: &str,
        name: &str,
        active: &[Arc<CachedPod>],
        want: usize,
    ) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        if active.len() < want {
            let missing = (want - active.len()).min(BURST);
            let Some(template) = rs.template().cloned() else {
                return Err(Error::Invalid(format!("{} {key} has no template", K::kind(&()))));
            };
            self.expectations.expect(key, missing as i64, HashSet::new());
            let pod = pod_from_template(&template, namespace, name, controller_ref(rs));
            let post = PostParams::default();
            // Slow start, as upstream: batches of 1, 2, 4… so that a systematic failure
            // (quota, admission) costs one request, not hundreds.
            let mut created = 0;
            let mut batch = 1;
            while created < missing {
                let n = batch.min(missing - created);
                let results =
                    futures::future::join_all((0..n).map(|_| api.create(&post, &pod))).await;
                let mut first_error = None;
                for result in results {
                    match result {
                        Ok(p) => self.recorder.record(
                            object_ref(rs),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        ),
                        Err(e) => {
                            self.expectations.created(key);
                            if first_error.is_none() {
                                first_error = Some(e);
                            }
                        }
                    }
                }
                created += n;
                if let Some(e) = first_error {
                    // The pods never attempted are not expected either.
                    for _ in created..missing {
                        self.expectations.created(key);
                    }
                    let message = format!("Error creating: {e}");
                    self.recorder.record(
                        object_ref(rs),
                        EventType::Warning,
                        "FailedCreate",
                        message,
                    );
                    return Err(e.into());
                }
                batch *= 2;
            }
        } else if active.len() > want {
            let mut ranked: Vec<&Arc<CachedPod>> = active.iter().collect();
            ranked.sort_by_cached_key(|p| deletion_rank(p));
            let victims: Vec<&Arc<CachedPod>> =
                ranked.into_iter().take((active.len() - want).min(BURST)).collect();
            self.expectations.expect(key, 0, victims.iter().map(|p| key_of(p.as_ref())).collect());
            let params = DeleteParams::default();
            let results = futures::future::join_all(
                victims
                    .iter()
                    .map(|p| api.delete(p.metadata.name.as_deref().unwrap_or(""), &params)),
            )
            .await;
            for (pod, result) in victims.iter().zip(results) {
                match result {
                    Ok(_) => self.recorder.record(
                        object_ref(rs),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", pod.name_any()),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        self.expectations.deleted(key, &key_of(pod.as_ref()))
                    }
                    Err(e) => {
                        self.expectations.deleted(key, &key_of(pod.as_ref()));
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }
}

fn same_status(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    let strip = |s: &ReplicaSetStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
        }
        s.terminating_replicas = None;
        s
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> CachedPod {
        serde_json::from_value(value).expect("a valid pod")
    }

    #[test]
    fn binding_does_not_wake_the_replica_set_but_readiness_does() {
        let pending = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"}
        }));
        let bound = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        }));
        let ready = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29T00:00:00Z"}
            ]}
        }));
        let relabeled = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "other"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"}
        }));
        assert!(!pod_control::counted_differently(&pending, &bound));
        assert!(pod_control::counted_differently(&bound, &ready));
        assert!(pod_control::counted_differently(&pending, &relabeled));
    }
}
