//! Role-based access control, as upstream's RBAC authorizer: Roles and ClusterRoles hold
//! rules, RoleBindings and ClusterRoleBindings grant them to users, groups and
//! ServiceAccounts, and a request is allowed when some granted rule allows it.
//!
//! The authorizer answers from an in-memory index of the four kinds, loaded from the store
//! before the server serves and kept current by a watch of the store (the API server is the
//! store's only client, so it reads it directly). Every request is decided without IO.

pub mod bootstrap;
pub mod components;
pub mod escalation;
pub mod rule;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use storage::{EventKind, RangeRequest, Revision, SharedStore};

use crate::auth::{Attributes, Authorizer, Decision, Rules, UserInfo};
use rule::Rule;

/// Where the four kinds live in the store.
pub const STORE_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// The group whose members may do everything, whatever the bindings say (upstream's
/// privileged group, so a broken policy cannot lock the administrator out).
pub const MASTERS: &str = "system:masters";

/// Whom a binding grants its role to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
    /// A ServiceAccount, as the user name its tokens authenticate as.
    ServiceAccount(String),
}

impl Subject {
    fn applies_to(&self, user: &UserInfo) -> bool {
        match self {
            Subject::User(name) | Subject::ServiceAccount(name) => *name == user.name,
            Subject::Group(group) => user.groups.iter().any(|g| g == group),
        }
    }
}

/// A binding: the role it grants and to whom.
#[derive(Debug, Clone)]
struct Binding {
    /// A ClusterRole (true) or a Role of the binding's namespace.
    cluster_role: bool,
    role: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(object: &Value, namespace: &str) -> Binding {
        fn text<'v>(v: &'v Value, p: &str) -> &'v str {
            v.pointer(p).and_then(Value::as_str).unwrap_or("")
        }
        let subjects = object
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = text(s, "/name").to_owned();
                match text(s, "/kind") {
                    "User" => Some(Subject::User(name)),
                    "Group" => Some(Subject::Group(name)),
                    "ServiceAccount" => {
                        // A RoleBinding's ServiceAccount without a namespace is one of the
                        // binding's own namespace.
                        let ns = match text(s, "/namespace") {
                            "" => namespace,
                            ns => ns,
                        };
                        Some(Subject::ServiceAccount(format!("system:serviceaccount:{ns}:{name}")))
                    }
                    _ => None,
                }
            })
            .collect();
        Binding {
            cluster_role: text(object, "/roleRef/kind") == "ClusterRole",
            role: text(object, "/roleRef/name").to_owned(),
            subjects,
        }
    }

    fn applies_to(&self, user: &UserInfo) -> bool {
        self.subjects.iter().any(|s| s.applies_to(user))
    }
}

/// The four kinds, as the authorizer reads them.
#[derive(Debug, Default)]
pub struct Index {
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    /// By namespace, then name.
    roles: HashMap<String, HashMap<String, Arc<[Rule]>>>,
    cluster_role_bindings: HashMap<String, Binding>,
    /// By namespace, then name.
    role_bindings: HashMap<String, HashMap<String, Binding>>,
}

/// What a store key names.
enum Key<'a> {
    ClusterRole(&'a str),
    Role(&'a str, &'a str),
    ClusterRoleBinding(&'a str),
    RoleBinding(&'a str, &'a str),
}

fn parse_key(key: &str) -> Option<Key<'_>> {
    let rest = key.strip_prefix(STORE_PREFIX)?;
    let (kind, rest) = rest.split_once('/')?;
    match kind {
        "clusterroles" => Some(Key::ClusterRole(rest)),
        "clusterrolebindings" => Some(Key::ClusterRoleBinding(rest)),
        "roles" => rest.split_once('/').map(|(ns, name)| Key::Role(ns, name)),
        "rolebindings" => rest.split_once('/').map(|(ns, name)| Key::RoleBinding(ns, name)),
        _ => None,
    }
}

impl Index {
    /// Records the object stored at `key` (`None`: deleted).
    pub fn apply(&mut self, key: &str, object: Option<&Value>) {
        let Some(parsed) = parse_key(key) else { return };
        match (parsed, object) {
            (Key::ClusterRole(name), Some(o)) => {
                self.cluster_roles.insert(name.to_owned(), Rule::list_from(o).into());
            }
            (Key::ClusterRole(name), None) => {
                self.cluster_roles.remove(name);
            }
            (Key::Role(ns, name), Some(o)) => {
                self.roles
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name.to_owned(), Rule::list_from(o).into());
            }
            (Key::Role(ns, name), None) => {
                if let Some(roles) = self.roles.get_mut(ns) {
                    roles.remove(name);
                    if roles.is_empty() {
                        self.roles.remove(ns);
                    }
                }
            }
            (Key::ClusterRoleBinding(name), Some(o)) => {
                self.cluster_role_bindings.insert(name.to_owned(), Binding::from_json(o, ""));
            }
            (Key::ClusterRoleBinding(name), None) => {
                self.cluster_role_bindings.remove(name);
            }
            (Key::RoleBinding(ns, name), Some(o)) => {
                self.role_bindings
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name.to_owned(), Binding::from_json(o, ns));
            }
            (Key::RoleBinding(ns, name), None) => {
                if let Some(bindings) = self.role_bindings.get_mut(ns) {
                    bindings.remove(name);
                    if bindings.is_empty() {
                        self.role_bindings.remove(ns);
                    }
                }
            }
        }
    }

    /// Calls `visit` with the rules of every role granted to `user` cluster-wide and, when
    /// `namespace` is not empty, in it; stops as soon as `visit` returns true.
    pub fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        visit: &mut dyn FnMut(&[Rule]) -> bool,
    ) -> bool {
        for binding in self.cluster_role_bindings.values() {
            if binding.cluster_role
                && binding.applies_to(user)
                && let Some(rules) = self.cluster_roles.get(&binding.role)
                && visit(rules)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        let Some(bindings) = self.role_bindings.get(namespace) else { return false };
        for binding in bindings.values() {
            if !binding.applies_to(user) {
                continue;
            }
            let rules = if binding.cluster_role {
                self.cluster_roles.get(&binding.role)
            } else {
                self.roles.get(namespace).and_then(|roles| roles.get(&binding.role))
            };
            if let Some(rules) = rules
                && visit(rules)
            {
                return true;
            }
        }
        false
    }

    /// The rules of a role (`cluster_role`: a ClusterRole; else a Role of `namespace`).
    pub fn role_rules(
        &self,
        cluster_role: bool,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<[Rule]>> {
        if cluster_role {
            self.cluster_roles.get(name).cloned()
        } else {
            self.roles.get(namespace).and_then(|roles| roles.get(name)).cloned()
        }
    }
}

/// The RBAC authorizer.
#[derive(Debug, Default)]
pub struct Rbac {
    index: RwLock<Index>,
}

impl Rbac {
    /// An authorizer over no roles at all (only `system:masters` may do anything) until
    /// [`Rbac::load`] fills it.
    pub fn new() -> Rbac {
        Rbac::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A panic while writing leaves the index as it was before the one change; reading
        // it stays safe.
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one stored object (`None`: deleted) — for tests and the store watch.
    pub fn apply(&self, key: &str, object: Option<&Value>) {
        self.write().apply(key, object);
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_of(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        let mut all = Vec::new();
        self.read().visit_rules(user, namespace, &mut |rules| {
            all.extend_from_slice(rules);
            false
        });
        all
    }

    /// The rules of a role, if it exists.
    pub fn role_rules(
        &self,
        cluster_role: bool,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<[Rule]>> {
        self.read().role_rules(cluster_role, namespace, name)
    }

    /// Replaces the index with everything stored now; returns the revision read.
    pub async fn load(&self, store: &SharedStore) -> Result<Revision, storage::Error> {
        let range = store.range(RangeRequest::prefix(STORE_PREFIX)).await?;
        let mut index = Index::default();
        for kv in &range.kvs {
            match serde_json::from_slice::<Value>(&kv.value) {
                Ok(object) => index.apply(&kv.key, Some(&object)),
                Err(e) => tracing::warn!(key = %kv.key, error = %e,
                    "a stored RBAC object cannot be decoded; it grants nothing"),
            }
        }
        *self.write() = index;
        Ok(range.revision)
    }

    /// Keeps the index current from `revision` on, until the task is dropped; reloads
    /// everything when the watch cannot continue (a compaction, a store restart).
    pub async fn follow(self: Arc<Self>, store: SharedStore, revision: Revision) {
        let apply = |events: &[storage::Event]| {
            let mut index = self.write();
            for event in events {
                let object = match event.kind {
                    EventKind::Put => serde_json::from_slice::<Value>(&event.kv.value).ok(),
                    EventKind::Delete => None,
                };
                index.apply(&event.kv.key, object.as_ref());
            }
        };
        let reload = || {
            let (this, store) = (self.clone(), store.clone());
            async move { this.load(&store).await }
        };
        crate::follow::follow(store.clone(), &[STORE_PREFIX], "RBAC", revision, apply, reload)
            .await;
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes<'_>) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow;
        }
        let allowed = self.read().visit_rules(user, attributes.namespace, &mut |rules| {
            rules.iter().any(|r| r.allows(attributes))
        });
        if allowed { Decision::Allow } else { Decision::Deny(String::new()) }
    }

    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules {
        let mut rules = Rules::default();
        for rule in self.rules_of(user, namespace) {
            let (resource, non_resource) = rule.to_review();
            rules.resource_rules.extend(resource);
            rules.non_resource_rules.extend(non_resource);
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { name: name.to_owned(), groups: groups.iter().map(|g| (*g).to_owned()).collect() }
    }

    fn get_pods(namespace: &str) -> Attributes<'_> {
        Attributes {
            verb: "get",
            group: "",
            resource: "pods",
            subresource: "",
            namespace,
            name: "p",
            path: "",
        }
    }

    fn rbac() -> Rbac {
        let rbac = Rbac::new();
        let reader = json!({"rules": [{"verbs": ["get", "list", "watch"], "apiGroups": [""],
            "resources": ["pods", "pods/log"]}]});
        rbac.apply(&format!("{STORE_PREFIX}roles/development/pod-reader"), Some(&reader));
        rbac.apply(&format!("{STORE_PREFIX}clusterroles/pod-reader"), Some(&reader));
        rbac.apply(
            &format!("{STORE_PREFIX}rolebindings/development/read-pods"),
            Some(&json!({"roleRef": {"kind": "Role", "name": "pod-reader"}, "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "ServiceAccount", "name": "monitoring", "namespace": "monitoring"},
                {"kind": "ServiceAccount", "name": "local"}]})),
        );
        rbac.apply(
            &format!("{STORE_PREFIX}clusterrolebindings/readers"),
            Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "pod-reader"},
                "subjects": [{"kind": "Group", "name": "auditors"}]})),
        );
        rbac
    }

    #[test]
    fn role_bindings_grant_in_their_namespace_only() {
        let rbac = rbac();
        let alice = user("alice", &["system:authenticated"]);
        assert_eq!(rbac.authorize(&alice, &get_pods("development")), Decision::Allow);
        assert!(matches!(rbac.authorize(&alice, &get_pods("default")), Decision::Deny(_)));
        let sa = user("system:serviceaccount:monitoring:monitoring", &[]);
        assert_eq!(rbac.authorize(&sa, &get_pods("development")), Decision::Allow);
        // A ServiceAccount subject without a namespace is the binding's namespace's.
        let local = user("system:serviceaccount:development:local", &[]);
        assert_eq!(rbac.authorize(&local, &get_pods("development")), Decision::Allow);
        let bob = user("bob", &["system:authenticated"]);
        assert!(matches!(rbac.authorize(&bob, &get_pods("development")), Decision::Deny(_)));
    }

    #[test]
    fn cluster_bindings_grant_everywhere_and_masters_always_pass() {
        let rbac = rbac();
        let auditor = user("carol", &["auditors"]);
        assert_eq!(rbac.authorize(&auditor, &get_pods("default")), Decision::Allow);
        assert_eq!(rbac.authorize(&auditor, &get_pods("")), Decision::Allow);
        let admin = user("root", &[MASTERS]);
        let delete = Attributes { verb: "delete", ..get_pods("x") };
        assert_eq!(rbac.authorize(&admin, &delete), Decision::Allow);
        assert!(matches!(rbac.authorize(&auditor, &delete), Decision::Deny(_)));
    }

    #[test]
    fn deleting_a_binding_or_its_role_takes_the_grant_away() {
        let rbac = rbac();
        let alice = user("alice", &[]);
        rbac.apply(&format!("{STORE_PREFIX}roles/development/pod-reader"), None);
        assert!(matches!(rbac.authorize(&alice, &get_pods("development")), Decision::Deny(_)));
        let auditor = user("carol", &["auditors"]);
        rbac.apply(&format!("{STORE_PREFIX}clusterrolebindings/readers"), None);
        assert!(matches!(rbac.authorize(&auditor, &get_pods("default")), Decision::Deny(_)));
    }

    #[test]
    fn rules_review_lists_what_bindings_grant() {
        let rbac = rbac();
        let rules = rbac.rules(&user("alice", &[]), "development");
        assert_eq!(rules.resource_rules.len(), 1);
        assert_eq!(rules.resource_rules[0]["resources"], json!(["pods", "pods/log"]));
        assert!(rbac.rules(&user("alice", &[]), "default").resource_rules.is_empty());
    }
}
