//! Escalation prevention: nobody writes a role, or binds one, granting what they do not hold
//! themselves — unless RBAC gives them the `escalate` verb on roles (or `bind` on the role a
//! binding names), as upstream's RBAC registry checks.

use serde_json::Value;

use super::rule::{Rule, covers};
use super::{MASTERS, Rbac};
use crate::auth::{Attributes, Authorizer, Decision, UserInfo};
use crate::status::{ApiError, ApiResult};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Which RBAC kind is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Role.
    Role,
    /// A ClusterRole.
    ClusterRole,
    /// A RoleBinding.
    RoleBinding,
    /// A ClusterRoleBinding.
    ClusterRoleBinding,
}

impl Kind {
    /// The kind of a `rbac.authorization.k8s.io` object kind name.
    pub fn of(kind: &str) -> Option<Kind> {
        match kind {
            "Role" => Some(Kind::Role),
            "ClusterRole" => Some(Kind::ClusterRole),
            "RoleBinding" => Some(Kind::RoleBinding),
            "ClusterRoleBinding" => Some(Kind::ClusterRoleBinding),
            _ => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Role => "roles",
            Kind::ClusterRole => "clusterroles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRoleBinding => "clusterrolebindings",
        }
    }
}

fn allowed(rbac: &Rbac, user: &UserInfo, verb: &str, resource: &str, ns: &str, name: &str) -> bool {
    let attributes =
        Attributes { verb, group: GROUP, resource, subresource: "", namespace: ns, name, path: "" };
    rbac.authorize(user, &attributes) == Decision::Allow
}

/// Whether `user`'s rules in `namespace` cover every rule of `rules`; the ones they do not.
fn missing(rbac: &Rbac, user: &UserInfo, namespace: &str, rules: &[Rule]) -> Vec<Rule> {
    let held = rbac.rules_of(user, namespace);
    rules.iter().filter(|r| !covers(&held, r)).cloned().collect()
}

fn describe(rule: &Rule) -> String {
    let mut parts = Vec::new();
    let list = |v: &[String]| format!("{v:?}");
    if !rule.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", list(&rule.api_groups)));
    }
    if !rule.resources.is_empty() {
        parts.push(format!("Resources:{}", list(&rule.resources)));
    }
    if !rule.resource_names.is_empty() {
        parts.push(format!("ResourceNames:{}", list(&rule.resource_names)));
    }
    if !rule.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:{}", list(&rule.non_resource_urls)));
    }
    parts.push(format!("Verbs:{}", list(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

fn forbidden(kind: Kind, name: &str, reason: String) -> ApiError {
    ApiError::forbidden(format!("{}.{GROUP} \"{name}\" is forbidden: {reason}", kind.plural()))
        .with_details(GROUP, kind.plural(), name)
}

fn not_held(kind: Kind, name: &str, user: &UserInfo, missing: &[Rule]) -> ApiError {
    let rules: Vec<String> = missing.iter().map(describe).collect();
    forbidden(
        kind,
        name,
        format!(
            "user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            rules.join("\n")
        ),
    )
}

/// Checks that `user` may store `object` (of `kind`, in `namespace` or "" for cluster
/// kinds) without granting what they do not hold.
pub fn check(
    rbac: &Rbac,
    user: &UserInfo,
    kind: Kind,
    namespace: &str,
    object: &Value,
) -> ApiResult<()> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match kind {
        Kind::Role | Kind::ClusterRole => {
            if allowed(rbac, user, "escalate", kind.plural(), namespace, name) {
                return Ok(());
            }
            if kind == Kind::ClusterRole
                && object.get("aggregationRule").is_some_and(|a| !a.is_null())
            {
                // An aggregated role collects rules nobody checked against the writer.
                let everything = Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Rule::default()
                };
                if !missing(rbac, user, "", &[everything]).is_empty() {
                    return Err(forbidden(
                        kind,
                        name,
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
            }
            let missing = missing(rbac, user, namespace, &Rule::list_from(object));
            if missing.is_empty() { Ok(()) } else { Err(not_held(kind, name, user, &missing)) }
        }
        Kind::RoleBinding | Kind::ClusterRoleBinding => {
            let text = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
            let cluster_role = text("/roleRef/kind") == "ClusterRole";
            let role = text("/roleRef/name");
            let role_plural = if cluster_role { "clusterroles" } else { "roles" };
            if allowed(rbac, user, "bind", role_plural, namespace, role) {
                return Ok(());
            }
            let Some(rules) = rbac.role_rules(cluster_role, namespace, role) else {
                let reason = format!("{role_plural}.{GROUP} \"{role}\" not found");
                return Err(forbidden(kind, name, reason));
            };
            let missing = missing(rbac, user, namespace, &rules);
            if missing.is_empty() { Ok(()) } else { Err(not_held(kind, name, user, &missing)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::STORE_PREFIX;
    use serde_json::json;

    fn rbac() -> Rbac {
        let rbac = Rbac::new();
        rbac.apply(
            &format!("{STORE_PREFIX}clusterroles/manager"),
            Some(&json!({"rules": [
                // Not `*`: that would include `escalate` and `bind`.
                {"verbs": ["create", "update", "get"], "apiGroups": ["rbac.authorization.k8s.io"],
                 "resources": ["roles", "rolebindings"]},
                {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]})),
        );
        rbac.apply(
            &format!("{STORE_PREFIX}clusterroles/deleter"),
            Some(&json!({"rules": [{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]})),
        );
        rbac.apply(
            &format!("{STORE_PREFIX}rolebindings/dev/manager"),
            Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "manager"},
                "subjects": [{"kind": "User", "name": "mia"}]})),
        );
        rbac
    }

    fn role(verbs: &[&str]) -> Value {
        json!({"metadata": {"name": "r"},
            "rules": [{"verbs": verbs, "apiGroups": [""], "resources": ["pods"]}]})
    }

    #[test]
    fn a_role_may_grant_only_what_its_writer_holds() {
        let rbac = rbac();
        let mia = UserInfo { name: "mia".into(), groups: vec![] };
        assert!(check(&rbac, &mia, Kind::Role, "dev", &role(&["get"])).is_ok());
        let e = check(&rbac, &mia, Kind::Role, "dev", &role(&["delete"])).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("not currently held"), "{}", e.message);
        // Not in another namespace, where mia holds nothing.
        assert!(check(&rbac, &mia, Kind::Role, "prod", &role(&["get"])).is_err());
        let admin = UserInfo { name: "root".into(), groups: vec![MASTERS.into()] };
        assert!(check(&rbac, &admin, Kind::ClusterRole, "", &role(&["*"])).is_ok());
    }

    #[test]
    fn a_binding_needs_the_roles_rules_or_the_bind_verb() {
        let rbac = rbac();
        let mia = UserInfo { name: "mia".into(), groups: vec![] };
        let binding = |role: &str| json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": role}});
        assert!(check(&rbac, &mia, Kind::RoleBinding, "dev", &binding("manager")).is_ok());
        assert!(check(&rbac, &mia, Kind::RoleBinding, "dev", &binding("deleter")).is_err());
        assert!(check(&rbac, &mia, Kind::RoleBinding, "dev", &binding("missing")).is_err());
        rbac.apply(
            &format!("{STORE_PREFIX}clusterroles/binder"),
            Some(&json!({"rules": [{"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"], "resourceNames": ["deleter"]}]})),
        );
        rbac.apply(
            &format!("{STORE_PREFIX}rolebindings/dev/binder"),
            Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "binder"},
                "subjects": [{"kind": "User", "name": "mia"}]})),
        );
        assert!(check(&rbac, &mia, Kind::RoleBinding, "dev", &binding("deleter")).is_ok());
    }

    #[test]
    fn escalate_lets_a_writer_grant_more() {
        let rbac = rbac();
        rbac.apply(
            &format!("{STORE_PREFIX}clusterrolebindings/escalator"),
            Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "escalator"},
                "subjects": [{"kind": "User", "name": "eve"}]})),
        );
        let eve = UserInfo { name: "eve".into(), groups: vec![] };
        assert!(check(&rbac, &eve, Kind::ClusterRole, "", &role(&["*"])).is_err());
        rbac.apply(
            &format!("{STORE_PREFIX}clusterroles/escalator"),
            Some(&json!({"rules": [{"verbs": ["escalate"],
                "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"]}]})),
        );
        assert!(check(&rbac, &eve, Kind::ClusterRole, "", &role(&["*"])).is_ok());
    }
}
