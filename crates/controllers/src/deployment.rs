//! The Deployment controller: one ReplicaSet per pod template (named by the
//! `pod-template-hash` of the template), rolled over with the RollingUpdate (`maxSurge`,
//! `maxUnavailable`) or Recreate strategy; revisions in the ReplicaSets'
//! `deployment.kubernetes.io/revision` annotation with the Deployment's annotations (so
//! `kubernetes.io/change-cause`) carried along, which is what `kubectl rollout history`
//! and `undo` read; old ReplicaSets pruned to `revisionHistoryLimit`; pause; the Available
//! and Progressing conditions with `progressDeadlineSeconds`, which `kubectl rollout
//! status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{
    self, BY_CONTROLLER, Change, Informer, ORPHANS_BY_NAMESPACE, key_of, split_key,
};
use crate::pod_control::controller_ref;
use crate::queue::{Queue, Requeue, run_workers};
use crate::selectors::{is_empty_selector, label_selector_matches};

/// The label (and selector term) that ties a ReplicaSet's pods to its template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision of a ReplicaSet (and of its Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// Deployment annotations not copied to its ReplicaSets.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// FNV-1a (32 bit) of the template and the collision count, written with upstream's
/// alphabet for names (no vowels, no look-alikes).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x01000193);
        }
    };
    feed(serde_json::to_string(template).unwrap_or_default().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (s.replicas, s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0))
}

/// An int-or-percent of `total`, rounded up or down.
/// Upstream's proportional scaling of several active ReplicaSets (`sizes`: name, replicas,
/// their `max-replicas` annotation): each grows (or shrinks) toward `replicas × allowed /
/// annotated`, rounded, within what is left of `delta`; the largest first, and it takes the
/// rounding leftovers. `allowed` is the new size plus surge; `observed` stands in for a
/// missing annotation.
pub(crate) fn proportional_sizes(
    sizes: &[(String, i32, Option<i32>)],
    want: i32,
    allowed: i32,
    delta: i32,
    observed: i32,
) -> Vec<(String, i32)> {
    let mut sorted = sizes.to_vec();
    sorted.sort_by_key(|(_, n, _)| std::cmp::Reverse(*n));
    let mut added = 0;
    let mut targets = Vec::new();
    for (name, n, annotated) in &sorted {
        let mut proportion = 0;
        if *n > 0 && delta != added {
            let fraction = if want == 0 {
                -n
            } else {
                let annotated = annotated.unwrap_or(observed).max(1);
                let size = f64::from(*n) * f64::from(allowed) / f64::from(annotated);
                size.round() as i32 - n
            };
            let left = delta - added;
            proportion = if delta > 0 { fraction.min(left) } else { fraction.max(left) };
        }
        added += proportion;
        targets.push((name.clone(), n + proportion));
    }
    if let Some(first) = targets.first_mut() {
        first.1 += delta - added;
    }
    targets
}

fn scaled(value: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let text;
    let v = match value {
        Some(IntOrString::Int(i)) => return (*i).max(0),
        Some(IntOrString::String(s)) => s.as_str(),
        None => {
            text = default.to_owned();
            text.as_str()
        }
    };
    let Some(pct) = v.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
        return v.parse().unwrap_or(0);
    };
    let product = pct * i64::from(total);
    let r = if round_up { (product + 99) / 100 } else { product / 100 };
    i32::try_from(r).unwrap_or(0)
}

/// (maxSurge, maxUnavailable) resolved against `replicas` (both zero → one unavailable).
fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let want = d.spec.replicas.unwrap_or(1);
    let rolling = d.spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    if d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), want, true, "25%");
    let mut unavailable =
        scaled(rolling.and_then(|r| r.max_unavailable.as_ref()), want, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(want))
}

/// The Deployment controller.
pub struct DeploymentController {
    client: kube::Client,
    deployments: Arc<Informer<Deployment>>,
    replica_sets: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<CachedPod>>,
    queue: Arc<Queue>,
    recorder: Recorder,
}

impl std::fmt::Debug for DeploymentController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentController").finish_non_exhaustive()
    }
}

fn deployment_key_of(rs: &ReplicaSet) -> Option<String> {
    let owner = informer::controller_of(rs)?;
    (owner.kind == "Deployment")
        .then(|| format!("{}/{}", rs.namespace().unwrap_or_default(), owner.name))
}

impl DeploymentController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        deployments: Arc<Informer<Deployment>>,
        replica_sets: Arc<Informer<ReplicaSet>>,
        pods: Arc<Informer<CachedPod>>,
    ) -> Arc<DeploymentController> {
        let controller = Arc::new(DeploymentController {
            recorder: Recorder::new(client.clone(), "deployment-controller"),
            client,
            deployments: deployments.clone(),
            replica_sets: replica_sets.clone(),
            pods: pods.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        deployments.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(d) | Change::Updated(_, d) | Change::Deleted(d)) = change;
            c.queue.add(key_of(d.as_ref()));
        });
        let this = Arc::downgrade(&controller);
        replica_sets.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(rs) | Change::Updated(_, rs) | Change::Deleted(rs)) = change;
            match deployment_key_of(rs) {
                Some(key) => c.queue.add(key),
                None if informer::controller_of(rs.as_ref()).is_none() => {
                    let ns = rs.namespace().unwrap_or_default();
                    for d in c.deployments.list() {
                        if d.namespace().as_deref() == Some(ns.as_str())
                            && !is_empty_selector(&d.spec.selector)
                            && label_selector_matches(&d.spec.selector, rs.labels())
                        {
                            c.queue.add(key_of(d.as_ref()));
                        }
                    }
                }
                None => {}
            }
        });
        // Recreate waits for the old pods to be gone.
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            if let Change::Deleted(pod) = change
                && let Some(owner) = informer::controller_of(pod.as_ref())
                && owner.kind == "ReplicaSet"
                && let Some(rs) = c.replica_sets.get(&format!(
                    "{}/{}",
                    pod.namespace().unwrap_or_default(),
                    owner.name
                ))
                && let Some(key) = deployment_key_of(&rs)
            {
                c.queue.add(key);
            }
        });
        controller
    }

    /// Syncs Deployments until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.deployments.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "deployment", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    fn rs_api(&self, namespace: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(d) = self.deployments.get(key) else { return Ok(Requeue::No) };
        let d = (*d).clone();
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default().to_owned();
        if is_empty_selector(&d.spec.selector) {
            self.recorder.record(
                object_ref(&d),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(Requeue::No);
        }
        let mut all = self.claim_replica_sets(&d, &namespace).await?;
        if d.metadata.deletion_timestamp.is_some() {
            return self.sync_status(&d, &all, None, None).await;
        }
        let paused = d.spec.paused.unwrap_or(false);
        let recreate =
            d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        // The new ReplicaSet exists from the start of a rolling update; Recreate creates it
        // once the old pods are gone. A paused Deployment creates none.
        let (new_rs, created) = self.new_replica_set(&d, &mut all, !paused && !recreate).await?;
        let progress = created.then(|| {
            (
                "NewReplicaSetCreated",
                new_rs
                    .as_ref()
                    .map(|r| format!("Created new replica set \"{}\"", r.name_any()))
                    .unwrap_or_default(),
            )
        });
        if paused || self.is_scaling_event(&d, &all) {
            self.scale(&d, &all, new_rs.as_ref()).await?;
            if !paused {
                self.cleanup(&d, &all, new_rs.as_ref()).await?;
            }
            return self.sync_status(&d, &all, new_rs.as_ref(), progress).await;
        }
        let changed = if recreate {
            self.rollout_recreate(&d, &mut all, new_rs.clone()).await?
        } else {
            self.rollout_rolling(&d, &all, new_rs.as_ref()).await?
        };
        if !changed {
            let new_rs = self.new_of(&d, &all);
            if complete(&d, &all, new_rs.as_ref()) {
                self.cleanup(&d, &all, new_rs.as_ref()).await?;
            }
        }
        let new_rs = self.new_of(&d, &all);
        self.sync_status(&d, &all, new_rs.as_ref(), progress).await
    }

    fn new_of(&self, d: &Deployment, all: &[ReplicaSet]) -> Option<ReplicaSet> {
        let mut matching: Vec<&ReplicaSet> = all
            .iter()
            .filter(|rs| {
                rs.spec.template.as_ref().map(without_hash).as_ref()
                    == Some(&without_hash(&d.spec.template))
            })
            .collect();
        matching.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        matching.first().map(|rs| (*rs).clone())
    }

    /// The ReplicaSets this Deployment controls, adopting and releasing by selector.
    async fn claim_replica_sets(
        &self,
        d: &Deployment,
        namespace: &str,
    ) -> Result<Vec<ReplicaSet>, Error> {
        let uid = d.uid().unwrap_or_default();
        let api = self.rs_api(namespace);
        let mut out = Vec::new();
        for rs in self.replica_sets.by_index(BY_CONTROLLER, &uid) {
            if label_selector_matches(&d.spec.selector, rs.labels()) {
                out.push((*rs).clone());
            } else if d.metadata.deletion_timestamp.is_none() {
                let remaining: Vec<_> =
                    rs.owner_references().iter().filter(|r| r.uid != uid).cloned().collect();
                let patch = serde_json::json!({"metadata": {"ownerReferences": remaining, "resourceVersion": rs.resource_version()}});
                match api
                    .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(out);
        }
        let mut may_adopt = None;
        for rs in self.replica_sets.by_index(ORPHANS_BY_NAMESPACE, namespace) {
            if rs.metadata.deletion_timestamp.is_some()
                || !label_selector_matches(&d.spec.selector, rs.labels())
            {
                continue;
            }
            if !*may_adopt.get_or_insert(crate::pod_control::can_adopt(&self.client, d).await?) {
                break;
            }
            let mut refs = rs.owner_references().to_vec();
            refs.push(controller_ref(d));
            let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version()}});
            match api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(adopted) => out.push(adopted),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Finds (or creates) the ReplicaSet of the current template and brings its revision
    /// and annotations up to date. Returns it and whether it was created now.
    async fn new_replica_set(
        &self,
        d: &Deployment,
        all: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, bool), Error> {
        let namespace = d.namespace().unwrap_or_default();
        let api = self.rs_api(&namespace);
        let existing = self.new_of(d, all);
        let max_old = all
            .iter()
            .filter(|rs| existing.as_ref().is_none_or(|e| e.uid() != rs.uid()))
            .map(revision)
            .max()
            .unwrap_or(0);
        let (surge, _) = surge_and_unavailable(d);
        let want = d.spec.replicas.unwrap_or(1);
        let mut annotations: BTreeMap<String, String> = d
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
        annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        if let Some(rs) = existing {
            let mut wanted = annotations.clone();
            // The size annotations of an existing ReplicaSet record the size it was last
            // scaled for; only scaling sets them (proportional scaling reads the old value),
            // as upstream's new-ReplicaSet annotations skip them.
            wanted.remove(DESIRED_REPLICAS);
            wanted.remove(MAX_REPLICAS);
            let rev = revision(&rs);
            let new_rev = if rev <= max_old { max_old + 1 } else { rev };
            wanted.insert(REVISION.into(), new_rev.to_string());
            if rev < new_rev && rev > 0 {
                // A rollback: remember the revisions this template had.
                let history = rs
                    .annotations()
                    .get(REVISION_HISTORY)
                    .map(|h| format!("{h},{rev}"))
                    .unwrap_or_else(|| rev.to_string());
                wanted.insert(REVISION_HISTORY.into(), history);
            }
            let stale = wanted.iter().any(|(k, v)| rs.annotations().get(k) != Some(v));
            let rs = if stale {
                let patch = serde_json::json!({"metadata": {"annotations": wanted}});
                let updated = api
                    .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                replace_in(all, updated.clone());
                updated
            } else {
                rs
            };
            self.set_deployment_revision(d, new_rev).await?;
            return Ok((Some(rs), false));
        }
        if !create {
            return Ok((None, false));
        }
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&d.spec.template, collision);
        let mut template = d.spec.template.clone();
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut labels =
            d.spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let new_rev = max_old + 1;
        annotations.insert(REVISION.into(), new_rev.to_string());
        // The initial size: what the surge allows right now (all of it for a first rollout).
        let current: i32 = all.iter().map(replicas).sum();
        let initial = if all.is_empty() { want } else { (want + surge - current).clamp(0, want) };
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", d.name_any())),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(d)]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(initial),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                self.recorder.record(
                    object_ref(d),
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {} from 0 to {initial}", created.name_any()),
                );
                all.push(created.clone());
                self.set_deployment_revision(d, new_rev).await?;
                Ok((Some(created), true))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A ReplicaSet of that name exists: ours with this template (a stale cache),
                // or a hash collision, which a new collisionCount resolves.
                let existing = api.get(&format!("{}-{hash}", d.name_any())).await?;
                let ours = informer::controller_of(&existing)
                    .is_some_and(|r| Some(&r.uid) == d.uid().as_ref());
                if ours
                    && existing.spec.template.as_ref().map(without_hash)
                        == Some(without_hash(&d.spec.template))
                {
                    all.push(existing.clone());
                    return Ok((Some(existing), false));
                }
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
                let patch =
                    serde_json::json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Err(Error::Invalid(format!(
                    "hash collision for ReplicaSet {}-{hash}; retrying",
                    d.name_any()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn set_deployment_revision(&self, d: &Deployment, rev: i64) -> Result<(), Error> {
        if d.annotations().get(REVISION).map(String::as_str) == Some(rev.to_string().as_str()) {
            return Ok(());
        }
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Sets a ReplicaSet's size (and the annotations that record the Deployment's size).
    async fn scale_rs(
        &self,
        d: &Deployment,
        all: &mut [ReplicaSet],
        name: &str,
        to: i32,
    ) -> Result<bool, Error> {
        let Some(rs) = all.iter_mut().find(|r| r.name_any() == name) else { return Ok(false) };
        let from = replicas(rs);
        let (surge, _) = surge_and_unavailable(d);
        let want = d.spec.replicas.unwrap_or(1);
        let desired = want.to_string();
        let max = (want + surge).to_string();
        if from == to
            && rs.annotations().get(DESIRED_REPLICAS) == Some(&desired)
            && rs.annotations().get(MAX_REPLICAS) == Some(&max)
        {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
            "spec": {"replicas": to},
        });
        let api = self.rs_api(&d.namespace().unwrap_or_default());
        let updated = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        *rs = updated;
        if from != to {
            let verb = if to > from { "up" } else { "down" };
            self.recorder.record(
                object_ref(d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {verb} replica set {name} from {from} to {to}"),
            );
        }
        Ok(from != to)
    }

    /// Whether the Deployment's size changed since its ReplicaSets were sized (their
    /// desired-replicas annotation), which is handled by scaling, not by rolling.
    fn is_scaling_event(&self, d: &Deployment, all: &[ReplicaSet]) -> bool {
        let want = d.spec.replicas.unwrap_or(1).to_string();
        all.iter()
            .filter(|rs| replicas(rs) > 0)
            .any(|rs| rs.annotations().get(DESIRED_REPLICAS).is_some_and(|v| *v != want))
    }

    /// Resizes for a changed `replicas` (or while paused): one active ReplicaSet takes the
    /// whole size; several share the change in proportion to their sizes, as upstream.
    async fn scale(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<(), Error> {
        let mut all = all.to_vec();
        let want = d.spec.replicas.unwrap_or(1);
        let active: Vec<String> =
            all.iter().filter(|rs| replicas(rs) > 0).map(|rs| rs.name_any()).collect();
        if active.is_empty() {
            if let Some(new_rs) = new_rs {
                self.scale_rs(d, &mut all, &new_rs.name_any(), want).await?;
            }
            return Ok(());
        }
        if active.len() == 1 || new_rs.is_some_and(|n| complete_rs(d, n)) {
            let target = new_rs
                .filter(|n| replicas(n) > 0)
                .map(|n| n.name_any())
                .unwrap_or_else(|| active[0].clone());
            for name in &active {
                let to = if *name == target { want } else { 0 };
                self.scale_rs(d, &mut all, name, to).await?;
            }
            if !active.contains(&target) {
                self.scale_rs(d, &mut all, &target, want).await?;
            }
            return Ok(());
        }
        let (surge, _) = surge_and_unavailable(d);
        let allowed = want + surge;
        let current: i32 = all.iter().map(replicas).sum();
        let delta = allowed - current;
        if delta == 0 {
            return Ok(());
        }
        let sizes: Vec<(String, i32, Option<i32>)> = all
            .iter()
            .filter(|rs| replicas(rs) > 0)
            .map(|rs| {
                let annotated =
                    rs.annotations().get(MAX_REPLICAS).and_then(|v| v.parse::<i32>().ok());
                (rs.name_any(), replicas(rs), annotated)
            })
            .collect();
        let observed = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(current);
        let targets = proportional_sizes(&sizes, want, allowed, delta, observed);
        for (name, to) in targets {
            self.scale_rs(d, &mut all, &name, to.max(0)).await?;
        }
        Ok(())
    }

    async fn rollout_rolling(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<bool, Error> {
        let mut all = all.to_vec();
        let Some(new_rs) = new_rs else { return Ok(false) };
        let new_name = new_rs.name_any();
        let want = d.spec.replicas.unwrap_or(1);
        let (surge, max_unavailable) = surge_and_unavailable(d);
        // Scale the new ReplicaSet up as far as the surge allows.
        let new_size = replicas(new_rs);
        let target = if new_size > want {
            want
        } else if new_size < want {
            let total: i32 = all.iter().map(replicas).sum();
            let room = (want + surge - total).max(0);
            new_size + room.min(want - new_size)
        } else {
            want
        };
        if target != new_size {
            return self.scale_rs(d, &mut all, &new_name, target).await;
        }
        // Scale old ReplicaSets down as far as availability allows.
        let old: Vec<ReplicaSet> = all
            .iter()
            .filter(|rs| rs.name_any() != new_name && replicas(rs) > 0)
            .cloned()
            .collect();
        if old.is_empty() {
            return Ok(false);
        }
        let total: i32 = all.iter().map(replicas).sum();
        let min_available = want - max_unavailable;
        let (_, _, new_available) = status_of(new_rs);
        let new_unavailable = (replicas(new_rs) - new_available).max(0);
        let mut budget = total - min_available - new_unavailable;
        if budget <= 0 {
            return Ok(false);
        }
        let mut old = old;
        old.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let mut changed = false;
        // First the old pods that are not available anyway.
        for rs in &old {
            if budget <= 0 {
                break;
            }
            let (_, _, available) = status_of(rs);
            let unhealthy = (replicas(rs) - available).max(0).min(budget);
            if unhealthy > 0 {
                changed |=
                    self.scale_rs(d, &mut all, &rs.name_any(), replicas(rs) - unhealthy).await?;
                budget -= unhealthy;
            }
        }
        if changed {
            return Ok(true);
        }
        // Then available ones, keeping minAvailable.
        let available_total: i32 = all.iter().map(|rs| status_of(rs).2).sum();
        let mut budget = available_total - min_available;
        for rs in &old {
            if budget <= 0 {
                break;
            }
            let size = all.iter().find(|r| r.uid() == rs.uid()).map(replicas).unwrap_or(0);
            let down = size.min(budget);
            if down > 0 {
                changed |= self.scale_rs(d, &mut all, &rs.name_any(), size - down).await?;
                budget -= down;
            }
        }
        Ok(changed)
    }

    async fn rollout_recreate(
        &self,
        d: &Deployment,
        all: &mut Vec<ReplicaSet>,
        new_rs: Option<ReplicaSet>,
    ) -> Result<bool, Error> {
        let new_uid = new_rs.as_ref().and_then(|r| r.uid());
        let old: Vec<String> = all
            .iter()
            .filter(|rs| rs.uid() != new_uid && replicas(rs) > 0)
            .map(|rs| rs.name_any())
            .collect();
        let mut changed = false;
        for name in old {
            changed |= self.scale_rs(d, all, &name, 0).await?;
        }
        if changed {
            return Ok(true);
        }
        // Wait until no old pod runs.
        let old_uids: Vec<String> =
            all.iter().filter(|rs| rs.uid() != new_uid).filter_map(|rs| rs.uid()).collect();
        let running = old_uids.iter().any(|uid| {
            self.pods.by_index(BY_CONTROLLER, uid).iter().any(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
        });
        if running {
            return Ok(false);
        }
        let new_rs = match new_rs {
            Some(rs) => rs,
            // Created at full size: surge is zero and no old pod is left.
            None => return Ok(self.new_replica_set(d, all, true).await?.0.is_some()),
        };
        let want = d.spec.replicas.unwrap_or(1);
        self.scale_rs(d, all, &new_rs.name_any(), want).await
    }

    /// Deletes the oldest unused ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<(), Error> {
        let limit = usize::try_from(d.spec.revision_history_limit.unwrap_or(10)).unwrap_or(10);
        let new_uid = new_rs.and_then(|r| r.uid());
        let mut unused: Vec<&ReplicaSet> = all
            .iter()
            .filter(|rs| {
                rs.uid() != new_uid
                    && replicas(rs) == 0
                    && status_of(rs).0 == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if unused.len() <= limit {
            return Ok(());
        }
        unused.sort_by_key(|rs| revision(rs));
        let api = self.rs_api(&d.namespace().unwrap_or_default());
        for rs in unused.iter().take(unused.len() - limit) {
            match api.delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn sync_status(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
        event: Option<(&str, String)>,
    ) -> Result<Requeue, Error> {
        let want = d.spec.replicas.unwrap_or(1);
        let (_, max_unavailable) = surge_and_unavailable(d);
        let total: i32 = all.iter().map(|rs| status_of(rs).0).sum();
        let ready: i32 = all.iter().map(|rs| status_of(rs).1).sum();
        let available: i32 = all.iter().map(|rs| status_of(rs).2).sum();
        let updated = new_rs.map(|rs| status_of(rs).0).unwrap_or(0);
        let old_status = d.status.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let mut conditions = old_status.conditions.clone().unwrap_or_default();
        let availability = if available >= want - max_unavailable {
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut conditions,
            "Available",
            availability.0,
            availability.1,
            availability.2,
            &now,
        );
        let mut requeue = Requeue::No;
        if let Some(deadline) = d.spec.progress_deadline_seconds {
            let rs_name = new_rs.map(|r| r.name_any()).unwrap_or_default();
            let current =
                conditions.iter().find(|c| c.type_.as_deref() == Some("Progressing")).cloned();
            let current_reason =
                current.as_ref().and_then(|c| c.reason.clone()).unwrap_or_default();
            let paused = d.spec.paused.unwrap_or(false);
            let old_updated = old_status.updated_replicas.unwrap_or(0);
            let progressed = updated > old_updated
                || (total - updated) < (old_status.replicas.unwrap_or(0) - old_updated)
                || ready > old_status.ready_replicas.unwrap_or(0)
                || available > old_status.available_replicas.unwrap_or(0);
            if paused {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    &now,
                );
            } else if current_reason == "DeploymentPaused" {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                    &now,
                );
                requeue = Requeue::After(Duration::from_secs(1));
            } else if new_rs.is_some() && complete(d, all, new_rs) {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                    &now,
                );
            } else if let Some((reason, message)) = &event {
                set_condition(&mut conditions, "Progressing", "True", reason, message, &now);
                requeue =
                    Requeue::After(Duration::from_secs(u64::try_from(deadline).unwrap_or(600)));
            } else if progressed || current.is_none() || current_reason == "NewReplicaSetAvailable"
            {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("ReplicaSet \"{rs_name}\" is progressing."),
                    &now,
                );
                requeue =
                    Requeue::After(Duration::from_secs(u64::try_from(deadline).unwrap_or(600)));
            } else if current_reason != "ProgressDeadlineExceeded" {
                let since = current
                    .as_ref()
                    .and_then(|c| c.last_update_time.as_ref())
                    .map(|t| t.0)
                    .unwrap_or(now.0);
                let due = since + jiff::SignedDuration::from_secs(i64::from(deadline));
                if due <= now.0 {
                    set_condition(
                        &mut conditions,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                        &now,
                    );
                } else {
                    let left = due.duration_since(now.0).unsigned_abs();
                    requeue = Requeue::After(left + Duration::from_millis(100));
                }
            }
        }
        let status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(total),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            unavailable_replicas: Some((want - available).max(0)),
            conditions: Some(conditions),
            collision_count: old_status.collision_count,
            terminating_replicas: None,
        };
        if status != old_status {
            let api: Api<Deployment> =
                Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
            let patch = serde_json::json!({"status": status});
            match api
                .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue)
    }
}

fn replace_in(all: &mut [ReplicaSet], updated: ReplicaSet) {
    if let Some(slot) = all.iter_mut().find(|r| r.uid() == updated.uid()) {
        *slot = updated;
    }
}

fn complete_rs(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    let (n, _, available) = status_of(rs);
    replicas(rs) == want && n == want && available == want
}

/// Whether the rollout is done: the new ReplicaSet has every replica available and no
/// old pod remains.
fn complete(d: &Deployment, all: &[ReplicaSet], new_rs: Option<&ReplicaSet>) -> bool {
    let Some(new_rs) = new_rs else { return false };
    let want = d.spec.replicas.unwrap_or(1);
    let total: i32 = all.iter().map(|rs| status_of(rs).0).sum();
    complete_rs(d, new_rs) && total == want
}

/// Sets a condition; the transition time moves only when the status does, the update time
/// whenever reason or message change (as upstream).
fn set_condition(
    conditions: &mut Vec<DeploymentCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_.as_deref() == Some(kind)) {
        if c.status.as_deref() == Some(status)
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
        {
            if kind == "Progressing" && reason == "ReplicaSetUpdated" {
                c.last_update_time = Some(now.clone());
            }
            return;
        }
        if c.status.as_deref() != Some(status) {
            c.last_transition_time = Some(now.clone());
        }
        c.status = Some(status.into());
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_update_time = Some(now.clone());
        return;
    }
    conditions.push(DeploymentCondition {
        type_: Some(kind.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_mid_rollout_is_proportional_as_upstream() {
        // The conformance spec's numbers: 10 replicas, surge 3, a stuck rollout at 8 + 5,
        // then scaled to 30: upstream makes it 20 + 13 (floor-and-leftover made it 21 + 12).
        let sizes = vec![("old".to_owned(), 8, Some(13)), ("new".to_owned(), 5, Some(13))];
        let up = proportional_sizes(&sizes, 30, 33, 20, 13);
        assert_eq!(up, [("old".to_owned(), 20), ("new".to_owned(), 13)]);
        // And back down to 10.
        let sizes = vec![("old".to_owned(), 20, Some(33)), ("new".to_owned(), 13, Some(33))];
        let down = proportional_sizes(&sizes, 10, 13, -20, 33);
        assert_eq!(down, [("old".to_owned(), 8), ("new".to_owned(), 5)]);
        // To zero: everything goes.
        let zero = proportional_sizes(&sizes, 0, 0, -33, 33);
        assert_eq!(zero, [("old".to_owned(), 0), ("new".to_owned(), 0)]);
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10, true, ""), 3);
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10, false, ""), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, false, ""), 2);
        assert_eq!(scaled(None, 4, true, "25%"), 1);
    }

    #[test]
    fn template_hashes_are_stable_and_change_with_the_template_or_collisions() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(a, template_hash(&t, Some(1)));
        t.metadata = Some(ObjectMeta {
            labels: Some(BTreeMap::from([("a".into(), "b".into())])),
            ..ObjectMeta::default()
        });
        assert_ne!(a, template_hash(&t, None));
    }
}
