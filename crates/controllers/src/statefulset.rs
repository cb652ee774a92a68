//! The StatefulSet controller: pods with stable names (`<set>-<ordinal>`), a stable network
//! identity (`hostname` = the pod's name, `subdomain` = the governing Service) and stable
//! storage (one claim per `volumeClaimTemplates` entry and ordinal, kept across the pod's
//! re-creations), created and deleted in ordinal order unless the pod management policy is
//! `Parallel`, updated from the highest ordinal down to the partition, with the template's
//! history in ControllerRevisions (`history.rs`).
//!
//! [`plan`] is upstream's `updateStatefulSet` decision as a pure function of the set and its
//! pods; [`StatefulSetController::sync`] reads, plans and writes. Pod names are fixed, so a
//! lagging cache cannot make it create a pod twice (the second create is a 409) and
//! deletions carry the pod's UID as a precondition, so it never deletes a re-created pod it
//! has not seen.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::history;
use crate::informer::{self, BY_CONTROLLER, Change, Informer, key_of};
use crate::pod_control;
use crate::pod_control::controller_ref;
use crate::queue::{Queue, Requeue, run_workers};
use crate::replicaset::{is_available, is_ready};
use crate::selectors::label_selector_matches;

/// The pod label holding the revision (ControllerRevision name) a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The pod label holding the pod's own name (a Service can select one member).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label holding the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What the plan reads of a StatefulSet's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.ordinals.start`.
    pub start: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy.type: OnDelete`.
    pub on_delete: bool,
    /// `updateStrategy.rollingUpdate.partition`.
    pub partition: i32,
    /// `updateStrategy.rollingUpdate.maxUnavailable`, resolved against `replicas` (≥ 1).
    pub max_unavailable: i32,
    /// `minReadySeconds`.
    pub min_ready_seconds: i32,
    /// The set is being deleted: only its status is kept.
    pub deleting: bool,
}

impl SetSpec {
    /// The plan's view of `set`.
    pub fn of(set: &StatefulSet) -> SetSpec {
        let spec = Some(&set.spec);
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
        let max_unavailable = match rolling.and_then(|r| r.max_unavailable.as_ref()) {
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(s)) => {
                let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
                // Percentages round down, as upstream's, and never below one pod.
                i32::try_from(percent * i64::from(replicas) / 100).unwrap_or(1)
            }
            None => 1,
        };
        SetSpec {
            replicas,
            start: spec.and_then(|s| s.ordinals.as_ref()).and_then(|o| o.start).unwrap_or(0),
            parallel: spec.and_then(|s| s.pod_management_policy.as_deref()) == Some("Parallel"),
            on_delete: strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete"),
            partition: rolling.and_then(|r| r.partition).unwrap_or(0).max(0),
            max_unavailable: max_unavailable.max(1),
            min_ready_seconds: spec.and_then(|s| s.min_ready_seconds).unwrap_or(0),
            deleting: set.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// One step the controller takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod of this ordinal from this revision (a ControllerRevision's name).
    Create {
        /// The ordinal.
        ordinal: i32,
        /// The revision it is made from.
        revision: String,
    },
    /// Delete this pod (precondition: its UID).
    Delete {
        /// The pod's name.
        name: String,
        /// Its UID.
        uid: String,
        /// It is beyond the replica count (its claims' `whenScaled` policy applies).
        condemned: bool,
    },
}

/// What the controller does this sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The writes, in order.
    pub actions: Vec<Action>,
    /// Look again after this long (a pod not yet available for `minReadySeconds`).
    pub requeue_after: Option<Duration>,
}

/// The ordinal in a member's name, `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &CachedPod) -> bool {
    phase(pod) == Some("Running") && is_ready(pod)
}

fn healthy(pod: &CachedPod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

fn revision_of(pod: &CachedPod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

/// How long until a ready pod has been ready for `min_ready_seconds` (none: it is, or it
/// is not ready).
fn until_available(
    pod: &CachedPod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let since = crate::replicaset::ready_since(pod)?;
    let at = since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds));
    (at > now).then(|| Duration::try_from(at - now).unwrap_or(Duration::from_secs(1)))
}

/// Upstream's `updateStatefulSet` decision: create missing members (re-creating failed
/// ones), delete members beyond the replica count from the highest ordinal, and replace
/// members not at the update revision from the highest ordinal down to the partition. With
/// `OrderedReady` every step waits for the ones before it to be running and ready.
pub fn plan(
    set_name: &str,
    spec: &SetSpec,
    pods: &[Arc<CachedPod>],
    current_revision: &str,
    update_revision: &str,
    now: jiff::Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    if spec.deleting {
        return plan;
    }
    let monotonic = !spec.parallel;
    let replicas = usize::try_from(spec.replicas).unwrap_or(0);
    let mut slots: Vec<Option<&CachedPod>> = vec![None; replicas];
    let mut condemned: Vec<(i32, &CachedPod)> = Vec::new();
    for pod in pods {
        let Some(ordinal) = ordinal_of(set_name, pod.metadata.name.as_deref().unwrap_or("")) else {
            continue;
        };
        match usize::try_from(ordinal - spec.start).ok().filter(|i| *i < replicas) {
            Some(i) => slots[i] = Some(pod),
            None => condemned.push((ordinal, pod)),
        }
    }
    condemned.sort_by_key(|(ordinal, _)| *ordinal);
    // The first unhealthy member, lowest ordinal first (in range, then condemned): the one
    // member an ordered scale-down may delete while unhealthy.
    let first_unhealthy: Option<&str> = slots
        .iter()
        .flatten()
        .chain(condemned.iter().map(|(_, p)| p))
        .find(|p| !healthy(p))
        .and_then(|p| p.metadata.name.as_deref());
    let rolling = !spec.on_delete;
    let revision_for = |index: usize| {
        if rolling && index < usize::try_from(spec.partition).unwrap_or(0) {
            current_revision.to_owned()
        } else {
            update_revision.to_owned()
        }
    };
    let delete = |pod: &CachedPod, condemned: bool| Action::Delete {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        condemned,
    };

    for (index, slot) in slots.iter().enumerate() {
        let ordinal = spec.start + i32::try_from(index).unwrap_or(i32::MAX);
        match slot {
            None => {
                plan.actions.push(Action::Create { ordinal, revision: revision_for(index) });
                if monotonic {
                    return plan;
                }
            }
            Some(pod) if matches!(phase(pod), Some("Failed" | "Succeeded")) => {
                // Deleted now, created again once the deletion is seen: same name, same claims.
                if !terminating(pod) {
                    plan.actions.push(delete(pod, false));
                }
                if monotonic {
                    return plan;
                }
            }
            Some(pod) => {
                if monotonic && (terminating(pod) || !running_and_ready(pod)) {
                    return plan;
                }
                if monotonic && !is_available(pod, spec.min_ready_seconds, now) {
                    plan.requeue_after = until_available(pod, spec.min_ready_seconds, now);
                    return plan;
                }
            }
        }
    }

    for (_, pod) in condemned.iter().rev() {
        if terminating(pod) {
            if monotonic {
                return plan;
            }
            continue;
        }
        if monotonic && !healthy(pod) && first_unhealthy != pod.metadata.name.as_deref() {
            return plan;
        }
        plan.actions.push(delete(pod, true));
        if monotonic {
            return plan;
        }
    }

    if !rolling {
        return plan;
    }
    let first = usize::try_from(spec.partition).unwrap_or(0).min(replicas);
    let mut unavailable = slots[first..].iter().flatten().filter(|p| !healthy(p)).count() as i32;
    for pod in slots[first..].iter().rev().flatten() {
        if revision_of(pod) != Some(update_revision) && !terminating(pod) {
            if healthy(pod) {
                if unavailable >= spec.max_unavailable {
                    break;
                }
                unavailable += 1;
            }
            // An unhealthy member at an old revision is already unavailable: replacing it
            // costs nothing, and waiting for it could wait for a template that never works.
            plan.actions.push(delete(pod, false));
            if spec.max_unavailable <= 1 {
                break;
            }
        } else if !healthy(pod) && spec.max_unavailable <= 1 {
            break;
        }
    }
    plan
}

/// The status the pods give, as upstream counts it.
pub fn status_of(
    set: &StatefulSet,
    spec: &SetSpec,
    pods: &[Arc<CachedPod>],
    current_revision: &str,
    update_revision: &str,
    now: jiff::Timestamp,
) -> StatefulSetStatus {
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(current_revision.to_owned()),
        update_revision: Some(update_revision.to_owned()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for pod in pods {
        if phase(pod).is_some() {
            status.replicas += 1;
        }
        if running_and_ready(pod) {
            ready += 1;
            if is_available(pod, spec.min_ready_seconds, now) {
                available += 1;
            }
        }
        if phase(pod).is_some() && !terminating(pod) {
            let revision = revision_of(pod);
            if revision == Some(current_revision) {
                current += 1;
            }
            if revision == Some(update_revision) {
                updated += 1;
            }
        }
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    // A rolling update is complete when every member is updated and ready.
    if !spec.on_delete && updated == status.replicas && ready == status.replicas {
        status.current_revision = Some(update_revision.to_owned());
        status.current_replicas = Some(updated);
    }
    status
}

/// The claims of ordinal `ordinal`: `<template>-<set>-<ordinal>` for each template.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let name = set.name_any();
    let spec = &set.spec;
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    let delete_with_set = policy.and_then(|p| p.when_deleted.as_deref()) == Some("Delete");
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let template_name = template.metadata.name.clone().unwrap_or_default();
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            let mut owner = controller_ref(set);
            owner.controller = None;
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!("{template_name}-{name}-{ordinal}")),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| vec![owner]),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod of ordinal `ordinal` made from `template` (the revision `revision`).
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_owned());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.service_name.clone().filter(|s| !s.is_empty());
    for claim in claims_for(set, ordinal) {
        let Some(claim_name) = claim.metadata.name else { continue };
        let volume_name = claim_name
            .strip_suffix(&format!("-{set_name}-{ordinal}"))
            .unwrap_or(&claim_name)
            .to_owned();
        let volume = Volume {
            name: volume_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: None,
            }),
            ..Volume::default()
        };
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        match volumes.iter_mut().find(|v| v.name == volume_name) {
            Some(v) => *v = volume,
            None => volumes.push(volume),
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The StatefulSet controller.
pub struct StatefulSetController {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    sets: Arc<Informer<StatefulSet>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: Arc<Queue>,
    recorder: Recorder,
}

impl std::fmt::Debug for StatefulSetController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulSetController").finish_non_exhaustive()
    }
}

fn set_key_of(pod: &CachedPod) -> Option<String> {
    let owner = informer::controller_of(pod)?;
    (owner.kind == "StatefulSet" && owner.api_version == "apps/v1")
        .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
}

impl StatefulSetController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        sets: Arc<Informer<StatefulSet>>,
        revisions: Arc<Informer<ControllerRevision>>,
    ) -> Arc<StatefulSetController> {
        let controller = Arc::new(StatefulSetController {
            recorder: Recorder::new(client.clone(), "statefulset-controller"),
            client,
            pods: pods.clone(),
            sets: sets.clone(),
            revisions,
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        sets.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(s) | Change::Updated(_, s) | Change::Deleted(s)) = change;
            c.queue.add(key_of(s.as_ref()));
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (old, pod) = match change {
                Change::Added(p) | Change::Deleted(p) => (None, *p),
                Change::Updated(old, p) => (Some(*old), *p),
            };
            if let Some(key) = old.and_then(|o| set_key_of(o)) {
                c.queue.add(key);
            }
            match set_key_of(pod) {
                Some(key) => c.queue.add(key),
                None if informer::controller_of(pod.as_ref()).is_none() => c.enqueue_matching(pod),
                None => {}
            }
        });
        controller
    }

    /// Queues the sets of the pod's namespace that would adopt it.
    fn enqueue_matching(&self, pod: &CachedPod) {
        let ns = pod.namespace().unwrap_or_default();
        for set in self.sets.list() {
            if set.namespace().as_deref() == Some(ns.as_str()) && self.selects(&set, pod) {
                self.queue.add(key_of(set.as_ref()));
            }
        }
    }

    fn selects(&self, set: &StatefulSet, pod: &CachedPod) -> bool {
        let spec = &set.spec;
        !crate::selectors::is_empty_selector(&spec.selector)
            && label_selector_matches(&spec.selector, pod.labels())
            && ordinal_of(&set.name_any(), pod.metadata.name.as_deref().unwrap_or("")).is_some()
    }

    /// Syncs StatefulSets until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.pods.wait_synced().await;
        self.sets.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "statefulset", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(set) = self.sets.get(key) else { return Ok(Requeue::No) };
        let namespace = set.namespace().unwrap_or_default();
        let name = set.name_any();
        let spec = SetSpec::of(&set);
        let deleting = set.metadata.deletion_timestamp.is_some();
        let pods = pod_control::claim_pods(
            &self.client,
            &self.pods,
            set.as_ref(),
            |p| self.selects(&set, p),
            !deleting,
        )
        .await?;
        let (current, update) = self.revisions(&set, &namespace).await?;
        let current_name = current.name_any();
        let update_name = update.name_any();
        let now = jiff::Timestamp::now();
        let plan = plan(&name, &spec, &pods, &current_name, &update_name, now);
        let mut failure = None;
        for action in &plan.actions {
            let done = match action {
                Action::Create { ordinal, revision } => {
                    let source = if revision == &update_name { &update } else { &current };
                    self.create(&set, *ordinal, source).await
                }
                Action::Delete { name: pod, uid, condemned } => {
                    self.delete(&set, pod, uid, *condemned).await
                }
            };
            if let Err(e) = done {
                failure = Some(e);
                break;
            }
        }
        let status = status_of(&set, &spec, &pods, &current_name, &update_name, now);
        if set.status.as_ref() != Some(&status) {
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({"status": status});
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        self.prune_history(&set, &namespace, &pods, &status).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(plan.requeue_after.map_or(Requeue::No, Requeue::After))
    }

    /// The current and update revisions, creating the update revision when the template is
    /// new (or bumping an older revision with the same template back to the newest number,
    /// as a rollback does).
    async fn revisions(
        &self,
        set: &StatefulSet,
        namespace: &str,
    ) -> Result<(ControllerRevision, ControllerRevision), Error> {
        let uid = set.uid().unwrap_or_default();
        let owned: Vec<Arc<ControllerRevision>> = self.revisions.by_index(BY_CONTROLLER, &uid);
        let refs: Vec<&ControllerRevision> = owned.iter().map(|r| r.as_ref()).collect();
        let data = history::data_of(&set.spec.template);
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), namespace);
        let newest = history::next_number(&refs) - 1;
        let update = match refs
            .iter()
            .filter(|r| history::same_data(r, &data))
            .max_by_key(|r| r.revision.unwrap_or(0))
        {
            Some(existing) if existing.revision == Some(newest) => (*existing).clone(),
            Some(existing) => {
                let patch = serde_json::json!({"revision": newest + 1});
                api.patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await?
            }
            None => self.create_revision(set, namespace, &api, data, newest + 1).await?,
        };
        let current_name = set.status.as_ref().and_then(|s| s.current_revision.as_deref());
        let current = refs
            .iter()
            .find(|r| Some(r.name_any().as_str()) == current_name)
            .map(|r| (*r).clone())
            .unwrap_or_else(|| update.clone());
        Ok((current, update))
    }

    async fn create_revision(
        &self,
        set: &StatefulSet,
        namespace: &str,
        api: &Api<ControllerRevision>,
        data: serde_json::Value,
        number: i64,
    ) -> Result<ControllerRevision, Error> {
        let labels =
            set.spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let mut collisions = set.status.as_ref().and_then(|s| s.collision_count);
        loop {
            let revision = history::new_revision(
                &set.name_any(),
                namespace,
                controller_ref(set),
                labels.clone(),
                data.clone(),
                number,
                collisions,
            );
            match api.create(&PostParams::default(), &revision).await {
                Ok(created) => return Ok(created),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = api.get(&revision.name_any()).await?;
                    if history::same_data(&existing, &data)
                        && informer::controller_of(&existing).map(|r| &r.uid) == set.uid().as_ref()
                    {
                        return Ok(existing);
                    }
                    // Another template hashed to this name: count the collision, as
                    // upstream, so the next name differs.
                    let count = collisions.unwrap_or(0) + 1;
                    collisions = Some(count);
                    let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                    let patch = serde_json::json!({"status": {"collisionCount": count}});
                    sets.patch_status(
                        &set.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn create(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        revision: &ControllerRevision,
    ) -> Result<(), Error> {
        let namespace = set.namespace().unwrap_or_default();
        let Some(template) = history::template_of(revision) else {
            return Err(Error::Invalid(format!(
                "ControllerRevision {namespace}/{} holds no pod template",
                revision.name_any()
            )));
        };
        // Claims first: a pod whose claims are missing would never start.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        for claim in claims_for(set, ordinal) {
            let claim_name = claim.name_any();
            match claims.get_opt(&claim_name).await? {
                Some(_) => {}
                None => match claims.create(&PostParams::default(), &claim).await {
                    Ok(_) => self.recorder.record(
                        object_ref(set),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!(
                            "create Claim {claim_name} Pod {}-{ordinal} in StatefulSet {} success",
                            set.name_any(),
                            set.name_any()
                        ),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        self.recorder.record(
                            object_ref(set),
                            EventType::Warning,
                            "FailedCreate",
                            format!("create Claim {claim_name} for Pod {}-{ordinal} in StatefulSet {} failed error: {e}", set.name_any(), set.name_any()),
                        );
                        return Err(e.into());
                    }
                },
            }
        }
        let pod = pod_for(set, &template, ordinal, &revision.name_any());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod_name = pod.name_any();
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {} successful", set.name_any()),
                );
                Ok(())
            }
            // The cache had not seen it yet.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Warning,
                    "FailedCreate",
                    format!(
                        "create Pod {pod_name} in StatefulSet {} failed error: {e}",
                        set.name_any()
                    ),
                );
                Err(e.into())
            }
        }
    }

    async fn delete(
        &self,
        set: &StatefulSet,
        pod: &str,
        uid: &str,
        condemned: bool,
    ) -> Result<(), Error> {
        let namespace = set.namespace().unwrap_or_default();
        let when_scaled_delete = set
            .spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        if condemned
            && when_scaled_delete
            && let Some(ordinal) = ordinal_of(&set.name_any(), pod)
        {
            // The claims go with the pod: the garbage collector deletes them after it.
            self.give_claims_to_pod(set, &namespace, ordinal, pod, uid).await?;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(pod, &params).await {
            Ok(_) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("delete Pod {pod} in StatefulSet {} successful", set.name_any()),
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Warning,
                    "FailedDelete",
                    format!("delete Pod {pod} in StatefulSet {} failed error: {e}", set.name_any()),
                );
                Err(e.into())
            }
        }
    }

    async fn give_claims_to_pod(
        &self,
        set: &StatefulSet,
        namespace: &str,
        ordinal: i32,
        pod: &str,
        uid: &str,
    ) -> Result<(), Error> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        for wanted in claims_for(set, ordinal) {
            let Some(mut claim) = claims.get_opt(&wanted.name_any()).await? else { continue };
            let refs = claim.metadata.owner_references.get_or_insert_with(Vec::new);
            if refs.iter().any(|r| r.uid == uid) {
                continue;
            }
            refs.push(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.to_owned(),
                uid: uid.to_owned(),
                controller: None,
                block_owner_deletion: None,
            });
            match claims.replace(&claim.name_any(), &PostParams::default(), &claim).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit`, never one a member runs.
    async fn prune_history(
        &self,
        set: &StatefulSet,
        namespace: &str,
        pods: &[Arc<CachedPod>],
        status: &StatefulSetStatus,
    ) -> Result<(), Error> {
        let limit = set.spec.revision_history_limit.unwrap_or(10);
        let uid = set.uid().unwrap_or_default();
        let owned = self.revisions.by_index(BY_CONTROLLER, &uid);
        let refs: Vec<&ControllerRevision> = owned.iter().map(|r| r.as_ref()).collect();
        let live = |r: &ControllerRevision| {
            let name = r.name_any();
            status.current_revision.as_deref() == Some(name.as_str())
                || status.update_revision.as_deref() == Some(name.as_str())
                || pods.iter().any(|p| revision_of(p) == Some(name.as_str()))
        };
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), namespace);
        for revision in history::to_prune(&refs, &live, limit) {
            match api.delete(&revision.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(name: &str, revision: &str, phase: &str, ready: bool) -> Arc<CachedPod> {
        let mut conditions = vec![];
        if ready {
            conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}));
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {REVISION_LABEL: revision}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": phase, "conditions": conditions}
            }))
            .expect("a pod"),
        )
    }

    fn spec(replicas: i32) -> SetSpec {
        SetSpec {
            replicas,
            start: 0,
            parallel: false,
            on_delete: false,
            partition: 0,
            max_unavailable: 1,
            min_ready_seconds: 0,
            deleting: false,
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-06-01T00:00:00Z".parse().expect("a time")
    }

    fn create(ordinal: i32, revision: &str) -> Action {
        Action::Create { ordinal, revision: revision.into() }
    }

    fn delete(name: &str, condemned: bool) -> Action {
        Action::Delete { name: name.into(), uid: format!("uid-{name}"), condemned }
    }

    #[test]
    fn ordinals_are_parsed_from_member_names_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-+1"), None);
    }

    #[test]
    fn ordered_ready_creates_one_member_at_a_time_in_order() {
        let s = spec(3);
        let p = plan("web", &s, &[], "r1", "r1", now());
        assert_eq!(p.actions, vec![create(0, "r1")]);
        // web-0 not ready yet: nothing more.
        let pods = [member("web-0", "r1", "Pending", false)];
        assert!(plan("web", &s, &pods, "r1", "r1", now()).actions.is_empty());
        let pods = [member("web-0", "r1", "Running", true)];
        assert_eq!(plan("web", &s, &pods, "r1", "r1", now()).actions, vec![create(1, "r1")]);
        // Parallel creates every missing member at once.
        let parallel = SetSpec { parallel: true, ..s };
        let p = plan("web", &parallel, &[], "r1", "r1", now());
        assert_eq!(p.actions, vec![create(0, "r1"), create(1, "r1"), create(2, "r1")]);
    }

    #[test]
    fn failed_members_are_deleted_to_be_made_again_and_scale_down_goes_from_the_top() {
        let s = spec(2);
        let pods = [member("web-0", "r1", "Failed", false), member("web-1", "r1", "Running", true)];
        assert_eq!(plan("web", &s, &pods, "r1", "r1", now()).actions, vec![delete("web-0", false)]);
        let pods = [
            member("web-0", "r1", "Running", true),
            member("web-1", "r1", "Running", true),
            member("web-2", "r1", "Running", true),
            member("web-3", "r1", "Running", true),
        ];
        assert_eq!(plan("web", &s, &pods, "r1", "r1", now()).actions, vec![delete("web-3", true)]);
        // An unhealthy member in range halts an ordered scale-down.
        let pods = [
            member("web-0", "r1", "Running", false),
            member("web-1", "r1", "Running", true),
            member("web-2", "r1", "Running", true),
        ];
        assert!(plan("web", &s, &pods, "r1", "r1", now()).actions.is_empty());
        // Scaled to 0 with every member unhealthy: ordered scale-down halts (only the lowest
        // unhealthy member could go, and it is not the highest).
        let unhealthy = [
            member("web-0", "r1", "Running", false),
            member("web-1", "r1", "Running", false),
            member("web-2", "r1", "Running", false),
        ];
        assert!(plan("web", &spec(0), &unhealthy, "r1", "r1", now()).actions.is_empty());
        let parallel = SetSpec { parallel: true, ..s };
        assert_eq!(
            plan("web", &parallel, &pods, "r1", "r1", now()).actions,
            vec![delete("web-2", true)]
        );
    }

    #[test]
    fn rolling_updates_go_from_the_top_down_to_the_partition() {
        let pods = [
            member("web-0", "r1", "Running", true),
            member("web-1", "r1", "Running", true),
            member("web-2", "r1", "Running", true),
        ];
        let s = spec(3);
        assert_eq!(plan("web", &s, &pods, "r1", "r2", now()).actions, vec![delete("web-2", false)]);
        // The updated member must be ready before the next goes.
        let mid = [
            member("web-0", "r1", "Running", true),
            member("web-1", "r1", "Running", true),
            member("web-2", "r2", "Running", false),
        ];
        assert!(plan("web", &s, &mid, "r1", "r2", now()).actions.is_empty());
        let mid = [
            member("web-0", "r1", "Running", true),
            member("web-1", "r1", "Running", true),
            member("web-2", "r2", "Running", true),
        ];
        assert_eq!(plan("web", &s, &mid, "r1", "r2", now()).actions, vec![delete("web-1", false)]);
        // A partition of 2 stops after web-2; members below it are made at the current
        // revision.
        let canary = SetSpec { partition: 2, ..s.clone() };
        assert!(plan("web", &canary, &mid, "r1", "r2", now()).actions.is_empty());
        assert_eq!(plan("web", &canary, &[], "r1", "r2", now()).actions, vec![create(0, "r1")]);
        // maxUnavailable 2 replaces two at once.
        let wide = SetSpec { max_unavailable: 2, ..s.clone() };
        assert_eq!(
            plan("web", &wide, &pods, "r1", "r2", now()).actions,
            vec![delete("web-2", false), delete("web-1", false)]
        );
        // OnDelete leaves old members alone.
        let on_delete = SetSpec { on_delete: true, ..s };
        assert!(plan("web", &on_delete, &pods, "r1", "r2", now()).actions.is_empty());
    }

    #[test]
    fn status_counts_and_completes_a_rollout() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"selector": {}, "serviceName": "web", "template": {}}
        }))
        .expect("a set");
        let s = spec(2);
        let pods = [member("web-0", "r1", "Running", true), member("web-1", "r2", "Running", true)];
        let status = status_of(&set, &s, &pods, "r1", "r2", now());
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.current_replicas,
                status.updated_replicas
            ),
            (2, Some(2), Some(1), Some(1))
        );
        assert_eq!(status.current_revision.as_deref(), Some("r1"));
        let pods = [member("web-0", "r2", "Running", true), member("web-1", "r2", "Running", true)];
        let status = status_of(&set, &s, &pods, "r1", "r2", now());
        assert_eq!(status.current_revision.as_deref(), Some("r2"));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn members_get_identity_and_their_own_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
            "spec": {
                "selector": {"matchLabels": {"app": "db"}},
                "serviceName": "db",
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}
            }
        }))
        .expect("a set");
        let template = set.spec.template.clone();
        let pod = pod_for(&set, &template, 2, "db-abc");
        assert_eq!(pod.metadata.name.as_deref(), Some("db-2"));
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.hostname.as_deref(), Some("db-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels.get(REVISION_LABEL).map(String::as_str), Some("db-abc"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        let volumes = spec.volumes.expect("volumes");
        assert_eq!(volumes[0].name, "data");
        assert_eq!(
            volumes[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()),
            Some("data-db-2")
        );
        let claims = claims_for(&set, 2);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-db-2"));
        assert_eq!(
            claims[0].metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str),
            Some("db")
        );
        // whenDeleted: Delete — the claim is owned by the set.
        assert_eq!(
            claims[0].metadata.owner_references.as_ref().map(|r| r[0].uid.as_str()),
            Some("u1")
        );
    }
}
