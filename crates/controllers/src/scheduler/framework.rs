//! The scheduler's pure logic: what a pod asks for ([`PodInfo`]), what a node has and holds
//! ([`NodeInfo`]), the filters that rule nodes out with upstream's reasons, and the scores
//! that rank the rest. No I/O here; `mod.rs` feeds it from the informers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PodAffinityTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cached_pod::CachedPod;
use crate::quantity::{bytes, millicores};
use crate::selectors::{Labels, label_selector_matches, node_selector_term_matches, untolerated};

/// Resources, in the units the scheduler compares: CPU in millicores, the rest in bytes
/// or counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes of ephemeral storage.
    pub ephemeral_storage: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`…).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn from_map(
        map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let mut out = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            match name.as_str() {
                "cpu" => out.cpu = millicores(q).unwrap_or(0),
                "memory" => out.memory = bytes(q).unwrap_or(0),
                "ephemeral-storage" => out.ephemeral_storage = bytes(q).unwrap_or(0),
                "pods" => {}
                other => {
                    out.scalar.insert(other.to_owned(), bytes(q).unwrap_or(0));
                }
            }
        }
        out
    }

    fn add(&mut self, other: &Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) += v;
        }
    }

    fn sub(&mut self, other: &Resources) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
    }

    fn max(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

/// What scoring assumes a container without requests uses (upstream's defaults), so that
/// request-less pods still spread.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// A pod's effective requests, as upstream computes them: the larger of the app containers
/// (with restartable init containers, "sidecars", which keep running) and each init
/// container in turn (with the sidecars started before it), plus the pod overhead.
/// The second value is the same with defaults for missing CPU and memory requests.
pub fn pod_requests(pod: &CachedPod) -> (Resources, (i64, i64)) {
    let Some(spec) = &pod.spec else { return (Resources::default(), (0, 0)) };
    let mut app = Resources::default();
    let mut nonzero = (0, 0);
    let requests_of = |c: &crate::cached_pod::CachedContainer| {
        Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    for c in &spec.containers {
        let r = requests_of(c);
        nonzero.0 += if r.cpu == 0 { DEFAULT_MILLI_CPU } else { r.cpu };
        nonzero.1 += if r.memory == 0 { DEFAULT_MEMORY } else { r.memory };
        app.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = requests_of(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_peak.max(&sidecars);
        } else {
            let mut during = sidecars.clone();
            during.add(&r);
            init_peak.max(&during);
        }
    }
    app.add(&sidecars);
    app.max(&init_peak);
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_map(Some(overhead));
        app.add(&o);
        nonzero.0 += o.cpu;
        nonzero.1 += o.memory;
    }
    (app, nonzero)
}

/// Which namespaces an affinity term looks at.
#[derive(Debug, Clone)]
pub struct NamespaceSet {
    all: bool,
    names: HashSet<String>,
}

impl NamespaceSet {
    fn contains(&self, ns: &str) -> bool {
        self.all || self.names.contains(ns)
    }
}

/// An inter-pod (anti-)affinity term with its namespaces resolved.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    selector: LabelSelector,
    namespaces: NamespaceSet,
    /// The node label whose values are the domains (`kubernetes.io/hostname`, a zone…).
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(
        term: &PodAffinityTerm,
        own_namespace: &str,
        namespace_labels: &HashMap<String, Labels>,
    ) -> AffinityTerm {
        let mut names: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let mut all = false;
        match &term.namespace_selector {
            Some(sel) if crate::selectors::is_empty_selector(sel) => all = true,
            Some(sel) => {
                for (ns, labels) in namespace_labels {
                    if label_selector_matches(sel, labels) {
                        names.insert(ns.clone());
                    }
                }
            }
            None if names.is_empty() => {
                names.insert(own_namespace.to_owned());
            }
            None => {}
        }
        AffinityTerm {
            // A term without a selector matches no pod.
            selector: term.label_selector.clone().unwrap_or(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "krust.io/never".into(),
                        operator: "In".into(),
                        values: Some(Vec::new()),
                    },
                ]),
            }),
            namespaces: NamespaceSet { all, names },
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether the term selects `pod`.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        self.namespaces.contains(&pod.namespace)
            && label_selector_matches(&self.selector, pod.labels())
    }
}

/// A topology spread constraint, resolved.
#[derive(Debug, Clone)]
pub struct SpreadConstraint {
    max_skew: i64,
    topology_key: String,
    hard: bool,
    selector: LabelSelector,
    min_domains: i64,
    honor_node_affinity: bool,
    honor_taints: bool,
}

/// What the scheduler reads of a pod, computed once per pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// The pod.
    pub pod: Arc<CachedPod>,
    /// Its namespace.
    pub namespace: String,
    /// Effective requests.
    pub requests: Resources,
    /// Requests with defaults for scoring (millicores, bytes).
    pub nonzero: (i64, i64),
    /// (host IP, protocol, port) of each host port.
    pub host_ports: Vec<(String, String, i32)>,
    /// `spec.priority`.
    pub priority: i32,
    /// Required pod affinity terms.
    pub affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms with their weights (negative for anti-affinity).
    pub preferred: Vec<(i32, AffinityTerm)>,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// Container images.
    pub images: Vec<String>,
}

impl PodInfo {
    /// Computes what the scheduler needs of `pod`.
    pub fn new(pod: Arc<CachedPod>, namespace_labels: &HashMap<String, Labels>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (requests, nonzero) = pod_requests(&pod);
        let spec = pod.spec.as_ref();
        let mut host_ports = Vec::new();
        let mut images = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            images.push(c.image.clone().unwrap_or_default());
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                    host_ports.push((
                        p.host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        hp,
                    ));
                }
            }
        }
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let term = |t: &PodAffinityTerm| AffinityTerm::new(t, &namespace, namespace_labels);
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let mut preferred = Vec::new();
        for w in pod_affinity
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            preferred.push((w.weight, term(&w.pod_affinity_term)));
        }
        for w in pod_anti
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            preferred.push((-w.weight, term(&w.pod_affinity_term)));
        }
        let spread = spec
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .into_iter()
            .flatten()
            .map(|c| SpreadConstraint {
                max_skew: i64::from(c.max_skew.max(1)),
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                selector: c.label_selector.clone().unwrap_or_default(),
                min_domains: i64::from(c.min_domains.unwrap_or(1).max(1)),
                honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            })
            .collect();
        PodInfo {
            key: format!("{namespace}/{name}"),
            requests,
            nonzero,
            host_ports,
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            affinity: pod_affinity
                .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .map(term)
                .collect(),
            anti_affinity: pod_anti
                .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .map(term)
                .collect(),
            preferred,
            spread,
            images,
            namespace,
            pod,
        }
    }

    /// The pod's labels (read from the pod: a copy per placed pod would cost memory).
    pub fn labels(&self) -> &Labels {
        static EMPTY: Labels = Labels::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    fn tolerations(&self) -> &[Toleration] {
        self.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
    }

    /// Whether the pod's nodeSelector and required node affinity admit a node.
    pub fn fits_node_affinity(&self, node: &NodeInfo) -> bool {
        let Some(spec) = self.pod.spec.as_ref() else { return true };
        if let Some(selector) = &spec.node_selector
            && !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return false;
        }
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
        match required {
            Some(r) => r
                .node_selector_terms
                .iter()
                .any(|t| node_selector_term_matches(t, &node.name, &node.labels)),
            None => true,
        }
    }
}

/// A node as the scheduler sees it: what it offers and what its pods (bound or assumed)
/// take.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// Allocatable pod count.
    pub allowed_pods: i64,
    /// Sum of the requests of the pods on it.
    pub requested: Resources,
    /// The same with scoring defaults.
    pub nonzero_requested: (i64, i64),
    /// Its pods, by key.
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// Host ports in use.
    pub host_ports: Vec<(String, String, i32)>,
    /// Image names → size in bytes.
    pub images: HashMap<String, i64>,
}

/// The scheduler's nodes: a dense vector, which the filter walks in order (5,000 nodes stay
/// in cache where a map's scattered entries missed it at every step), and an index by name.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
}

impl NodeTable {
    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes in their stable order.
    pub fn as_slice(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// The node named `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.index.get(name).map(|&i| &mut self.nodes[i])
    }

    /// Adds a node not yet in the table (a known name replaces it in place).
    pub fn insert(&mut self, node: NodeInfo) {
        match self.index.get(&node.name) {
            Some(&i) => self.nodes[i] = node,
            None => {
                self.index.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(node);
            }
        }
    }

    /// Removes the node named `name`; the last node takes its place.
    pub fn remove(&mut self, name: &str) -> Option<NodeInfo> {
        let i = self.index.remove(name)?;
        let removed = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        Some(removed)
    }
}

impl FromIterator<NodeInfo> for NodeTable {
    fn from_iter<I: IntoIterator<Item = NodeInfo>>(iter: I) -> Self {
        let mut table = NodeTable::default();
        for node in iter {
            table.insert(node);
        }
        table
    }
}

impl NodeInfo {
    /// A node with no pods yet.
    pub fn new(node: &Node) -> NodeInfo {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let allowed_pods = allocatable.and_then(|a| a.get("pods")).and_then(bytes).unwrap_or(110);
        let mut images = HashMap::new();
        for image in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for name in image.names.iter().flatten() {
                images.insert(name.clone(), image.size_bytes.unwrap_or(0));
            }
        }
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable: Resources::from_map(allocatable),
            allowed_pods,
            requested: Resources::default(),
            nonzero_requested: (0, 0),
            pods: HashMap::new(),
            host_ports: Vec::new(),
            images,
        }
    }

    /// Takes over the pods of `old` (the same node before an update).
    pub fn adopt_pods(&mut self, old: NodeInfo) {
        for (_, pod) in old.pods {
            self.add_pod(pod);
        }
    }

    /// Counts a pod on this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        if let Some(old) = self.pods.remove(&pod.key) {
            self.account(&old, false);
        }
        self.account(&pod, true);
        self.pods.insert(pod.key.clone(), pod);
    }

    /// Stops counting a pod.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.account(&old, false);
        Some(old)
    }

    fn account(&mut self, pod: &PodInfo, add: bool) {
        if add {
            self.requested.add(&pod.requests);
            self.nonzero_requested.0 += pod.nonzero.0;
            self.nonzero_requested.1 += pod.nonzero.1;
            self.host_ports.extend(pod.host_ports.iter().cloned());
        } else {
            self.requested.sub(&pod.requests);
            self.nonzero_requested.0 -= pod.nonzero.0;
            self.nonzero_requested.1 -= pod.nonzero.1;
            for hp in &pod.host_ports {
                if let Some(i) = self.host_ports.iter().position(|h| h == hp) {
                    self.host_ports.swap_remove(i);
                }
            }
        }
    }
}

/// The only nodes a pod may go to when its required node affinity names them (every term
/// has a `metadata.name In [...]` field requirement, as a DaemonSet's pods do): upstream's
/// NodeAffinity PreFilter result, which spares examining every other node.
pub fn named_nodes(pod: &CachedPod) -> Option<Vec<&str>> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let mut names: Vec<&str> = Vec::new();
    for term in terms {
        let named = term
            .match_fields
            .iter()
            .flatten()
            .find(|f| f.key == "metadata.name" && f.operator == "In")?;
        names.extend(named.values.iter().flatten().map(String::as_str));
    }
    (!terms.is_empty()).then_some(names)
}

/// Why a node was ruled out, in upstream's words (counted per reason in the
/// FailedScheduling message).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unfit {
    /// `spec.unschedulable` (cordoned).
    Unschedulable,
    /// Not enough of a resource.
    Insufficient(String),
    /// Pod count at allocatable.
    TooManyPods,
    /// nodeSelector or required node affinity.
    NodeAffinity,
    /// A NoSchedule/NoExecute taint not tolerated (key, value).
    Taint(String, String),
    /// Host port taken.
    Ports,
    /// Required pod affinity unmet.
    PodAffinity,
    /// Required pod anti-affinity unmet.
    PodAntiAffinity,
    /// An existing pod's anti-affinity forbids it.
    ExistingAntiAffinity,
    /// Topology spread constraint.
    Spread,
    /// Topology spread: the node lacks the topology label.
    SpreadMissingLabel,
    /// A bound claim's volume does not accept the node.
    VolumeNodeAffinityConflict,
    /// A bound claim's volume is labelled with zones (or regions) the node is not in.
    VolumeZoneConflict,
    /// An unbound claim finds no volume, nor room to provision one, on the node.
    VolumeBindingNoMatch,
}

impl Unfit {
    /// Upstream's text for the reason.
    pub fn message(&self) -> String {
        match self {
            Unfit::Unschedulable => "node(s) were unschedulable".into(),
            Unfit::Insufficient(r) => format!("Insufficient {r}"),
            Unfit::TooManyPods => "Too many pods".into(),
            Unfit::NodeAffinity => "node(s) didn't match Pod's node affinity/selector".into(),
            Unfit::Taint(k, v) => format!("node(s) had untolerated taint {{{k}: {v}}}"),
            Unfit::Ports => "node(s) didn't have free ports for the requested pod ports".into(),
            Unfit::PodAffinity => "node(s) didn't match pod affinity rules".into(),
            Unfit::PodAntiAffinity => "node(s) didn't match pod anti-affinity rules".into(),
            Unfit::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing pods anti-affinity rules".into()
            }
            Unfit::Spread => "node(s) didn't match pod topology spread constraints".into(),
            Unfit::SpreadMissingLabel => {
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into()
            }
            Unfit::VolumeNodeAffinityConflict => "node(s) had volume node affinity conflict".into(),
            Unfit::VolumeZoneConflict => "node(s) had no available volume zone".into(),
            Unfit::VolumeBindingNoMatch => {
                "node(s) didn't find available persistent volumes to bind".into()
            }
        }
    }

    /// Whether removing pods from the node could cure it (what preemption may try).
    pub fn preemption_may_help(&self) -> bool {
        matches!(
            self,
            Unfit::Insufficient(_)
                | Unfit::TooManyPods
                | Unfit::Ports
                | Unfit::PodAntiAffinity
                | Unfit::ExistingAntiAffinity
        )
    }
}

/// Facts about the whole cluster one scheduling attempt needs for pod-to-pod rules,
/// computed once per attempt (and only when the pod or some placed pod has such rules).
#[derive(Debug, Default)]
pub struct ClusterState {
    /// For each of the pod's required affinity terms: the domains (topology values) that
    /// hold a matching pod; and whether any pod anywhere matches it.
    affinity_domains: Vec<(HashSet<String>, bool)>,
    /// For each required anti-affinity term: domains that hold a matching pod.
    anti_domains: Vec<HashSet<String>>,
    /// (topology key, value) pairs that placed pods' anti-affinity forbids for this pod.
    forbidden: HashSet<(String, String)>,
    /// Per spread constraint: matching pods per domain, and the eligible domains.
    spread_counts: Vec<HashMap<String, i64>>,
    /// Preferred terms: (topology key, value) → summed weight.
    preferred: HashMap<(String, String), i64>,
}

impl ClusterState {
    /// Computes what `pod`'s rules need from the placed pods of `nodes` (by name) and the
    /// placed pods that carry required anti-affinity (with their node names).
    pub fn new<'a>(
        pod: &PodInfo,
        nodes: &NodeTable,
        anti_affinity_pods: impl Iterator<Item = &'a (Arc<PodInfo>, String)>,
    ) -> ClusterState {
        let mut state = ClusterState {
            affinity_domains: vec![(HashSet::new(), false); pod.affinity.len()],
            anti_domains: vec![HashSet::new(); pod.anti_affinity.len()],
            spread_counts: vec![HashMap::new(); pod.spread.len()],
            ..ClusterState::default()
        };
        let needs_scan =
            !pod.affinity.is_empty() || !pod.anti_affinity.is_empty() || !pod.preferred.is_empty();
        if needs_scan {
            for node in nodes.as_slice() {
                for other in node.pods.values() {
                    for (i, term) in pod.affinity.iter().enumerate() {
                        if term.matches(other) {
                            state.affinity_domains[i].1 = true;
                            if let Some(v) = node.labels.get(&term.topology_key) {
                                state.affinity_domains[i].0.insert(v.clone());
                            }
                        }
                    }
                    for (i, term) in pod.anti_affinity.iter().enumerate() {
                        if term.matches(other)
                            && let Some(v) = node.labels.get(&term.topology_key)
                        {
                            state.anti_domains[i].insert(v.clone());
                        }
                    }
                    for (weight, term) in &pod.preferred {
                        if term.matches(other)
                            && let Some(v) = node.labels.get(&term.topology_key)
                        {
                            *state
                                .preferred
                                .entry((term.topology_key.clone(), v.clone()))
                                .or_insert(0) += i64::from(*weight);
                        }
                    }
                }
            }
        }
        // Placed pods whose required anti-affinity selects this pod keep it out of their
        // domains.
        for (other, node_name) in anti_affinity_pods {
            for term in &other.anti_affinity {
                if term.matches(pod)
                    && let Some(v) =
                        nodes.get(node_name).and_then(|n| n.labels.get(&term.topology_key))
                {
                    state.forbidden.insert((term.topology_key.clone(), v.clone()));
                }
            }
        }
        for (i, c) in pod.spread.iter().enumerate() {
            let counts = &mut state.spread_counts[i];
            for node in nodes.as_slice() {
                let Some(domain) = node.labels.get(&c.topology_key) else { continue };
                if c.honor_node_affinity && !pod.fits_node_affinity(node) {
                    continue;
                }
                if c.honor_taints
                    && untolerated(&node.taints, pod.tolerations(), &["NoSchedule", "NoExecute"])
                        .is_some()
                {
                    continue;
                }
                let n = node
                    .pods
                    .values()
                    .filter(|p| {
                        p.namespace == pod.namespace
                            && label_selector_matches(&c.selector, p.labels())
                    })
                    .count() as i64;
                *counts.entry(domain.clone()).or_insert(0) += n;
            }
        }
        state
    }
}

/// Runs every filter for `pod` on `node`; the first reason that rules it out.
pub fn filter(pod: &PodInfo, node: &NodeInfo, cluster: Option<&ClusterState>) -> Option<Unfit> {
    let tolerations = pod.tolerations();
    if node.unschedulable
        && !tolerations.iter().any(|t| {
            crate::selectors::tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    value: None,
                    time_added: None,
                },
            )
        })
    {
        return Some(Unfit::Unschedulable);
    }
    if !pod.fits_node_affinity(node) {
        return Some(Unfit::NodeAffinity);
    }
    if let Some(t) = untolerated(&node.taints, tolerations, &["NoSchedule", "NoExecute"]) {
        return Some(Unfit::Taint(t.key.clone(), t.value.clone().unwrap_or_default()));
    }
    if let Some(unfit) = fits_resources(pod, node) {
        return Some(unfit);
    }
    if ports_conflict(pod, node) {
        return Some(Unfit::Ports);
    }
    let cluster = cluster?;
    for (i, term) in pod.affinity.iter().enumerate() {
        let (domains, any) = &cluster.affinity_domains[i];
        let here = node.labels.get(&term.topology_key);
        let ok = match here {
            None => false,
            Some(v) if domains.contains(v) => true,
            // The first pod of a group that selects itself may go anywhere with the label.
            Some(_) => !*any && term.matches(pod),
        };
        if !ok {
            return Some(Unfit::PodAffinity);
        }
    }
    for (i, term) in pod.anti_affinity.iter().enumerate() {
        if let Some(v) = node.labels.get(&term.topology_key)
            && cluster.anti_domains[i].contains(v)
        {
            return Some(Unfit::PodAntiAffinity);
        }
    }
    if cluster.forbidden.iter().any(|(k, v)| node.labels.get(k) == Some(v)) {
        return Some(Unfit::ExistingAntiAffinity);
    }
    for (i, c) in pod.spread.iter().enumerate().filter(|(_, c)| c.hard) {
        let Some(domain) = node.labels.get(&c.topology_key) else {
            return Some(Unfit::SpreadMissingLabel);
        };
        let counts = &cluster.spread_counts[i];
        let global_min = if (counts.len() as i64) < c.min_domains {
            0
        } else {
            counts.values().copied().min().unwrap_or(0)
        };
        let self_match = i64::from(label_selector_matches(&c.selector, pod.labels()));
        let here = counts.get(domain).copied().unwrap_or(0);
        if here + self_match - global_min > c.max_skew {
            return Some(Unfit::Spread);
        }
    }
    None
}

/// Whether a host port `pod` wants is taken on `node`.
fn ports_conflict(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.host_ports.iter().any(|(ip, proto, port)| {
        node.host_ports.iter().any(|(ip2, proto2, port2)| {
            port == port2 && proto == proto2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    })
}

/// Whether `pod` still fits on `node` once the pods preemption nominated to it are counted
/// as if already there, those of at least `pod`'s priority: the room their victims free is
/// held for them, not taken by a less important pod meanwhile (upstream runs its filters
/// with the nominated pods added).
pub fn fits_with_nominated<'a>(
    pod: &PodInfo,
    node: &NodeInfo,
    nominated: impl IntoIterator<Item = &'a Arc<PodInfo>>,
) -> Option<Unfit> {
    let mut trial: Option<NodeInfo> = None;
    for other in nominated {
        if other.key == pod.key || other.priority < pod.priority {
            continue;
        }
        trial.get_or_insert_with(|| node.clone()).add_pod(other.clone());
    }
    let trial = trial?;
    fits_resources(pod, &trial).or_else(|| ports_conflict(pod, &trial).then_some(Unfit::Ports))
}

/// The resource fit filter alone (preemption re-runs it with victims removed).
pub fn fits_resources(pod: &PodInfo, node: &NodeInfo) -> Option<Unfit> {
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        return Some(Unfit::TooManyPods);
    }
    let r = &pod.requests;
    let (a, used) = (&node.allocatable, &node.requested);
    if r.cpu > 0 && used.cpu + r.cpu > a.cpu {
        return Some(Unfit::Insufficient("cpu".into()));
    }
    if r.memory > 0 && used.memory + r.memory > a.memory {
        return Some(Unfit::Insufficient("memory".into()));
    }
    if r.ephemeral_storage > 0 && used.ephemeral_storage + r.ephemeral_storage > a.ephemeral_storage
    {
        return Some(Unfit::Insufficient("ephemeral-storage".into()));
    }
    for (name, want) in r.scalar.iter().filter(|(_, v)| **v > 0) {
        let have = a.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        if taken + want > have {
            return Some(Unfit::Insufficient(name.clone()));
        }
    }
    None
}

/// How resource use is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResourceStrategy {
    /// Prefer the emptiest node (spread; upstream's default).
    #[default]
    LeastAllocated,
    /// Prefer the fullest node that fits (bin-packing).
    MostAllocated,
}

/// The weight of each score (upstream's default plugin weights).
pub mod weights {
    /// TaintToleration: fewer untolerated PreferNoSchedule taints.
    pub const TAINT_TOLERATION: i64 = 3;
    /// NodeAffinity: preferred node affinity terms.
    pub const NODE_AFFINITY: i64 = 2;
    /// PodTopologySpread: soft spread constraints.
    pub const TOPOLOGY_SPREAD: i64 = 2;
    /// InterPodAffinity: preferred pod (anti-)affinity.
    pub const INTER_POD_AFFINITY: i64 = 2;
    /// NodeResourcesFit: least- or most-allocated.
    pub const RESOURCES_FIT: i64 = 1;
    /// NodeResourcesBalancedAllocation: CPU and memory used in the same proportion.
    pub const BALANCED_ALLOCATION: i64 = 1;
    /// ImageLocality: the pod's images already on the node.
    pub const IMAGE_LOCALITY: i64 = 1;
}

const MAX_SCORE: i64 = 100;

/// Scores the feasible nodes (same order as given); higher is better.
pub fn score(
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    cluster: Option<&ClusterState>,
    strategy: ResourceStrategy,
    image_spread: &dyn Fn(&str) -> f64,
) -> Vec<i64> {
    let n = nodes.len();
    let mut total = vec![0i64; n];
    // Resource fit and balance, each already 0..100.
    for (i, node) in nodes.iter().enumerate() {
        let cpu_cap = node.allocatable.cpu.max(1);
        let mem_cap = node.allocatable.memory.max(1);
        let cpu_used = (node.nonzero_requested.0 + pod.nonzero.0).min(cpu_cap);
        let mem_used = (node.nonzero_requested.1 + pod.nonzero.1).min(mem_cap);
        let fit = match strategy {
            ResourceStrategy::LeastAllocated => {
                ((cpu_cap - cpu_used) * MAX_SCORE / cpu_cap
                    + (mem_cap - mem_used) * MAX_SCORE / mem_cap)
                    / 2
            }
            ResourceStrategy::MostAllocated => {
                (cpu_used * MAX_SCORE / cpu_cap + mem_used * MAX_SCORE / mem_cap) / 2
            }
        };
        let (fc, fm) = (cpu_used as f64 / cpu_cap as f64, mem_used as f64 / mem_cap as f64);
        let balanced = ((1.0 - (fc - fm).abs() / 2.0) * MAX_SCORE as f64) as i64;
        total[i] += fit * weights::RESOURCES_FIT + balanced * weights::BALANCED_ALLOCATION;
    }
    // Image locality: bytes of the pod's images present, discounted when few nodes have them.
    const MIN_IMAGE: f64 = 23.0 * 1024.0 * 1024.0;
    let max_image = 1000.0 * 1024.0 * 1024.0 * pod.images.len().max(1) as f64;
    for (i, node) in nodes.iter().enumerate() {
        let sum: f64 = pod
            .images
            .iter()
            .filter_map(|image| {
                node.images.get(image).map(|size| *size as f64 * image_spread(image))
            })
            .sum();
        let s = if sum <= MIN_IMAGE {
            0.0
        } else {
            ((sum.min(max_image) - MIN_IMAGE) / (max_image - MIN_IMAGE)) * MAX_SCORE as f64
        };
        total[i] += s as i64 * weights::IMAGE_LOCALITY;
    }
    // Preferred node affinity, normalized to the best node.
    let preferred_nodes = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref());
    if let Some(terms) = preferred_nodes {
        let raw: Vec<i64> = nodes
            .iter()
            .map(|node| {
                terms
                    .iter()
                    .filter(|t| node_selector_term_matches(&t.preference, &node.name, &node.labels))
                    .map(|t| i64::from(t.weight))
                    .sum()
            })
            .collect();
        add_normalized(&mut total, &raw, weights::NODE_AFFINITY, false);
    }
    // Fewer untolerated PreferNoSchedule taints is better.
    let tolerations = pod.tolerations();
    let raw: Vec<i64> = nodes
        .iter()
        .map(|node| {
            node.taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !tolerations.iter().any(|tol| crate::selectors::tolerates(tol, t)))
                .count() as i64
        })
        .collect();
    add_normalized(&mut total, &raw, weights::TAINT_TOLERATION, true);
    if let Some(cluster) = cluster {
        if !cluster.preferred.is_empty() {
            let raw: Vec<i64> = nodes
                .iter()
                .map(|node| {
                    cluster
                        .preferred
                        .iter()
                        .filter(|((k, v), _)| node.labels.get(k) == Some(v))
                        .map(|(_, w)| *w)
                        .sum()
                })
                .collect();
            add_normalized(&mut total, &raw, weights::INTER_POD_AFFINITY, false);
        }
        for (i, c) in pod.spread.iter().enumerate().filter(|(_, c)| !c.hard) {
            let counts = &cluster.spread_counts[i];
            let raw: Vec<i64> = nodes
                .iter()
                .map(|node| {
                    node.labels
                        .get(&c.topology_key)
                        .and_then(|d| counts.get(d))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            add_normalized(&mut total, &raw, weights::TOPOLOGY_SPREAD, true);
        }
    }
    total
}

/// Scales raw values to 0..100 against the largest (or reversed: smallest is best) and
/// adds them with `weight`.
fn add_normalized(total: &mut [i64], raw: &[i64], weight: i64, reverse: bool) {
    let min = raw.iter().copied().min().unwrap_or(0);
    let max = raw.iter().copied().max().unwrap_or(0);
    if max == min {
        return;
    }
    for (t, r) in total.iter_mut().zip(raw) {
        let s = (r - min) * MAX_SCORE / (max - min);
        *t += weight * if reverse { MAX_SCORE - s } else { s };
    }
}

/// "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}."
pub fn unschedulable_message(total: usize, reasons: &HashMap<Unfit, usize>) -> String {
    let mut parts: Vec<String> =
        reasons.iter().map(|(r, n)| format!("{n} {}", r.message())).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn pods_pinned_by_name_name_their_nodes() {
        let pinned: CachedPod = serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}]}}}}}))
        .expect("a pod");
        assert_eq!(named_nodes(&pinned), Some(vec!["n7"]));
        let labelled: CachedPod = serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}}))
        .expect("a pod");
        assert_eq!(named_nodes(&labelled), None);
    }

    fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs.iter().map(|(k, v)| ((*k).into(), Quantity((*v).into()))).collect()
    }

    fn container(cpu: &str, memory: &str) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(quantities(&[("cpu", cpu), ("memory", memory)])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    pub(crate) fn node(
        name: &str,
        cpu: &str,
        labels: &[(&str, &str)],
        taints: Vec<Taint>,
    ) -> NodeInfo {
        NodeInfo::new(&Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec { taints: Some(taints), ..NodeSpec::default() }),
            status: Some(NodeStatus {
                allocatable: Some(quantities(&[("cpu", cpu), ("memory", "4Gi"), ("pods", "110")])),
                ..NodeStatus::default()
            }),
        })
    }

    fn pod(name: &str, spec: PodSpec) -> PodInfo {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        };
        PodInfo::new(Arc::new(CachedPod::from(&pod)), &HashMap::new())
    }

    #[test]
    fn node_table_keeps_its_index_true_when_a_node_is_removed() {
        let mut table: NodeTable =
            ["a", "b", "c"].into_iter().map(|n| node(n, "8", &[], vec![])).collect();
        assert!(table.remove("a").is_some());
        assert_eq!(table.len(), 2);
        assert!(table.get("a").is_none());
        assert_eq!(table.get("c").map(|n| n.name.as_str()), Some("c"));
        assert_eq!(table.get("b").map(|n| n.name.as_str()), Some("b"));
        // A known name is replaced in place.
        table.insert(node("b", "4", &[], vec![]));
        assert_eq!(table.len(), 2);
        assert!(table.remove("b").is_some() && table.remove("c").is_some());
        assert!(table.is_empty() && table.remove("c").is_none());
    }

    #[test]
    fn room_held_for_a_nominated_pod_is_kept_from_less_important_pods() {
        let spec = |priority| PodSpec {
            containers: vec![container("1", "100Mi")],
            priority: Some(priority),
            ..PodSpec::default()
        };
        let node = node("a", "2", &[], vec![]);
        let nominated = Arc::new(pod("preemptor", spec(100)));
        let held = [nominated.clone()];
        // The node has room for one more such pod with the nominated one counted in.
        let low = pod("low", spec(0));
        assert_eq!(filter(&low, &node, None), None);
        assert_eq!(fits_with_nominated(&low, &node, &held), None);
        let mut half_full = node.clone();
        half_full.add_pod(Arc::new(pod("running", spec(0))));
        assert_eq!(
            fits_with_nominated(&low, &half_full, &held),
            Some(Unfit::Insufficient("cpu".into()))
        );
        // A pod as important as the nominated one is held off too; a more important one
        // and the nominated pod itself are not.
        assert!(fits_with_nominated(&pod("peer", spec(100)), &half_full, &held).is_some());
        assert_eq!(fits_with_nominated(&pod("high", spec(200)), &half_full, &held), None);
        assert_eq!(fits_with_nominated(&nominated, &half_full, &held), None);
    }

    #[test]
    fn requests_count_init_containers_sidecars_and_overhead() {
        let mut sidecar = container("100m", "10Mi");
        sidecar.restart_policy = Some("Always".into());
        let spec = PodSpec {
            containers: vec![container("200m", "100Mi"), container("300m", "100Mi")],
            init_containers: Some(vec![sidecar, container("1", "50Mi")]),
            overhead: Some(quantities(&[("cpu", "10m")])),
            ..PodSpec::default()
        };
        let (r, _) = pod_requests(&CachedPod::from(&Pod { spec: Some(spec), ..Pod::default() }));
        // max(500m + 100m sidecar, 100m sidecar + 1000m init) + 10m overhead.
        assert_eq!(r.cpu, 1110);
        assert_eq!(r.memory, (210) << 20);
    }

    #[test]
    fn filters_give_upstream_reasons_and_message() {
        let big =
            pod("p", PodSpec { containers: vec![container("3", "1Gi")], ..PodSpec::default() });
        let small = node("a", "2", &[], vec![]);
        let tainted = node(
            "b",
            "8",
            &[],
            vec![Taint {
                key: "k".into(),
                value: Some("v".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
        );
        let fits = node("c", "8", &[], vec![]);
        assert_eq!(filter(&big, &small, None), Some(Unfit::Insufficient("cpu".into())));
        assert_eq!(filter(&big, &tainted, None), Some(Unfit::Taint("k".into(), "v".into())));
        assert_eq!(filter(&big, &fits, None), None);
        let mut reasons = HashMap::new();
        reasons.insert(Unfit::Insufficient("cpu".into()), 1);
        reasons.insert(Unfit::Taint("k".into(), "v".into()), 2);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}."
        );
    }

    #[test]
    fn anti_affinity_on_hostname_keeps_replicas_apart() {
        use k8s_openapi::api::core::v1::{Affinity, PodAntiAffinity};
        let anti = PodSpec {
            containers: vec![container("100m", "10Mi")],
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                                match_expressions: None,
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        };
        let mut a = node("a", "8", &[("kubernetes.io/hostname", "a")], vec![]);
        let b = node("b", "8", &[("kubernetes.io/hostname", "b")], vec![]);
        let first = Arc::new(pod("p1", anti.clone()));
        a.add_pod(first.clone());
        let second = pod("p2", anti);
        let nodes: NodeTable = [a.clone(), b.clone()].into_iter().collect();
        let state = ClusterState::new(&second, &nodes, [(first, "a".to_owned())].iter());
        assert_eq!(filter(&second, &a, Some(&state)), Some(Unfit::PodAntiAffinity));
        assert_eq!(filter(&second, &b, Some(&state)), None);
    }

    #[test]
    fn least_allocated_spreads_and_most_allocated_packs() {
        let p =
            pod("p", PodSpec { containers: vec![container("1", "100Mi")], ..PodSpec::default() });
        let mut busy = node("busy", "4", &[], vec![]);
        busy.add_pod(Arc::new(pod(
            "q",
            PodSpec { containers: vec![container("2", "1Gi")], ..PodSpec::default() },
        )));
        let idle = node("idle", "4", &[], vec![]);
        let none = |_: &str| 0.0;
        let least = score(&p, &[&busy, &idle], None, ResourceStrategy::LeastAllocated, &none);
        assert!(least[1] > least[0], "{least:?}");
        let most = score(&p, &[&busy, &idle], None, ResourceStrategy::MostAllocated, &none);
        assert!(most[0] > most[1], "{most:?}");
    }
}
