//! The scheduler (upstream's kube-scheduler): takes pending pods whose `schedulerName` is
//! `default-scheduler` in priority order, filters and scores the nodes (`framework.rs`),
//! assumes the pod onto the best node in its own cache and binds it through
//! `pods/binding` in the background, so the next pod is placed while the last binding is
//! still on the wire. Pods that fit nowhere get `PodScheduled=False` and a
//! `FailedScheduling` event, may preempt lower-priority pods, and wait until the cluster
//! changes (a node added or changed, a pod gone) with a per-pod back-off.

pub mod framework;
pub mod volume_binding;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Binding, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, Semaphore};

use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{Change, Informer};
use crate::selectors::Labels;
use framework::{ClusterState, NodeInfo, NodeTable, PodInfo, ResourceStrategy, Unfit};
use volume_binding::{Need, Needs};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this are ours.
    pub scheduler_name: String,
    /// Spread (LeastAllocated, default) or bin-pack (MostAllocated).
    pub strategy: ResourceStrategy,
    /// Stop looking after finding feasible nodes among this share of the cluster
    /// (0 = upstream's adaptive default: 50% minus 1% per 125 nodes, at least 5%, at least
    /// 100 nodes).
    pub percentage_of_nodes_to_score: u32,
    /// Bindings in flight at once.
    pub parallel_binds: usize,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            scheduler_name: DEFAULT_SCHEDULER.into(),
            strategy: ResourceStrategy::LeastAllocated,
            percentage_of_nodes_to_score: 0,
            parallel_binds: 64,
        }
    }
}

/// A pod waiting in the active queue: higher priority first, then first come.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    priority: i32,
    order: Reverse<u64>,
    key: String,
}

#[derive(Debug, Default)]
struct State {
    /// Nodes in a stable order, for the round-robin search start.
    nodes: NodeTable,
    next_start: usize,
    /// Pod key → node of every placed pod (bound or assumed).
    placed: HashMap<String, String>,
    /// Pods assumed onto a node whose binding is not yet seen in the informer.
    assumed: HashSet<String>,
    /// Placed pods with required anti-affinity: (pod, node).
    anti_affinity_pods: HashMap<String, (Arc<PodInfo>, String)>,
    namespace_labels: HashMap<String, Labels>,
    /// image name → how many nodes have it.
    image_nodes: HashMap<String, usize>,
    active: BinaryHeap<Queued>,
    queued: HashSet<String>,
    /// Pods that fit nowhere: key → (attempts, last attempt, priority).
    unschedulable: HashMap<String, (u32, Instant, i32)>,
    /// Pods waiting out their back-off: key → (attempts, ready at, priority).
    backoff: HashMap<String, (u32, Instant, i32)>,
    /// Pods placed on nodes the cache does not know (yet, or any more), by node.
    on_unknown_nodes: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    /// Attempts so far of pods back in the active queue.
    attempts: HashMap<String, u32>,
    /// The last FailedScheduling message per pod, so repeats don't rewrite the condition.
    last_message: HashMap<String, String>,
    /// Pending pods that preemption nominated to a node, by node: the room their victims
    /// free is held for them against pods of lower priority.
    nominated: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    /// Pod key → the node it is nominated to.
    nominated_to: HashMap<String, String>,
    /// What is known of each node's local storage (the volume filter reads it).
    storage: HashMap<String, volume_binding::LocalStorage>,
    seq: u64,
}

impl State {
    fn enqueue(&mut self, key: &str, priority: i32) {
        if self.placed.contains_key(key) || !self.queued.insert(key.to_owned()) {
            return;
        }
        self.unschedulable.remove(key);
        self.backoff.remove(key);
        self.seq += 1;
        self.active.push(Queued { priority, order: Reverse(self.seq), key: key.to_owned() });
    }

    fn forget_pending(&mut self, key: &str) {
        self.clear_nomination(key);
        self.queued.remove(key);
        self.unschedulable.remove(key);
        self.backoff.remove(key);
        self.attempts.remove(key);
        self.last_message.remove(key);
    }

    /// Holds the room on `node` for `pod` (its `nominatedNodeName`).
    fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        if self.nominated_to.get(&pod.key).is_some_and(|n| n == node) {
            // The same nomination seen again: keep the newer view of the pod.
            if let Some(pods) = self.nominated.get_mut(node) {
                pods.insert(pod.key.clone(), pod);
            }
            return;
        }
        self.clear_nomination(&pod.key);
        self.nominated_to.insert(pod.key.clone(), node.to_owned());
        self.nominated.entry(node.to_owned()).or_default().insert(pod.key.clone(), pod);
    }

    fn clear_nomination(&mut self, key: &str) {
        let Some(node) = self.nominated_to.remove(key) else { return };
        if let Some(pods) = self.nominated.get_mut(&node) {
            pods.remove(key);
            if pods.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    /// Whether the room `pod` needs on `node` is held for a nominated pod at least as
    /// important.
    fn held_for_others(&self, pod: &PodInfo, node: &NodeInfo) -> Option<Unfit> {
        let nominated = self.nominated.get(&node.name)?;
        framework::fits_with_nominated(pod, node, nominated.values())
    }

    /// Parks a pod that fits nowhere until the cluster changes; whether its message is new
    /// (the condition is rewritten only then).
    fn mark_unschedulable(
        &mut self,
        key: &str,
        attempts: u32,
        priority: i32,
        message: &str,
    ) -> bool {
        self.attempts.remove(key);
        self.unschedulable.insert(key.to_owned(), (attempts, Instant::now(), priority));
        let changed = self.last_message.get(key).map(String::as_str) != Some(message);
        self.last_message.insert(key.to_owned(), message.to_owned());
        changed
    }

    /// The volume plugins' verdict on `node` (nothing to check without needs).
    fn volumes_unfit(&self, needs: &[Need], node: &NodeInfo) -> Option<Unfit> {
        if needs.is_empty() {
            return None;
        }
        volume_binding::check_node(needs, node, self.storage.get(&node.name))
    }

    /// Something changed that may let waiting pods fit: they retry once their back-off ends.
    fn cluster_changed(&mut self) {
        for (key, (attempts, last, priority)) in self.unschedulable.drain() {
            self.backoff.insert(key, (attempts, last + backoff(attempts), priority));
        }
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        if let Some(old) = self.placed.get(&pod.key).cloned()
            && old != node
        {
            self.unplace(&pod.key);
        }
        self.placed.insert(pod.key.clone(), node.to_owned());
        if pod.anti_affinity.is_empty() {
            self.anti_affinity_pods.remove(&pod.key);
        } else {
            self.anti_affinity_pods.insert(pod.key.clone(), (pod.clone(), node.to_owned()));
        }
        // Pods of nodes not (yet) known are counted once the node appears.
        match self.nodes.get_mut(node) {
            Some(info) => info.add_pod(pod),
            None => {
                self.on_unknown_nodes
                    .entry(node.to_owned())
                    .or_default()
                    .insert(pod.key.clone(), pod);
            }
        }
    }

    fn unplace(&mut self, key: &str) -> bool {
        self.assumed.remove(key);
        self.anti_affinity_pods.remove(key);
        let Some(node) = self.placed.remove(key) else { return false };
        if let Some(info) = self.nodes.get_mut(&node) {
            info.remove_pod(key);
        }
        if let Some(pods) = self.on_unknown_nodes.get_mut(&node) {
            pods.remove(key);
            if pods.is_empty() {
                self.on_unknown_nodes.remove(&node);
            }
        }
        true
    }

    fn set_node(&mut self, node: &Node) {
        let keeps = volume_binding::LocalStorage::keeps_volumes(node);
        let entry = self.storage.entry(node.name_any()).or_default();
        let storage_changed = entry.storage_path != keeps;
        entry.storage_path = keeps;
        let mut info = NodeInfo::new(node);
        let relevant_change = match self.nodes.get_mut(&info.name) {
            // Replaced in place, so the node keeps its position in the search order.
            Some(slot) => {
                let old = std::mem::replace(slot, info);
                let changed = old.labels != slot.labels
                    || old.taints != slot.taints
                    || old.unschedulable != slot.unschedulable
                    || old.allocatable != slot.allocatable
                    || old.allowed_pods != slot.allowed_pods;
                for image in old.images.keys() {
                    if let Some(n) = self.image_nodes.get_mut(image) {
                        *n = n.saturating_sub(1);
                    }
                }
                slot.adopt_pods(old);
                for image in slot.images.keys() {
                    *self.image_nodes.entry(image.clone()).or_insert(0) += 1;
                }
                changed
            }
            None => {
                for (_, p) in self.on_unknown_nodes.remove(&info.name).unwrap_or_default() {
                    info.add_pod(p);
                }
                for image in info.images.keys() {
                    *self.image_nodes.entry(image.clone()).or_insert(0) += 1;
                }
                self.nodes.insert(info);
                true
            }
        };
        if relevant_change || storage_changed {
            self.cluster_changed();
        }
    }

    fn remove_node(&mut self, name: &str) {
        self.storage.remove(name);
        if let Some(old) = self.nodes.remove(name) {
            for image in old.images.keys() {
                if let Some(n) = self.image_nodes.get_mut(image) {
                    *n = n.saturating_sub(1);
                }
            }
            // Its pods stay placed until they are deleted (pod GC does that).
            if !old.pods.is_empty() {
                self.on_unknown_nodes.insert(name.to_owned(), old.pods);
            }
        }
    }

    /// The next pod to schedule, if one is ready.
    fn pop(&mut self, now: Instant) -> Option<String> {
        let ready: Vec<String> = self
            .backoff
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            if let Some((attempts, _, priority)) = self.backoff.remove(&key) {
                self.attempts.insert(key.clone(), attempts);
                self.enqueue(&key, priority);
            }
        }
        let next = self.active.pop()?;
        self.queued.remove(&next.key);
        Some(next.key)
    }

    /// When the next back-off ends.
    fn next_ready(&self) -> Option<Instant> {
        self.backoff.values().map(|(_, at, _)| *at).min()
    }
}

/// Upstream's per-pod back-off: 1 s doubling to 10 s.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << attempts.saturating_sub(1).min(4))
        .min(Duration::from_secs(10))
}

/// Pods that stayed unschedulable this long are retried even without a cluster change.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(300);

/// The scheduler; [`Scheduler::new`] hooks it to the informers, [`Scheduler::run`]
/// schedules (while leader).
pub struct Scheduler {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    volumes: VolumeSources,
    /// Woken by every claim change: binds waiting for their claims to be bound.
    claims_changed: Arc<Notify>,
    config: SchedulerConfig,
    state: Mutex<State>,
    wake: Notify,
    recorder: Recorder,
    binds: Arc<Semaphore>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("config", &self.config).finish()
    }
}

/// The informers the volume plugins read.
#[derive(Debug, Clone)]
pub struct VolumeSources {
    /// PersistentVolumeClaims.
    pub claims: Arc<Informer<PersistentVolumeClaim>>,
    /// PersistentVolumes.
    pub volumes: Arc<Informer<PersistentVolume>>,
    /// StorageClasses.
    pub classes: Arc<Informer<StorageClass>>,
    /// CSIStorageCapacities (the nodes' free local storage).
    pub capacities: Arc<Informer<k8s_openapi::api::storage::v1::CSIStorageCapacity>>,
}

impl VolumeSources {
    /// Waits until every cache has listed.
    pub async fn wait_synced(&self) {
        self.claims.wait_synced().await;
        self.volumes.wait_synced().await;
        self.classes.wait_synced().await;
        self.capacities.wait_synced().await;
    }
}

struct Lookup<'a> {
    sources: &'a VolumeSources,
    pods: &'a Informer<CachedPod>,
}

impl volume_binding::Lookup for Lookup<'_> {
    fn claim(&self, key: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.sources.claims.get(key)
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.sources.volumes.get(name)
    }
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.sources.classes.get(name)
    }
    fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
        self.sources.volumes.list()
    }
    fn used_by_other(&self, key: &str, pod_key: &str) -> bool {
        self.pods.by_index(crate::informer::BY_CLAIM, key).iter().any(|p| {
            crate::informer::key_of(p.as_ref()) != pod_key
                && !is_terminal(p)
                && p.metadata.deletion_timestamp.is_none()
        })
    }
}

/// A pod assumed onto a node: the pod, the node, the attempts so far and the claims to
/// write the node on before binding.
type Decision = (Arc<PodInfo>, String, u32, Vec<Arc<PersistentVolumeClaim>>);

/// How long a pod's binding waits for its claims to be bound (upstream's
/// `bindTimeoutSeconds`).
const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

fn is_terminal(pod: &CachedPod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn node_name(pod: &CachedPod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

impl Scheduler {
    /// A scheduler fed by these informers (register before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        nodes: &Informer<Node>,
        namespaces: &Informer<Namespace>,
        volumes: VolumeSources,
        config: SchedulerConfig,
    ) -> Arc<Scheduler> {
        crate::informer::index_pods_by_claim(&pods);
        let claims_changed = Arc::new(Notify::new());
        let this_notify = claims_changed.clone();
        volumes.claims.on_change(move |_| this_notify.notify_waiters());
        let scheduler = Arc::new(Scheduler {
            volumes: volumes.clone(),
            claims_changed,
            recorder: Recorder::new(client.clone(), &config.scheduler_name),
            binds: Arc::new(Semaphore::new(config.parallel_binds.max(1))),
            client,
            pods: pods.clone(),
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let this = Arc::downgrade(&scheduler);
        pods.on_change(move |change| {
            if let Some(s) = this.upgrade() {
                s.pod_changed(change);
            }
        });
        let this = Arc::downgrade(&scheduler);
        nodes.on_change(move |change| {
            if let Some(s) = this.upgrade() {
                let mut state = s.state();
                match change {
                    Change::Added(n) | Change::Updated(_, n) => state.set_node(n),
                    Change::Deleted(n) => state.remove_node(&n.name_any()),
                }
                drop(state);
                s.wake.notify_one();
            }
        });
        let this = Arc::downgrade(&scheduler);
        volumes.claims.on_change(move |_| {
            if let Some(s) = this.upgrade() {
                s.state().cluster_changed();
                s.wake.notify_one();
            }
        });
        let this = Arc::downgrade(&scheduler);
        volumes.capacities.on_change(move |change| {
            let Some(s) = this.upgrade() else { return };
            let (Change::Added(c) | Change::Updated(_, c) | Change::Deleted(c)) = change;
            let Some((node, bytes)) = volume_binding::capacity_of(c) else { return };
            let mut state = s.state();
            let free = (!matches!(change, Change::Deleted(_))).then_some(bytes);
            let entry = state.storage.entry(node).or_default();
            if entry.free != free {
                entry.free = free;
                state.cluster_changed();
            }
            drop(state);
            s.wake.notify_one();
        });
        let this = Arc::downgrade(&scheduler);
        volumes.volumes.on_change(move |_| {
            if let Some(s) = this.upgrade() {
                s.state().cluster_changed();
                s.wake.notify_one();
            }
        });
        let this = Arc::downgrade(&scheduler);
        namespaces.on_change(move |change| {
            if let Some(s) = this.upgrade() {
                let mut state = s.state();
                match change {
                    Change::Added(n) | Change::Updated(_, n) => {
                        state.namespace_labels.insert(n.name_any(), n.labels().clone());
                    }
                    Change::Deleted(n) => {
                        state.namespace_labels.remove(&n.name_any());
                    }
                }
            }
        });
        scheduler
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_ours(&self, pod: &CachedPod) -> bool {
        pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or(DEFAULT_SCHEDULER)
            == self.config.scheduler_name
    }

    fn pod_changed(&self, change: &Change<'_, CachedPod>) {
        let mut state = self.state();
        match change {
            Change::Added(pod) | Change::Updated(_, pod) => {
                let key = crate::informer::key_of(pod.as_ref());
                if is_terminal(pod) {
                    state.forget_pending(&key);
                    if state.unplace(&key) {
                        state.cluster_changed();
                    }
                } else if let Some(node) = node_name(pod) {
                    state.forget_pending(&key);
                    state.assumed.remove(&key);
                    let info = Arc::new(PodInfo::new((*pod).clone(), &state.namespace_labels));
                    state.place(info, node);
                } else if pod.metadata.deletion_timestamp.is_none() && self.is_ours(pod) {
                    // A nomination made by this scheduler (or a previous leader) holds room,
                    // unless the pod has since been placed (its status may trail the
                    // decision).
                    if !state.assumed.contains(&key)
                        && let Some(nominated) = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.nominated_node_name.as_deref())
                            .filter(|n| !n.is_empty())
                    {
                        let info = Arc::new(PodInfo::new((*pod).clone(), &state.namespace_labels));
                        state.nominate(info, nominated);
                    }
                    if !state.assumed.contains(&key)
                        && !state.unschedulable.contains_key(&key)
                        && !state.backoff.contains_key(&key)
                    {
                        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                        state.enqueue(&key, priority);
                    }
                } else {
                    state.forget_pending(&key);
                }
            }
            Change::Deleted(pod) => {
                let key = crate::informer::key_of(pod.as_ref());
                state.forget_pending(&key);
                if state.unplace(&key) {
                    state.cluster_changed();
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Schedules pods until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut last_flush = Instant::now();
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (next, wait) = {
                let mut state = self.state();
                let now = Instant::now();
                if now.duration_since(last_flush) > Duration::from_secs(30) {
                    last_flush = now;
                    let stale: Vec<String> = state
                        .unschedulable
                        .iter()
                        .filter(|(_, (_, at, _))| now.duration_since(*at) > UNSCHEDULABLE_FLUSH)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in stale {
                        if let Some((attempts, _, priority)) = state.unschedulable.remove(&key) {
                            state.backoff.insert(key, (attempts, now, priority));
                        }
                    }
                }
                (state.pop(now), state.next_ready())
            };
            match next {
                Some(key) => self.schedule_one(&key).await,
                None => {
                    let until = wait
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_secs(30))
                        .max(Duration::from_millis(5));
                    let _ = tokio::time::timeout(until, notified).await;
                }
            }
        }
    }

    async fn schedule_one(self: &Arc<Self>, key: &str) {
        let Some(pod) = self.pods.get(key) else { return };
        if node_name(&pod).is_some()
            || pod.metadata.deletion_timestamp.is_some()
            || !self.is_ours(&pod)
            || is_terminal(&pod)
        {
            return;
        }
        if let Some((info, node, attempts, select)) = self.decide(key, pod) {
            self.clone().bind(info, node, attempts, select).await;
        }
    }

    /// One scheduling decision, under the cache lock: the pod is assumed onto a node
    /// (returned for binding), or marked unschedulable (and may preempt).
    fn decide(self: &Arc<Self>, key: &str, pod: Arc<CachedPod>) -> Option<Decision> {
        let claims = pod.claims();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let needs = volume_binding::needs(
            &namespace,
            key,
            &claims,
            &Lookup { sources: &self.volumes, pods: &self.pods },
        );
        let mut state = self.state();
        let info = Arc::new(PodInfo::new(pod, &state.namespace_labels));
        let attempts = state.attempts.get(key).copied().unwrap_or(0) + 1;
        let needs = match needs {
            Needs::None => Vec::new(),
            Needs::Nodes(needs) => needs,
            Needs::Nowhere(why) => {
                let total = state.nodes.len();
                let message = format!(
                    "0/{total} nodes are available: {why}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
                );
                let changed = state.mark_unschedulable(key, attempts, info.priority, &message);
                drop(state);
                self.unschedulable(&info, message, changed, None);
                return None;
            }
        };
        match self.find_node(&mut state, &info, &needs) {
            Ok(node) => {
                state.attempts.remove(key);
                state.last_message.remove(key);
                state.clear_nomination(key);
                state.assumed.insert(key.to_owned());
                state.place(info.clone(), &node);
                Some((info, node, attempts, volume_binding::to_select(&needs)))
            }
            Err(reasons) => {
                let total = state.nodes.len();
                let mut message = framework::unschedulable_message(total, &reasons);
                let preempted = self.preempt(&mut state, &info, &reasons);
                if let Some((node, _)) = &preempted {
                    state.nominate(info.clone(), node);
                }
                match &preempted {
                    Some((node, victims)) => {
                        message.push_str(&format!(
                            " preemption: {} victim(s) on node {node}.",
                            victims.len()
                        ));
                    }
                    None if info.pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref())
                        != Some("Never") =>
                    {
                        let helpful = reasons
                            .iter()
                            .filter(|(r, _)| r.preemption_may_help())
                            .map(|(_, n)| n)
                            .sum::<usize>();
                        message.push_str(&format!(
                            " preemption: 0/{total} nodes are available: {}.",
                            if helpful == 0 {
                                format!("{total} Preemption is not helpful for scheduling")
                            } else {
                                format!("{helpful} No preemption victims found for incoming pod, {} Preemption is not helpful for scheduling", total - helpful)
                            }
                        ));
                    }
                    None => {}
                }
                let changed = state.mark_unschedulable(key, attempts, info.priority, &message);
                drop(state);
                self.unschedulable(&info, message, changed, preempted);
                None
            }
        }
    }

    /// How many feasible nodes to look for before scoring (upstream's adaptive rule).
    fn nodes_to_find(&self, total: usize) -> usize {
        if total < 100 {
            return total;
        }
        let pct = match self.config.percentage_of_nodes_to_score {
            0 => (50 - (total as i64) / 125).max(5) as usize,
            p => (p as usize).min(100),
        };
        (total * pct / 100).max(100)
    }

    fn find_node(
        &self,
        state: &mut State,
        pod: &PodInfo,
        needs: &[Need],
    ) -> Result<String, HashMap<Unfit, usize>> {
        let total = state.nodes.len();
        let mut reasons: HashMap<Unfit, usize> = HashMap::new();
        if total == 0 {
            return Err(reasons);
        }
        let needs_cluster = !pod.affinity.is_empty()
            || !pod.anti_affinity.is_empty()
            || !pod.preferred.is_empty()
            || !pod.spread.is_empty()
            || !state.anti_affinity_pods.is_empty();
        let cluster = needs_cluster
            .then(|| ClusterState::new(pod, &state.nodes, state.anti_affinity_pods.values()));
        // A pod nominated by an earlier preemption goes to that node if it fits there now,
        // as upstream tries the nominated node before searching.
        if let Some(node) = state.nominated_to.get(&pod.key).and_then(|n| state.nodes.get(n))
            && framework::filter(pod, node, cluster.as_ref())
                .or_else(|| state.held_for_others(pod, node))
                .or_else(|| state.volumes_unfit(needs, node))
                .is_none()
        {
            return Ok(node.name.clone());
        }
        // A pod pinned by name (a DaemonSet's) is checked against its nodes only; the rest
        // count as not matching its node affinity.
        if let Some(names) = framework::named_nodes(&pod.pod) {
            let mut feasible: Vec<&NodeInfo> = Vec::new();
            let mut examined = 0;
            for node in names.iter().filter_map(|n| state.nodes.get(n)) {
                examined += 1;
                match framework::filter(pod, node, cluster.as_ref())
                    .or_else(|| state.held_for_others(pod, node))
                    .or_else(|| state.volumes_unfit(needs, node))
                {
                    None => feasible.push(node),
                    Some(unfit) => *reasons.entry(unfit).or_insert(0) += 1,
                }
            }
            if total > examined {
                *reasons.entry(Unfit::NodeAffinity).or_insert(0) += total - examined;
            }
            if feasible.is_empty() {
                return Err(reasons);
            }
            let node_count = total.max(1) as f64;
            let spread = |image: &str| {
                state.image_nodes.get(image).copied().unwrap_or(0) as f64 / node_count
            };
            let scores =
                framework::score(pod, &feasible, cluster.as_ref(), self.config.strategy, &spread);
            let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
            return Ok(feasible[best].name.clone());
        }
        let want = self.nodes_to_find(total);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(total));
        let start = state.next_start % total;
        let mut examined = 0;
        for i in 0..total {
            let node = &state.nodes.as_slice()[(start + i) % total];
            examined += 1;
            match framework::filter(pod, node, cluster.as_ref())
                .or_else(|| state.held_for_others(pod, node))
                .or_else(|| state.volumes_unfit(needs, node))
            {
                None => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Some(unfit) => *reasons.entry(unfit).or_insert(0) += 1,
            }
        }
        let next_start = (start + examined) % total;
        if feasible.is_empty() {
            state.next_start = next_start;
            return Err(reasons);
        }
        let node_count = state.nodes.len().max(1) as f64;
        let spread =
            |image: &str| state.image_nodes.get(image).copied().unwrap_or(0) as f64 / node_count;
        let scores =
            framework::score(pod, &feasible, cluster.as_ref(), self.config.strategy, &spread);
        // The best score; ties go to the first examined, which rotates with the start.
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        let chosen = feasible[best].name.clone();
        state.next_start = next_start;
        Ok(chosen)
    }

    /// Binds the pod; first, when it has claims waiting for their first consumer, writes
    /// the node on them and waits (without holding a binding slot) until they are bound.
    async fn bind(
        self: Arc<Self>,
        pod: Arc<PodInfo>,
        node: String,
        attempts: u32,
        select: Vec<Arc<PersistentVolumeClaim>>,
    ) {
        if select.is_empty() {
            return self.bind_pod(pod, node, attempts).await;
        }
        tokio::spawn(async move {
            match self.bind_volumes(&node, &select).await {
                Ok(()) => self.bind_pod(pod, node, attempts).await,
                Err(why) => {
                    tracing::debug!(pod = %pod.key, %node, %why, "binding volumes failed");
                    self.recorder.record(
                        object_ref(pod.pod.as_ref()),
                        EventType::Warning,
                        "FailedScheduling",
                        format!("running PreBind plugin \"VolumeBinding\": {why}"),
                    );
                    self.forget_assumed(&pod, attempts, true);
                }
            }
        });
    }

    /// Writes `node` on the claims (`volume.kubernetes.io/selected-node`) and waits until
    /// the PersistentVolume controller has bound every one.
    async fn bind_volumes(
        &self,
        node: &str,
        claims: &[Arc<PersistentVolumeClaim>],
    ) -> Result<(), String> {
        use crate::local_volume::SELECTED_NODE;
        for claim in claims {
            let namespace = claim.namespace().unwrap_or_default();
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
            let mut current = (**claim).clone();
            for _ in 0..5 {
                if volume_binding::is_bound(&current)
                    || current.annotations().get(SELECTED_NODE).map(String::as_str) == Some(node)
                {
                    break;
                }
                current.annotations_mut().insert(SELECTED_NODE.into(), node.into());
                match api.replace(&current.name_any(), &PostParams::default(), &current).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        current = api.get(&claim.name_any()).await.map_err(|e| e.to_string())?;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        let deadline = Instant::now() + VOLUME_BIND_TIMEOUT;
        let mut seen = vec![false; claims.len()];
        loop {
            let notified = self.claims_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut waiting = 0;
            for (i, claim) in claims.iter().enumerate() {
                match self.volumes.claims.get(&crate::informer::key_of(claim.as_ref())) {
                    Some(c) if c.metadata.uid == claim.metadata.uid => {
                        if volume_binding::is_bound(&c) {
                            continue;
                        }
                        // The provisioner gave the choice back (the volume cannot be made
                        // there): the pod is scheduled again, as upstream's binder does. Only
                        // once the cache has shown our choice: until then it may lag our write.
                        let chosen =
                            c.annotations().get(SELECTED_NODE).map(String::as_str) == Some(node);
                        if chosen {
                            seen[i] = true;
                        } else if seen[i] {
                            return Err(format!(
                                "selectedNode annotation reset for PVC {:?}",
                                c.name_any()
                            ));
                        }
                        waiting += 1;
                    }
                    _ => {
                        return Err(format!(
                            "persistentvolumeclaim {:?} is gone",
                            claim.name_any()
                        ));
                    }
                }
            }
            if waiting == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("binding volumes: context deadline exceeded".into());
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Forgets an assumption whose binding failed; the pod is tried again after a back-off
    /// (`retry`) or when it changes.
    fn forget_assumed(&self, pod: &PodInfo, attempts: u32, retry: bool) {
        let mut state = self.state();
        if state.assumed.contains(&pod.key) {
            state.unplace(&pod.key);
            if retry {
                state.backoff.insert(
                    pod.key.clone(),
                    (attempts, Instant::now() + backoff(attempts), pod.priority),
                );
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    async fn bind_pod(self: Arc<Self>, pod: Arc<PodInfo>, node: String, attempts: u32) {
        let Ok(permit) = self.binds.clone().acquire_owned().await else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let namespace = pod.namespace.clone();
            let name = pod.pod.name_any();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: pod.pod.metadata.uid.clone(),
                    ..ObjectMeta::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..ObjectReference::default()
                },
            };
            let result = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
            match result {
                Ok(_) => {
                    self.recorder.record(
                        object_ref(pod.pod.as_ref()),
                        EventType::Normal,
                        "Scheduled",
                        format!("Successfully assigned {namespace}/{name} to {node}"),
                    );
                }
                Err(e) => {
                    tracing::debug!(pod = %pod.key, %node, error = %e, "binding failed");
                    let retry =
                        !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                    self.forget_assumed(&pod, attempts, retry);
                }
            }
        });
    }

    /// Marks the pod unschedulable (condition, event) and carries out a preemption.
    fn unschedulable(
        self: &Arc<Self>,
        pod: &PodInfo,
        message: String,
        changed: bool,
        preempted: Option<(String, Vec<Arc<PodInfo>>)>,
    ) {
        self.recorder.record(
            object_ref(pod.pod.as_ref()),
            EventType::Warning,
            "FailedScheduling",
            message.clone(),
        );
        let this = self.clone();
        let namespace = pod.namespace.clone();
        let name = pod.pod.name_any();
        let uid = pod.pod.metadata.uid.clone().unwrap_or_default();
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(this.client.clone(), &namespace);
            let mut status = serde_json::json!({});
            if changed {
                status["conditions"] = serde_json::json!([{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null,
                    "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).ok(),
                }]);
            }
            if let Some((node, victims)) = &preempted {
                status["nominatedNodeName"] = serde_json::json!(node);
                for victim in victims {
                    let victim_api: Api<Pod> =
                        Api::namespaced(this.client.clone(), &victim.namespace);
                    this.recorder.record(
                        object_ref(victim.pod.as_ref()),
                        EventType::Normal,
                        "Preempted",
                        format!("Preempted by pod {uid} on node {node}"),
                    );
                    if let Err(e) =
                        victim_api.delete(&victim.pod.name_any(), &DeleteParams::default()).await
                    {
                        tracing::warn!(victim = %victim.key, error = %e, "deleting a preemption victim failed");
                    }
                }
            }
            if status.as_object().is_some_and(|o| !o.is_empty()) {
                let patch = serde_json::json!({"status": status});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "updating the PodScheduled condition failed");
                }
            }
        });
    }

    /// Upstream's default preemption, simplified: among nodes where only resources or
    /// ports (or anti-affinity) stood in the way, find the fewest and lowest-priority pods
    /// to remove so the pod fits; nominate that node and evict them.
    fn preempt(
        &self,
        state: &mut State,
        pod: &PodInfo,
        reasons: &HashMap<Unfit, usize>,
    ) -> Option<(String, Vec<Arc<PodInfo>>)> {
        let spec = pod.pod.spec.as_ref()?;
        if spec.preemption_policy.as_deref() == Some("Never")
            || !reasons.keys().any(Unfit::preemption_may_help)
        {
            return None;
        }
        // Victims of an earlier preemption are still terminating: wait for them.
        if let Some(nominated) =
            pod.pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref())
            && let Some(node) = state.nodes.get(nominated)
            && node
                .pods
                .values()
                .any(|p| p.pod.metadata.deletion_timestamp.is_some() && p.priority < pod.priority)
        {
            return None;
        }
        let mut best: Option<(i32, usize, String, Vec<Arc<PodInfo>>)> = None;
        for node in state.nodes.as_slice() {
            let lower: Vec<Arc<PodInfo>> = node
                .pods
                .values()
                .filter(|p| {
                    p.priority < pod.priority && p.pod.metadata.deletion_timestamp.is_none()
                })
                .cloned()
                .collect();
            if lower.is_empty() {
                continue;
            }
            let mut trial = node.clone();
            for v in &lower {
                trial.remove_pod(&v.key);
            }
            // Only resource and port conflicts are cured by removal here; pod-to-pod rules
            // would need the whole cluster state recomputed per candidate.
            if framework::filter(pod, &trial, None).is_some() {
                continue;
            }
            // Give back as many as possible, most important first.
            let mut sorted = lower;
            sorted.sort_by_key(|p| Reverse(p.priority));
            let mut victims = Vec::new();
            for v in sorted {
                trial.add_pod(v.clone());
                if framework::filter(pod, &trial, None).is_some() {
                    trial.remove_pod(&v.key);
                    victims.push(v);
                }
            }
            let top = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
            let better = match &best {
                None => true,
                Some((p, n, _, _)) => (top, victims.len()) < (*p, *n),
            };
            if better {
                best = Some((top, victims.len(), node.name.clone(), victims));
            }
        }
        let (_, _, node, victims) = best?;
        Some((node, victims))
    }
}
