//! The Node authorizer, as upstream's: a node agent (user `system:node:<name>` in group
//! `system:nodes`) may read a Secret, ConfigMap, PersistentVolumeClaim or PersistentVolume,
//! or ask for a ServiceAccount's token, only when a pod bound to its node refers to it; it
//! may touch only its own Lease and CSINode; everything else it asks is checked against
//! upstream's node rules (the `system:node` role). What it does not allow, it leaves to RBAC.
//!
//! Which objects a node's pods refer to comes from a graph of pods and claims kept in memory
//! by a watch of the store, as RBAC's index is, so a decision needs no IO. What a node may
//! *write* to the objects it may reach (only its own Node, its own pods' status) is the
//! NodeRestriction admission plugin's part.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use storage::{EventKind, RangeRequest, Revision, SharedStore};

use crate::auth::{Attributes, Authorizer, Decision, Rules, UserInfo};
use crate::rbac::Rbac;
use crate::rbac::rule::Rule;

/// The group every node agent is in.
pub const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
const PODS: &str = "/registry/core/pods/";
const CLAIMS: &str = "/registry/core/persistentvolumeclaims/";

/// The node a user is, if it is a node agent.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// What one pod refers to, read from its stored JSON (only these fields are decoded).
#[derive(Debug, Default, Deserialize)]
struct PodDoc {
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: String,
    #[serde(default)]
    service_account_name: String,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    init_containers: Vec<Container>,
    #[serde(default)]
    ephemeral_containers: Vec<Container>,
    #[serde(default)]
    image_pull_secrets: Vec<Named>,
}

#[derive(Debug, Default, Deserialize)]
struct Named {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    #[serde(default)]
    name: String,
    secret: Option<SecretVolume>,
    config_map: Option<Named>,
    persistent_volume_claim: Option<ClaimVolume>,
    ephemeral: Option<serde_json::Value>,
    projected: Option<Projected>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretVolume {
    #[serde(default)]
    secret_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimVolume {
    #[serde(default)]
    claim_name: String,
}

#[derive(Debug, Default, Deserialize)]
struct Projected {
    #[serde(default)]
    sources: Vec<ProjectedSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectedSource {
    secret: Option<Named>,
    config_map: Option<Named>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    env_from: Vec<EnvFrom>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    value_from: Option<EnvSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    secret_key_ref: Option<Named>,
    config_map_key_ref: Option<Named>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFrom {
    secret_ref: Option<Named>,
    config_map_ref: Option<Named>,
}

/// What a pod refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    /// The node it is bound to ("" while unscheduled).
    pub node: String,
    /// Its namespace.
    pub namespace: String,
    /// Its ServiceAccount.
    pub service_account: String,
    /// Secrets, by name.
    pub secrets: Vec<String>,
    /// ConfigMaps, by name.
    pub config_maps: Vec<String>,
    /// PersistentVolumeClaims, by name.
    pub claims: Vec<String>,
}

impl PodRefs {
    /// Reads a stored pod (`name` for its generic ephemeral volumes' claim names).
    pub fn from_json(bytes: &[u8], namespace: &str, name: &str) -> Option<PodRefs> {
        let doc: PodDoc = serde_json::from_slice(bytes).ok()?;
        let spec = doc.spec;
        let mut refs = PodRefs {
            node: spec.node_name,
            namespace: namespace.to_owned(),
            service_account: match spec.service_account_name.as_str() {
                "" => "default".to_owned(),
                sa => sa.to_owned(),
            },
            ..PodRefs::default()
        };
        refs.secrets.extend(spec.image_pull_secrets.into_iter().map(|s| s.name));
        for volume in spec.volumes {
            if let Some(s) = volume.secret {
                refs.secrets.push(s.secret_name);
            }
            if let Some(c) = volume.config_map {
                refs.config_maps.push(c.name);
            }
            if let Some(c) = volume.persistent_volume_claim {
                refs.claims.push(c.claim_name);
            }
            if volume.ephemeral.is_some() {
                // A generic ephemeral volume's claim is named after the pod and the volume.
                refs.claims.push(format!("{name}-{}", volume.name));
            }
            for source in volume.projected.map(|p| p.sources).unwrap_or_default() {
                refs.secrets.extend(source.secret.map(|s| s.name));
                refs.config_maps.extend(source.config_map.map(|c| c.name));
            }
        }
        let containers = spec
            .containers
            .into_iter()
            .chain(spec.init_containers)
            .chain(spec.ephemeral_containers);
        for container in containers {
            for env in container.env {
                let Some(from) = env.value_from else { continue };
                refs.secrets.extend(from.secret_key_ref.map(|s| s.name));
                refs.config_maps.extend(from.config_map_key_ref.map(|c| c.name));
            }
            for from in container.env_from {
                refs.secrets.extend(from.secret_ref.map(|s| s.name));
                refs.config_maps.extend(from.config_map_ref.map(|c| c.name));
            }
        }
        for list in [&mut refs.secrets, &mut refs.config_maps, &mut refs.claims] {
            list.retain(|n| !n.is_empty());
            list.sort();
            list.dedup();
        }
        Some(refs)
    }
}

/// Pods by store key, and claims' volumes.
#[derive(Debug, Default)]
pub struct Graph {
    pods: HashMap<String, PodRefs>,
    /// For each node, how many of its pods refer to each (kind, namespace, name).
    by_node: HashMap<String, HashMap<(Kind, String, String), usize>>,
    /// Each claim's bound volume, by (namespace, name).
    claim_volumes: HashMap<(String, String), String>,
}

/// What a pod refers to, as the graph counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Secret.
    Secret,
    /// A ConfigMap.
    ConfigMap,
    /// A PersistentVolumeClaim.
    Claim,
    /// A ServiceAccount.
    ServiceAccount,
}

impl Graph {
    fn edges(refs: &PodRefs) -> impl Iterator<Item = (Kind, &String)> {
        refs.secrets
            .iter()
            .map(|n| (Kind::Secret, n))
            .chain(refs.config_maps.iter().map(|n| (Kind::ConfigMap, n)))
            .chain(refs.claims.iter().map(|n| (Kind::Claim, n)))
            .chain(std::iter::once((Kind::ServiceAccount, &refs.service_account)))
    }

    /// Records the pod stored at `key` (`None`: deleted).
    pub fn set_pod(&mut self, key: &str, refs: Option<PodRefs>) {
        if let Some(old) = self.pods.remove(key)
            && let Some(counts) = self.by_node.get_mut(&old.node)
        {
            for (kind, name) in Graph::edges(&old) {
                let edge = (kind, old.namespace.clone(), name.clone());
                if let Some(n) = counts.get_mut(&edge) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&edge);
                    }
                }
            }
            if counts.is_empty() {
                self.by_node.remove(&old.node);
            }
        }
        let Some(refs) = refs else { return };
        if !refs.node.is_empty() {
            let counts = self.by_node.entry(refs.node.clone()).or_default();
            for (kind, name) in Graph::edges(&refs) {
                *counts.entry((kind, refs.namespace.clone(), name.clone())).or_default() += 1;
            }
        }
        self.pods.insert(key.to_owned(), refs);
    }

    /// Records a claim's bound volume (`None`: deleted or unbound).
    pub fn set_claim(&mut self, namespace: &str, name: &str, volume: Option<String>) {
        let key = (namespace.to_owned(), name.to_owned());
        match volume.filter(|v| !v.is_empty()) {
            Some(v) => {
                self.claim_volumes.insert(key, v);
            }
            None => {
                self.claim_volumes.remove(&key);
            }
        }
    }

    /// Whether a pod bound to `node` refers to the object.
    pub fn related(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|c| c.contains_key(&(kind, namespace.to_owned(), name.to_owned())))
    }

    /// Whether a claim of a pod bound to `node` is bound to the volume `name`.
    pub fn volume_related(&self, node: &str, name: &str) -> bool {
        let Some(counts) = self.by_node.get(node) else { return false };
        counts.keys().any(|(kind, ns, claim)| {
            *kind == Kind::Claim
                && self.claim_volumes.get(&(ns.clone(), claim.clone())).is_some_and(|v| v == name)
        })
    }

    /// The pod at `namespace/name`, if stored.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodRefs> {
        self.pods.get(&format!("{PODS}{namespace}/{name}"))
    }
}

/// The Node authorizer, in front of RBAC.
pub struct NodeAuthorizer {
    graph: RwLock<Graph>,
    /// Upstream's node rules: what any node may do beyond the graph's objects.
    node_rules: Vec<Rule>,
    rbac: Arc<Rbac>,
}

impl std::fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthorizer").finish_non_exhaustive()
    }
}

/// Why a node is refused an object of the graph.
fn no_relationship(node: &str, attributes: &Attributes<'_>) -> String {
    let kind = match attributes.resource {
        "secrets" => "secret",
        "configmaps" => "configmap",
        "persistentvolumeclaims" => "persistentvolumeclaim",
        "persistentvolumes" => "persistentvolume",
        "serviceaccounts" => "serviceaccount",
        other => other,
    };
    format!(
        "no relationship found between node '{node}' and this object ({kind} '{}/{}')",
        attributes.namespace, attributes.name
    )
}

impl NodeAuthorizer {
    /// The Node authorizer, deferring to `rbac` for everyone else.
    pub fn new(rbac: Arc<Rbac>) -> NodeAuthorizer {
        let node_rules = crate::rbac::bootstrap::policy()
            .cluster_roles
            .iter()
            .find(|r| r.pointer("/metadata/name").and_then(|n| n.as_str()) == Some("system:node"))
            .map(Rule::list_from)
            .unwrap_or_default();
        NodeAuthorizer { graph: RwLock::default(), node_rules, rbac }
    }

    /// The graph, for NodeRestriction's checks.
    pub fn graph(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn graph_mut(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.graph.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node authorizer's own decision: `None` leaves the request to RBAC, with a reason.
    fn decide(&self, node: &str, attributes: &Attributes<'_>) -> Result<(), String> {
        let graph_object = |kind: Kind| {
            if attributes.name.is_empty() {
                return Err("can only read individual resources of this type".to_owned());
            }
            if self.graph().related(node, kind, attributes.namespace, attributes.name) {
                Ok(())
            } else {
                Err(no_relationship(node, attributes))
            }
        };
        let reads = matches!(attributes.verb, "get" | "list" | "watch");
        match (attributes.group, attributes.resource, attributes.subresource) {
            ("", "secrets" | "configmaps", "") if reads => {
                graph_object(match attributes.resource {
                    "secrets" => Kind::Secret,
                    _ => Kind::ConfigMap,
                })
            }
            ("", "secrets" | "configmaps", _) => {
                Err(format!("can only read {}", attributes.resource))
            }
            ("", "persistentvolumeclaims", "") if reads => graph_object(Kind::Claim),
            ("", "persistentvolumeclaims", "status")
                if matches!(attributes.verb, "update" | "patch") =>
            {
                graph_object(Kind::Claim)
            }
            ("", "persistentvolumeclaims", _) => {
                Err("can only read persistentvolumeclaims, or update their status".to_owned())
            }
            ("", "persistentvolumes", "") if reads && !attributes.name.is_empty() => {
                if self.graph().volume_related(node, attributes.name) {
                    Ok(())
                } else {
                    Err(no_relationship(node, attributes))
                }
            }
            // krust's local volumes: each agent lists and watches the volumes it holds (by
            // label; a volume object carries no secret), and lets go of deleted ones, which
            // NodeRestriction narrows to removing its own finalizer.
            ("", "persistentvolumes", "") if matches!(attributes.verb, "list" | "watch") => Ok(()),
            ("", "persistentvolumes", "")
                if attributes.verb == "update" && !attributes.name.is_empty() =>
            {
                Ok(())
            }
            ("", "persistentvolumes", _) => Err("can only read persistentvolumes".to_owned()),
            ("", "serviceaccounts", "token") if attributes.verb == "create" => {
                graph_object(Kind::ServiceAccount)
            }
            ("", "serviceaccounts", "token") => {
                Err("can only create tokens for individual service accounts".to_owned())
            }
            ("coordination.k8s.io", "leases", "") => {
                let own = attributes.namespace == "kube-node-lease"
                    && (attributes.name == node
                        || (attributes.name.is_empty() && attributes.verb == "create"));
                let verb =
                    matches!(attributes.verb, "get" | "create" | "update" | "patch" | "delete");
                if own && verb {
                    Ok(())
                } else {
                    Err("can only access node lease with the same name as the requesting node"
                        .to_owned())
                }
            }
            // krust's local volumes: each agent publishes the free space of its storage
            // path as the CSIStorageCapacity `kube-system/local-path-<node>`, which
            // NodeRestriction holds to its own node's topology.
            ("storage.k8s.io", "csistoragecapacities", "") => {
                let own = attributes.namespace == "kube-system"
                    && (attributes.name == format!("local-path-{node}")
                        || (attributes.name.is_empty() && attributes.verb == "create"));
                let verb = matches!(attributes.verb, "get" | "create" | "update" | "patch");
                if own && verb {
                    Ok(())
                } else {
                    Err("can only access the CSIStorageCapacity local-path-<node> of the requesting node in kube-system".to_owned())
                }
            }
            ("storage.k8s.io", "csinodes", "") => {
                let own = attributes.name == node
                    || (attributes.name.is_empty() && attributes.verb == "create");
                if own {
                    Ok(())
                } else {
                    Err("can only access CSINode with the same name as the requesting node"
                        .to_owned())
                }
            }
            _ => {
                if self.node_rules.iter().any(|r| r.allows(attributes)) {
                    Ok(())
                } else {
                    Err(String::new())
                }
            }
        }
    }

    /// Loads every pod and claim; returns the revision read.
    pub async fn load(&self, store: &SharedStore) -> Result<Revision, storage::Error> {
        let pods = store.range(RangeRequest::prefix(PODS)).await?;
        let claims = store.range(RangeRequest::prefix(CLAIMS)).await?;
        let mut graph = Graph::default();
        for kv in &pods.kvs {
            apply_pod(&mut graph, &kv.key, Some(&kv.value));
        }
        for kv in &claims.kvs {
            apply_claim(&mut graph, &kv.key, Some(&kv.value));
        }
        *self.graph_mut() = graph;
        Ok(pods.revision.min(claims.revision))
    }

    /// Keeps the graph current from `revision` on; reloads when a watch cannot continue.
    pub async fn follow(self: Arc<Self>, store: SharedStore, revision: Revision) {
        let apply = |events: &[storage::Event]| {
            let mut graph = self.graph_mut();
            for event in events {
                let value = match event.kind {
                    EventKind::Put => Some(&event.kv.value[..]),
                    EventKind::Delete => None,
                };
                if event.kv.key.starts_with(PODS) {
                    apply_pod(&mut graph, &event.kv.key, value);
                } else {
                    apply_claim(&mut graph, &event.kv.key, value);
                }
            }
        };
        let reload = || {
            let (this, store) = (self.clone(), store.clone());
            async move { this.load(&store).await }
        };
        crate::follow::follow(
            store.clone(),
            &[PODS, CLAIMS],
            "node authorizer",
            revision,
            apply,
            reload,
        )
        .await;
    }
}

fn split_key<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn apply_pod(graph: &mut Graph, key: &str, value: Option<&[u8]>) {
    let Some((namespace, name)) = split_key(key, PODS) else { return };
    if let Some(bytes) = value {
        // Every pod write passes here (status updates above all), so decoding is saved
        // where it cannot change the graph: what a bound pod refers to is immutable (only
        // ephemeral containers can be added), and an unbound pod grants no node anything.
        // (In stored JSON a key is `"nodeName":"`; inside a string value it would be
        // escaped.)
        let known_bound = graph.pods.get(key).is_some_and(|p| !p.node.is_empty());
        if known_bound && !contains(bytes, b"\"ephemeralContainers\"") {
            return;
        }
        if !contains(bytes, b"\"nodeName\":\"") {
            graph.set_pod(key, None);
            return;
        }
    }
    let refs = value.and_then(|v| PodRefs::from_json(v, namespace, name));
    graph.set_pod(key, refs);
}

fn apply_claim(graph: &mut Graph, key: &str, value: Option<&[u8]>) {
    let Some((namespace, name)) = split_key(key, CLAIMS) else { return };
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct ClaimSpec {
        #[serde(default)]
        volume_name: String,
    }
    #[derive(Deserialize)]
    struct Claim {
        #[serde(default)]
        spec: ClaimSpec,
    }
    let volume =
        value.and_then(|v| serde_json::from_slice::<Claim>(v).ok()).map(|c| c.spec.volume_name);
    graph.set_claim(namespace, name, volume);
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes<'_>) -> Decision {
        let Some(node) = node_of(user) else { return self.rbac.authorize(user, attributes) };
        match self.decide(node, attributes) {
            Ok(()) => Decision::Allow,
            // Upstream's node authorizer has no opinion on what it refuses: RBAC may still
            // grant it (a binding an administrator made for nodes).
            Err(reason) => match self.rbac.authorize(user, attributes) {
                Decision::Allow => Decision::Allow,
                Decision::Deny(_) => Decision::Deny(reason),
            },
        }
    }

    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules {
        let mut rules = self.rbac.rules(user, namespace);
        if node_of(user).is_some() {
            for rule in &self.node_rules {
                let (resource, non_resource) = rule.to_review();
                rules.resource_rules.extend(resource);
                rules.non_resource_rules.extend(non_resource);
            }
            // What the graph allows is not listed.
            rules.incomplete = true;
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:node:{name}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        }
    }

    fn get<'a>(resource: &'a str, namespace: &'a str, name: &'a str) -> Attributes<'a> {
        Attributes { verb: "get", group: "", resource, subresource: "", namespace, name, path: "" }
    }

    fn authorizer() -> NodeAuthorizer {
        let authorizer = NodeAuthorizer::new(Arc::new(Rbac::new()));
        let pod = json!({"spec": {"nodeName": "a", "serviceAccountName": "app",
            "volumes": [{"name": "s", "secret": {"secretName": "db"}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "conf"}}]}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "e", "ephemeral": {}}],
            "containers": [{"name": "c", "env": [{"name": "X",
                "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "env-conf"}}]}],
            "imagePullSecrets": [{"name": "pull"}]}});
        let bytes = serde_json::to_vec(&pod).unwrap_or_default();
        let mut graph = authorizer.graph_mut();
        apply_pod(&mut graph, &format!("{PODS}ns/web"), Some(&bytes));
        let claim =
            serde_json::to_vec(&json!({"spec": {"volumeName": "pv-1"}})).unwrap_or_default();
        apply_claim(&mut graph, &format!("{CLAIMS}ns/data"), Some(&claim));
        drop(graph);
        authorizer
    }

    #[test]
    fn a_node_reads_what_its_pods_refer_to_and_nothing_else() {
        let authorizer = authorizer();
        for (resource, name) in [
            ("secrets", "db"),
            ("secrets", "env-secret"),
            ("secrets", "pull"),
            ("configmaps", "conf"),
            ("configmaps", "env-conf"),
            ("persistentvolumeclaims", "data"),
            ("persistentvolumeclaims", "web-e"),
            ("persistentvolumes", "pv-1"),
        ] {
            let ns = if resource == "persistentvolumes" { "" } else { "ns" };
            assert_eq!(
                authorizer.authorize(&node("a"), &get(resource, ns, name)),
                Decision::Allow,
                "{resource}/{name}"
            );
            assert!(
                matches!(
                    authorizer.authorize(&node("b"), &get(resource, ns, name)),
                    Decision::Deny(_)
                ),
                "{resource}/{name} from another node"
            );
        }
        let Decision::Deny(reason) =
            authorizer.authorize(&node("a"), &get("secrets", "ns", "other"))
        else {
            panic!("allowed")
        };
        assert!(reason.contains("no relationship found between node 'a'"), "{reason}");
        // A list of every Secret names none.
        let list = Attributes { verb: "list", ..get("secrets", "ns", "") };
        assert!(matches!(authorizer.authorize(&node("a"), &list), Decision::Deny(_)));
        let token = Attributes {
            verb: "create",
            subresource: "token",
            ..get("serviceaccounts", "ns", "app")
        };
        assert_eq!(authorizer.authorize(&node("a"), &token), Decision::Allow);
        assert!(matches!(authorizer.authorize(&node("b"), &token), Decision::Deny(_)));
    }

    #[test]
    fn a_recreated_or_deleted_pod_takes_its_objects_with_it() {
        let authorizer = authorizer();
        // Deleted, and created again on node b under the same name.
        apply_pod(&mut authorizer.graph_mut(), &format!("{PODS}ns/web"), None);
        let moved = serde_json::to_vec(&json!({"spec": {"nodeName": "b",
            "volumes": [{"name": "s", "secret": {"secretName": "db"}}]}}))
        .unwrap_or_default();
        apply_pod(&mut authorizer.graph_mut(), &format!("{PODS}ns/web"), Some(&moved));
        assert!(matches!(
            authorizer.authorize(&node("a"), &get("secrets", "ns", "db")),
            Decision::Deny(_)
        ));
        assert_eq!(authorizer.authorize(&node("b"), &get("secrets", "ns", "db")), Decision::Allow);
        apply_pod(&mut authorizer.graph_mut(), &format!("{PODS}ns/web"), None);
        assert!(matches!(
            authorizer.authorize(&node("b"), &get("secrets", "ns", "db")),
            Decision::Deny(_)
        ));
        assert!(authorizer.graph().by_node.is_empty());
    }

    #[test]
    fn a_pod_counts_from_its_binding_on() {
        let authorizer = NodeAuthorizer::new(Arc::new(Rbac::new()));
        let key = format!("{PODS}ns/late");
        let pod = |node: &str| {
            let mut spec = json!({"volumes": [{"name": "s", "secret": {"secretName": "db"}}]});
            if !node.is_empty() {
                spec["nodeName"] = json!(node);
            }
            serde_json::to_vec(&json!({"spec": spec})).unwrap_or_default()
        };
        apply_pod(&mut authorizer.graph_mut(), &key, Some(&pod("")));
        assert!(!authorizer.graph().related("a", Kind::Secret, "ns", "db"));
        apply_pod(&mut authorizer.graph_mut(), &key, Some(&pod("a")));
        assert!(authorizer.graph().related("a", Kind::Secret, "ns", "db"));
        // A status update of the bound pod changes nothing; its deletion does.
        apply_pod(&mut authorizer.graph_mut(), &key, Some(&pod("a")));
        assert!(authorizer.graph().related("a", Kind::Secret, "ns", "db"));
        apply_pod(&mut authorizer.graph_mut(), &key, None);
        assert!(!authorizer.graph().related("a", Kind::Secret, "ns", "db"));
    }

    #[test]
    fn leases_are_a_nodes_own_only() {
        let authorizer = authorizer();
        let lease = |name| Attributes {
            verb: "update",
            group: "coordination.k8s.io",
            ..get("leases", "kube-node-lease", name)
        };
        assert_eq!(authorizer.authorize(&node("a"), &lease("a")), Decision::Allow);
        assert!(matches!(authorizer.authorize(&node("a"), &lease("b")), Decision::Deny(_)));
    }

    #[test]
    fn only_node_identities_are_nodes() {
        assert_eq!(node_of(&node("a")), Some("a"));
        let no_group = UserInfo { name: "system:node:a".into(), groups: vec![] };
        assert_eq!(node_of(&no_group), None);
        let empty = UserInfo { name: "system:node:".into(), groups: vec![NODES_GROUP.into()] };
        assert_eq!(node_of(&empty), None);
    }
}
