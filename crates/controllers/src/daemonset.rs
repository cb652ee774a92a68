//! The DaemonSet controller: one pod on every node the template may run on (its node
//! selector, required node affinity and tolerations against the node's taints, with the
//! tolerations upstream adds to every daemon pod), pinned to that node through node affinity
//! on `metadata.name` so the scheduler binds it; failed pods are replaced, pods of nodes no
//! longer eligible are deleted, and template changes roll out node by node with
//! `maxUnavailable` and `maxSurge` (or wait for deletions with `OnDelete`). The template's
//! history is kept in ControllerRevisions (`history.rs`), the pods carry its hash.
//!
//! [`plan`] decides from the nodes and the set's pods; the sync reads, plans and writes,
//! under the ReplicaSet controller's expectations (daemon pods have generated names, so a
//! lagging cache could otherwise create a node's pod twice).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::history;
use crate::informer::{self, BY_CONTROLLER, Change, Informer, key_of};
use crate::pod_control;
use crate::pod_control::{BATCH_WINDOW, Expectations, controller_ref};
use crate::queue::{Queue, Requeue, run_workers};
use crate::replicaset::{is_available, is_ready};
use crate::selectors::{label_selector_matches, node_selector_term_matches, untolerated};

/// At most this many pods are created in one sync (upstream's burstReplicas is 250).
const BURST: usize = 500;

/// The pod label holding the template hash a daemon pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// The deprecated pod label holding the set's generation at the pod's creation.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// The tolerations upstream gives every daemon pod: it stays through a node's not-ready,
/// unreachable, pressure and cordoned states (and network-unavailable with hostNetwork).
pub fn daemon_tolerations(template: &PodTemplateSpec) -> Vec<Toleration> {
    let spec = template.spec.as_ref();
    let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in wanted {
        tolerations
            .retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
        tolerations.push(Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        });
    }
    tolerations
}

/// Whether a daemon pod should run on `node` (first), and whether one already there may go
/// on running (second: a `NoSchedule` taint it does not tolerate keeps new pods off, but
/// does not evict).
pub fn eligible(
    template: &PodTemplateSpec,
    tolerations: &[Toleration],
    node: &Node,
) -> (bool, bool) {
    static NO_LABELS: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    let name = node.metadata.name.as_deref().unwrap_or("");
    // Borrowed: this runs for every node on every sync.
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let spec = template.spec.as_ref();
    if let Some(wanted) = spec.and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
        && wanted != name
    {
        return (false, false);
    }
    let selected = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affine = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .is_none_or(|required| {
            required.node_selector_terms.iter().any(|t| node_selector_term_matches(t, name, labels))
        });
    if !selected || !affine {
        return (false, false);
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let keep = untolerated(taints, tolerations, &["NoExecute"]).is_none();
    let run = keep && untolerated(taints, tolerations, &["NoSchedule"]).is_none();
    (run, keep)
}

/// Whether a DaemonSet changed in nothing but its status (and bookkeeping): the controller's
/// own status write, which no decision depends on.
fn status_only(old: &DaemonSet, new: &DaemonSet) -> bool {
    let (o, n) = (&old.metadata, &new.metadata);
    old.spec == new.spec
        && o.generation == n.generation
        && o.deletion_timestamp == n.deletion_timestamp
        && o.labels == n.labels
        && o.annotations == n.annotations
        && o.owner_references == n.owner_references
        && o.finalizers == n.finalizers
}

/// The node a daemon pod is for: where it is bound, else the node its affinity names.
pub fn node_of(pod: &CachedPod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().map(String::as_str))
}

/// What the plan reads of a DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// `updateStrategy.type: OnDelete`.
    pub on_delete: bool,
    /// `maxUnavailable`, resolved against the nodes that should run a pod.
    pub max_unavailable: i32,
    /// `maxSurge`, resolved the same way.
    pub max_surge: i32,
    /// `minReadySeconds`.
    pub min_ready_seconds: i32,
}

fn scaled(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            // Rounded up, as upstream scales both of a DaemonSet's budgets.
            i32::try_from((percent * i64::from(total) + 99) / 100).unwrap_or(i32::MAX)
        }
        None => default,
    }
}

impl SetSpec {
    /// The plan's view of `set` with `desired` nodes to run on.
    pub fn of(set: &DaemonSet, desired: i32) -> SetSpec {
        let strategy = set.spec.update_strategy.as_ref();
        let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
        let max_surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), desired, 0).max(0);
        let mut max_unavailable =
            scaled(rolling.and_then(|r| r.max_unavailable.as_ref()), desired, 1).max(0);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        SetSpec {
            on_delete: strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete"),
            max_unavailable,
            max_surge,
            min_ready_seconds: set.spec.min_ready_seconds.unwrap_or(0),
        }
    }
}

/// One node as the plan sees it.
#[derive(Debug)]
pub struct NodeView<'a> {
    /// The node's name.
    pub name: &'a str,
    /// A daemon pod should run there.
    pub run: bool,
    /// A daemon pod already there may go on running.
    pub keep: bool,
    /// The set's pods on it (bound or pinned to it), not yet deleted.
    pub pods: Vec<&'a CachedPod>,
}

/// What the controller does this sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete: (name, UID).
    pub delete: Vec<(String, String)>,
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn hash_of_pod(pod: &CachedPod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(HASH_LABEL).map(String::as_str)
}

fn name_uid(pod: &CachedPod) -> (String, String) {
    (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.uid.clone().unwrap_or_default())
}

/// Upstream's `manage` then `rollingUpdate`: a pod where one should run (failed ones are
/// deleted, to be made again), none where none may run, one per node; then old-hash pods
/// replaced within the unavailability and surge budgets.
pub fn plan(spec: &SetSpec, hash: &str, nodes: &[NodeView<'_>], now: jiff::Timestamp) -> Plan {
    let mut plan = Plan::default();
    let available = |p: &CachedPod| is_available(p, spec.min_ready_seconds, now);
    let is_new = |p: &CachedPod| hash_of_pod(p) == Some(hash);
    // Nodes whose pods are settled enough for the rolling update to look at.
    let mut settled: Vec<(&str, Option<&CachedPod>, Option<&CachedPod>)> = Vec::new();
    // Nodes that should run a pod and have none that lives (its old pod still terminating,
    // or its replacement not made yet): unavailable too, or a rolling update would take the
    // next node's pod while this one is still without.
    let mut without = 0;
    for node in nodes {
        let (failed, live): (Vec<&CachedPod>, Vec<&CachedPod>) = node
            .pods
            .iter()
            .copied()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .partition(|p| phase(p) == Some("Failed"));
        let terminating = node.pods.iter().any(|p| p.metadata.deletion_timestamp.is_some());
        if !node.keep || (!node.run && live.is_empty()) {
            plan.delete.extend(
                node.pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| name_uid(p)),
            );
            continue;
        }
        plan.delete.extend(failed.iter().map(|p| name_uid(p)));
        if live.is_empty() {
            // A failed pod is replaced once its deletion is through; a node that should run
            // a pod and has none gets one.
            if node.run && failed.is_empty() && !terminating {
                plan.create.push(node.name.to_owned());
            }
            if node.run {
                without += 1;
            }
            continue;
        }
        // One pod per node: the oldest new one and the oldest old one may stay (both only
        // while a surge replaces the old); extras go.
        let mut new: Vec<&CachedPod> = live.iter().copied().filter(|p| is_new(p)).collect();
        let mut old: Vec<&CachedPod> = live.iter().copied().filter(|p| !is_new(p)).collect();
        let created = |p: &&CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        new.sort_by_key(created);
        old.sort_by_key(created);
        plan.delete.extend(new.iter().skip(1).map(|p| name_uid(p)));
        plan.delete.extend(old.iter().skip(1).map(|p| name_uid(p)));
        let (new, old) = (new.first().copied(), old.first().copied());
        if let (Some(n), Some(o)) = (new, old)
            && (spec.max_surge == 0 || available(n))
        {
            // The replacement is up: the old pod goes.
            plan.delete.push(name_uid(o));
            settled.push((node.name, Some(n), None));
            continue;
        }
        settled.push((node.name, new, old));
    }
    if spec.on_delete {
        return plan;
    }
    if spec.max_surge == 0 {
        // Replace old pods in place: unavailable ones at once, available ones while fewer
        // than maxUnavailable nodes are without an available pod.
        let mut unavailable = without
            + settled.iter().filter(|(_, n, o)| !n.or(*o).is_some_and(available)).count() as i32;
        for (_, new, old) in &settled {
            let (None, Some(old)) = (new, old) else { continue };
            if !available(old) {
                plan.delete.push(name_uid(old));
            } else if unavailable < spec.max_unavailable {
                plan.delete.push(name_uid(old));
                unavailable += 1;
            }
        }
    } else {
        // Surge: a new pod beside the old one, at most maxSurge nodes at a time (at once
        // where the old one is not available anyway).
        let mut surging =
            settled.iter().filter(|(_, n, o)| n.is_some() && o.is_some()).count() as i32;
        for (node, new, old) in &settled {
            let (None, Some(old)) = (new, old) else { continue };
            if !available(old) {
                plan.create.push((*node).to_owned());
            } else if surging < spec.max_surge {
                plan.create.push((*node).to_owned());
                surging += 1;
            }
        }
    }
    plan
}

/// The status the nodes and pods give.
pub fn status_of(
    set: &DaemonSet,
    spec: &SetSpec,
    hash: &str,
    nodes: &[NodeView<'_>],
    now: jiff::Timestamp,
) -> DaemonSetStatus {
    let mut status = DaemonSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        ..DaemonSetStatus::default()
    };
    let (mut available, mut updated) = (0, 0);
    for node in nodes {
        let live: Vec<&CachedPod> =
            node.pods.iter().copied().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        if node.run {
            status.desired_number_scheduled += 1;
            if !live.is_empty() {
                status.current_number_scheduled += 1;
            }
            // The pod that counts is the newest: during a surge, the replacement.
            let pod = live.iter().find(|p| hash_of_pod(p) == Some(hash)).or_else(|| live.first());
            if let Some(pod) = pod {
                if is_ready(pod) {
                    status.number_ready += 1;
                    if is_available(pod, spec.min_ready_seconds, now) {
                        available += 1;
                    }
                }
                if hash_of_pod(pod) == Some(hash) {
                    updated += 1;
                }
            }
        } else if !live.is_empty() {
            status.number_misscheduled += 1;
        }
    }
    status.number_available = Some(available);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.updated_number_scheduled = Some(updated);
    status
}

/// A daemon pod for `node`.
pub fn pod_for(set: &DaemonSet, template: &PodTemplateSpec, hash: &str, node: &str) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.to_owned());
    if let Some(generation) = set.metadata.generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
    }
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(template));
    // Pinned through affinity on the node's name (upstream's way since 1.12): the scheduler
    // still binds, so resources and ports are checked and preemption applies.
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_owned()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution =
        Some(NodeSelector { node_selector_terms: vec![term] });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
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

/// The DaemonSet controller.
pub struct DaemonSetController {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    nodes: Arc<Informer<Node>>,
    sets: Arc<Informer<DaemonSet>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: Arc<Queue>,
    expectations: Expectations,
    recorder: Recorder,
}

impl std::fmt::Debug for DaemonSetController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonSetController").finish_non_exhaustive()
    }
}

fn set_key_of(pod: &CachedPod) -> Option<String> {
    let owner = informer::controller_of(pod)?;
    (owner.kind == "DaemonSet" && owner.api_version == "apps/v1")
        .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
}

/// Whether a node's change may change where daemon pods run.
fn placement_changed(old: &Node, new: &Node) -> bool {
    old.metadata.labels != new.metadata.labels || old.spec != new.spec
}

impl DaemonSetController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        nodes: Arc<Informer<Node>>,
        sets: Arc<Informer<DaemonSet>>,
        revisions: Arc<Informer<ControllerRevision>>,
    ) -> Arc<DaemonSetController> {
        let controller = Arc::new(DaemonSetController {
            recorder: Recorder::new(client.clone(), "daemonset-controller"),
            client,
            pods: pods.clone(),
            nodes: nodes.clone(),
            sets: sets.clone(),
            revisions,
            queue: Queue::new(),
            expectations: Expectations::default(),
        });
        let this = Arc::downgrade(&controller);
        sets.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            if let Change::Deleted(s) = change {
                c.expectations.forget(&key_of(s.as_ref()));
            }
            // Its own status writes come back as updates: a sync each would walk every node
            // again to find the status it just wrote.
            if let Change::Updated(old, new) = change
                && status_only(old, new)
            {
                return;
            }
            let (Change::Added(s) | Change::Updated(_, s) | Change::Deleted(s)) = change;
            c.queue.add(key_of(s.as_ref()));
        });
        let this = Arc::downgrade(&controller);
        nodes.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let relevant = match change {
                Change::Added(_) | Change::Deleted(_) => true,
                Change::Updated(old, new) => placement_changed(old, new),
            };
            if relevant {
                for set in c.sets.list() {
                    c.queue.add_batched(key_of(set.as_ref()), BATCH_WINDOW);
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
                if let Some(key) = set_key_of(pod) {
                    self.expectations.created(&key);
                    pod_control::enqueue_owner(&self.queue, &self.expectations, key, true);
                } else if informer::controller_of(pod.as_ref()).is_none() {
                    self.enqueue_matching(pod);
                }
            }
            Change::Updated(old, pod) => {
                if let Some(key) = set_key_of(old)
                    && set_key_of(pod).as_ref() != Some(&key)
                {
                    self.queue.add(key);
                }
                match set_key_of(pod) {
                    Some(key) => {
                        let newly_deleting = pod.metadata.deletion_timestamp.is_some()
                            && old.metadata.deletion_timestamp.is_none();
                        if newly_deleting {
                            self.expectations.deleted(&key, &key_of(pod.as_ref()));
                        }
                        // Changes nothing counted or decided depends on (a binding to the
                        // node the pod was made for) cost no sync: each would walk every node.
                        if pod_control::counted_differently(old, pod)
                            || node_of(old) != node_of(pod)
                        {
                            pod_control::enqueue_owner(
                                &self.queue,
                                &self.expectations,
                                key,
                                newly_deleting,
                            );
                        }
                    }
                    None if informer::controller_of(pod.as_ref()).is_none() => {
                        self.enqueue_matching(pod)
                    }
                    None => {}
                }
            }
            Change::Deleted(pod) => {
                if let Some(key) = set_key_of(pod) {
                    self.expectations.deleted(&key, &key_of(pod.as_ref()));
                    self.queue.add(key);
                }
            }
        }
    }

    fn enqueue_matching(&self, pod: &CachedPod) {
        let ns = pod.namespace().unwrap_or_default();
        for set in self.sets.list() {
            if set.namespace().as_deref() == Some(ns.as_str())
                && !crate::selectors::is_empty_selector(&set.spec.selector)
                && label_selector_matches(&set.spec.selector, pod.labels())
            {
                self.queue.add(key_of(set.as_ref()));
            }
        }
    }

    /// Syncs DaemonSets until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.sets.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "daemonset", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(set) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Requeue::No);
        };
        let namespace = set.namespace().unwrap_or_default();
        let name = set.name_any();
        // Read before the pods: a creation seen after the list was taken must not count.
        let satisfied = self.expectations.satisfied(key);
        let selector = &set.spec.selector;
        let adopt = !crate::selectors::is_empty_selector(selector);
        let selects = |p: &CachedPod| label_selector_matches(selector, p.labels());
        let pods =
            pod_control::claim_pods(&self.client, &self.pods, set.as_ref(), selects, adopt).await?;
        let (revision, hash) = self.revision(&set, &namespace, &pods).await?;
        let tolerations = daemon_tolerations(&set.spec.template);
        let mut by_node: BTreeMap<&str, Vec<&CachedPod>> = BTreeMap::new();
        for pod in &pods {
            if let Some(node) = node_of(pod) {
                by_node.entry(node).or_default().push(pod);
            }
        }
        let nodes = self.nodes.list();
        let mut views: Vec<NodeView<'_>> = nodes
            .iter()
            .map(|node| {
                let node_name = node.metadata.name.as_deref().unwrap_or("");
                let (run, keep) = eligible(&set.spec.template, &tolerations, node);
                NodeView {
                    name: node_name,
                    run,
                    keep,
                    pods: by_node.remove(node_name).unwrap_or_default(),
                }
            })
            .collect();
        // Pods of nodes that are gone: never kept.
        for (node_name, pods) in by_node {
            views.push(NodeView { name: node_name, run: false, keep: false, pods });
        }
        let desired = views.iter().filter(|v| v.run).count() as i32;
        let spec = SetSpec::of(&set, desired);
        let now = jiff::Timestamp::now();
        let mut failure = None;
        if satisfied && set.metadata.deletion_timestamp.is_none() {
            let plan = plan(&spec, &hash, &views, now);
            if let Err(e) = self.execute(&set, key, &revision, &hash, &plan).await {
                failure = Some(e);
            }
        }
        let status = status_of(&set, &spec, &hash, &views, now);
        if set.status.as_ref() != Some(&status) {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({"status": status});
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        self.prune_history(&set, &namespace, &pods, &revision).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        // Pods ready but not yet available for minReadySeconds: look again then.
        let min_ready = spec.min_ready_seconds;
        if min_ready > 0 && status.number_ready > status.number_available.unwrap_or(0) {
            return Ok(Requeue::After(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))));
        }
        Ok(Requeue::No)
    }

    async fn execute(
        &self,
        set: &DaemonSet,
        key: &str,
        revision: &ControllerRevision,
        hash: &str,
        plan: &Plan,
    ) -> Result<(), Error> {
        let namespace = set.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        // At most BURST creations a sync, in slow-start batches (1, 2, 4…) as the ReplicaSet
        // controller does: a systematic failure costs one request, and the scheduler and the
        // nodes start on the first pods while the rest are made. The next sync (once these
        // are seen) makes the others.
        let create = &plan.create[..plan.create.len().min(BURST)];
        if !create.is_empty() || !plan.delete.is_empty() {
            tracing::debug!(
                daemonset = key,
                create = create.len(),
                delete = plan.delete.len(),
                "changing pods"
            );
        }
        self.expectations.expect(
            key,
            create.len() as i64,
            plan.delete
                .iter()
                .map(|(name, _)| format!("{namespace}/{name}"))
                .collect::<HashSet<_>>(),
        );
        let template = history::template_of(revision).unwrap_or_else(|| set.spec.template.clone());
        // Creations and deletions are for different nodes: made side by side, a rolling
        // update's sync (pods made where the old ones are gone, the next old ones deleted)
        // takes the longer of the two rather than their sum.
        let creating = async {
            let mut first_error = None;
            let mut made = 0;
            let mut batch = 1;
            while made < create.len() && first_error.is_none() {
                let chunk = &create[made..(made + batch).min(create.len())];
                made += chunk.len();
                batch *= 2;
                let creates = futures::future::join_all(chunk.iter().map(|node| {
                    let pod = pod_for(set, &template, hash, node);
                    let api = api.clone();
                    async move { (node, api.create(&PostParams::default(), &pod).await) }
                }))
                .await;
                for (node, result) in creates {
                    match result {
                        Ok(pod) => self.recorder.record(
                            object_ref(set),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", pod.name_any()),
                        ),
                        Err(e) => {
                            self.expectations.created(key);
                            self.recorder.record(
                                object_ref(set),
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating pod for node {node}: {e}"),
                            );
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            // Creations never attempted are not expected either.
            for _ in made..create.len() {
                self.expectations.created(key);
            }
            first_error
        };
        let deleting = pod_control::delete_pods(
            &api,
            &self.recorder,
            set,
            &self.expectations,
            key,
            &plan.delete,
        );
        let (create_error, delete_error) = futures::join!(creating, deleting);
        let first_error = create_error.or(delete_error);
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The revision of the current template (created, or an older one with the same template
    /// made the newest), and its hash.
    async fn revision(
        &self,
        set: &DaemonSet,
        namespace: &str,
        _pods: &[Arc<CachedPod>],
    ) -> Result<(ControllerRevision, String), Error> {
        let uid = set.uid().unwrap_or_default();
        let owned = self.revisions.by_index(BY_CONTROLLER, &uid);
        let refs: Vec<&ControllerRevision> = owned.iter().map(|r| r.as_ref()).collect();
        let data = history::data_of(&set.spec.template);
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), namespace);
        let newest = history::next_number(&refs) - 1;
        let revision = match refs
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
            None => {
                let mut labels = set
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                let collisions = set.status.as_ref().and_then(|s| s.collision_count);
                labels.insert(HASH_LABEL.into(), history::hash_of(&data, collisions));
                let revision = history::new_revision(
                    &set.name_any(),
                    namespace,
                    controller_ref(set),
                    labels,
                    data.clone(),
                    newest + 1,
                    collisions,
                );
                match api.create(&PostParams::default(), &revision).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        let existing = api.get(&revision.name_any()).await?;
                        if !history::same_data(&existing, &data) {
                            // Another template with this hash: count the collision, as
                            // upstream, so the next sync names the revision differently.
                            let sets: Api<DaemonSet> =
                                Api::namespaced(self.client.clone(), namespace);
                            let count = collisions.unwrap_or(0) + 1;
                            let patch = serde_json::json!({"status": {"collisionCount": count}});
                            sets.patch_status(
                                &set.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await?;
                            return Err(Error::Invalid(format!(
                                "ControllerRevision {namespace}/{} holds another template",
                                revision.name_any()
                            )));
                        }
                        existing
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let hash = revision
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            .cloned()
            .unwrap_or_else(|| {
                history::hash_of(&data, set.status.as_ref().and_then(|s| s.collision_count))
            });
        Ok((revision, hash))
    }

    async fn prune_history(
        &self,
        set: &DaemonSet,
        namespace: &str,
        pods: &[Arc<CachedPod>],
        current: &ControllerRevision,
    ) -> Result<(), Error> {
        let limit = set.spec.revision_history_limit.unwrap_or(10);
        let uid = set.uid().unwrap_or_default();
        let owned = self.revisions.by_index(BY_CONTROLLER, &uid);
        let refs: Vec<&ControllerRevision> = owned.iter().map(|r| r.as_ref()).collect();
        let live = |r: &ControllerRevision| {
            let hash = r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
            r.metadata.name == current.metadata.name
                || pods.iter().any(|p| hash.is_some_and(|h| hash_of_pod(p) == Some(h.as_str())))
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

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .expect("a node")
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "d"}}, "spec": spec}))
            .expect("a template")
    }

    fn pod(name: &str, hash: &str, phase: &str, ready: bool) -> CachedPod {
        let conditions = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("u-{name}"), "labels": {HASH_LABEL: hash},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase, "conditions": conditions}
        }))
        .expect("a pod")
    }

    fn spec(max_unavailable: i32, max_surge: i32) -> SetSpec {
        SetSpec { on_delete: false, max_unavailable, max_surge, min_ready_seconds: 0 }
    }

    fn now() -> jiff::Timestamp {
        "2026-06-01T00:00:00Z".parse().expect("a time")
    }

    fn del(name: &str) -> (String, String) {
        (name.into(), format!("u-{name}"))
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints_with_the_automatic_tolerations() {
        let plain = template(json!({"containers": [{"name": "c"}]}));
        let tolerations = daemon_tolerations(&plain);
        let cordoned = node(
            "a",
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert_eq!(eligible(&plain, &tolerations, &cordoned), (true, true));
        let dedicated = node(
            "b",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        // Not for new pods, but one already there stays.
        assert_eq!(eligible(&plain, &tolerations, &dedicated), (false, true));
        let evicting = node("c", json!({}), json!([{"key": "dedicated", "effect": "NoExecute"}]));
        assert_eq!(eligible(&plain, &tolerations, &evicting), (false, false));
        let selective =
            template(json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "ssd"}}));
        let ssd = node("d", json!({"disk": "ssd"}), json!([]));
        let hdd = node("e", json!({"disk": "hdd"}), json!([]));
        assert_eq!(eligible(&selective, &tolerations, &ssd), (true, true));
        assert_eq!(eligible(&selective, &tolerations, &hdd), (false, false));
        let affine = template(
            json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}}}),
        );
        assert_eq!(eligible(&affine, &tolerations, &hdd), (true, true));
        assert_eq!(eligible(&affine, &tolerations, &ssd), (false, false));
        assert!(
            tolerations.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
                && t.effect.as_deref() == Some("NoExecute"))
        );
    }

    #[test]
    fn only_a_change_beside_the_status_makes_a_sync() {
        let set: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": 1, "resourceVersion": "1"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}}}
        }))
        .unwrap();
        let mut written = set.clone();
        written.metadata.resource_version = Some("2".into());
        written.status = Some(DaemonSetStatus { number_ready: 3, ..DaemonSetStatus::default() });
        assert!(status_only(&set, &written), "its own status write");
        let mut edited = written.clone();
        edited.metadata.generation = Some(2);
        edited.spec.min_ready_seconds = Some(5);
        assert!(!status_only(&written, &edited), "a spec change");
        let mut deleting = written.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert!(!status_only(&written, &deleting), "a deletion");
        let mut relabelled = written.clone();
        relabelled.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        assert!(!status_only(&written, &relabelled), "a label");
    }

    #[test]
    fn daemon_pods_are_pinned_to_their_node_by_affinity() {
        let set: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c"}]}}}
        }))
        .expect("a set");
        let p = pod_for(&set, &set.spec.template, "h1", "node-7");
        let cached: CachedPod =
            serde_json::from_value(serde_json::to_value(&p).expect("json")).expect("cached");
        assert_eq!(node_of(&cached), Some("node-7"));
        let labels = p.metadata.labels.expect("labels");
        assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("h1"));
        assert_eq!(labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str), Some("2"));
    }

    #[test]
    fn one_pod_per_eligible_node_failed_ones_replaced_and_ineligible_ones_removed() {
        let a = pod("a1", "h", "Running", true);
        let extra = pod("a2", "h", "Running", true);
        let failed = pod("b1", "h", "Failed", false);
        let stray = pod("c1", "h", "Running", true);
        let nodes = [
            NodeView { name: "a", run: true, keep: true, pods: vec![&a, &extra] },
            NodeView { name: "b", run: true, keep: true, pods: vec![&failed] },
            NodeView { name: "c", run: false, keep: false, pods: vec![&stray] },
            NodeView { name: "d", run: true, keep: true, pods: vec![] },
        ];
        let p = plan(&spec(1, 0), "h", &nodes, now());
        assert_eq!(p.create, vec!["d".to_owned()]);
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec![del("a2"), del("b1"), del("c1")]);
    }

    #[test]
    fn rolling_updates_respect_max_unavailable_and_surge() {
        let old: Vec<CachedPod> =
            (0..4).map(|i| pod(&format!("o{i}"), "old", "Running", true)).collect();
        let names = ["n0", "n1", "n2", "n3"];
        let nodes: Vec<NodeView<'_>> = names
            .iter()
            .zip(&old)
            .map(|(n, p)| NodeView { name: n, run: true, keep: true, pods: vec![p] })
            .collect();
        let p = plan(&spec(2, 0), "new", &nodes, now());
        assert_eq!(p.delete.len(), 2, "{p:?}");
        assert!(p.create.is_empty());
        // Surge: new pods beside the old ones, at most maxSurge at a time.
        let p = plan(&spec(0, 1), "new", &nodes, now());
        assert_eq!(p.create, vec!["n0".to_owned()]);
        assert!(p.delete.is_empty());
        // Once the surge pod is available, its old pod goes.
        let fresh = pod("f0", "new", "Running", true);
        let mut surged: Vec<NodeView<'_>> = names
            .iter()
            .zip(&old)
            .map(|(n, p)| NodeView { name: n, run: true, keep: true, pods: vec![p] })
            .collect();
        surged[0].pods.push(&fresh);
        let p = plan(&spec(0, 1), "new", &surged, now());
        assert_eq!(p.delete, vec![del("o0")]);
        assert_eq!(p.create, vec!["n1".to_owned()]);
        // OnDelete leaves old pods alone.
        let p = plan(&SetSpec { on_delete: true, ..spec(1, 0) }, "new", &nodes, now());
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn a_node_left_without_its_pod_counts_against_max_unavailable() {
        // n0's old pod was deleted for the roll and its replacement is not made yet; n1 keeps
        // its old pod until n0 is back (upstream's conformance spec "rollback without
        // unnecessary restarts" catches the roll that takes both at once).
        let kept = pod("o1", "old", "Running", true);
        let nodes = vec![
            NodeView { name: "n0", run: true, keep: true, pods: vec![] },
            NodeView { name: "n1", run: true, keep: true, pods: vec![&kept] },
        ];
        let p = plan(&spec(1, 0), "new", &nodes, now());
        assert_eq!(p.create, vec!["n0".to_owned()]);
        assert!(p.delete.is_empty(), "{p:?}");
        // And while n0's replacement is up but not available (a bad image), still none.
        let stuck = pod("n0-new", "new", "Pending", false);
        let nodes = vec![
            NodeView { name: "n0", run: true, keep: true, pods: vec![&stuck] },
            NodeView { name: "n1", run: true, keep: true, pods: vec![&kept] },
        ];
        let p = plan(&spec(1, 0), "new", &nodes, now());
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    }
}
