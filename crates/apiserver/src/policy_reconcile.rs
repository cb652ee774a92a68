//! Keeps RBAC's bootstrap policy (`rbac::bootstrap`, `rbac::components`) in the store — the
//! one part of RBAC that writes through the registry, so it lives apart from the
//! authorizer, which admission depends on. At every start, a role or binding of the policy
//! that is missing is created, and one that lacks some of the policy's rules, labels,
//! annotations, aggregation selectors or subjects gets them back — what an administrator
//! added stays. An object annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`
//! is left alone, as upstream does.

use serde_json::{Value, json};

use crate::rest::{DeleteOptions, Rest, WriteOptions};
use crate::status::{ApiError, ApiResult};
use crate::strategy::FieldValidation;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// What a start changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Objects created.
    pub created: usize,
    /// Objects updated to hold the policy again.
    pub updated: usize,
    /// Objects left alone because they ask to be.
    pub protected: usize,
}

/// What must change on `stored` so it holds everything `expected` (a policy object) does,
/// or `None` when it already does or must not be touched. A binding whose `roleRef` differs
/// cannot be updated (the field is immutable): that is [`Change::Replace`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Store this (merged) object.
    Update(Value),
    /// Delete the stored binding and create the expected one.
    Replace,
}

fn union_into(stored: &mut Value, expected: &Value, field: &str) {
    let Some(wanted) = expected.get(field).and_then(Value::as_array) else { return };
    let items = stored.as_object_mut().map(|o| o.entry(field).or_insert_with(|| json!([])));
    let Some(Value::Array(items)) = items else { return };
    for item in wanted {
        if !items.contains(item) {
            items.push(item.clone());
        }
    }
}

fn map_into(stored: &mut Value, expected: &Value, field: &str) {
    let Some(wanted) = expected.pointer(&format!("/metadata/{field}")).and_then(Value::as_object)
    else {
        return;
    };
    let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let map = meta.entry(field).or_insert_with(|| json!({}));
    if !map.is_object() {
        *map = json!({});
    }
    if let Some(map) = map.as_object_mut() {
        for (k, v) in wanted {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Compares a stored object with the policy's.
pub fn change(stored: &Value, expected: &Value) -> Option<Change> {
    if is_protected(stored) {
        return None;
    }
    if expected.get("roleRef").is_some() && stored.get("roleRef") != expected.get("roleRef") {
        return Some(Change::Replace);
    }
    let mut merged = stored.clone();
    map_into(&mut merged, expected, "labels");
    map_into(&mut merged, expected, "annotations");
    union_into(&mut merged, expected, "subjects");
    if expected.get("aggregationRule").is_some() {
        // The aggregation controller fills an aggregated role's rules; only its selectors
        // are the policy's.
        let mut rule = merged.get("aggregationRule").cloned().unwrap_or_else(|| json!({}));
        if !rule.is_object() {
            rule = json!({});
        }
        if let Some(wanted) = expected.get("aggregationRule") {
            union_into(&mut rule, wanted, "clusterRoleSelectors");
        }
        merged["aggregationRule"] = rule;
    } else {
        union_into(&mut merged, expected, "rules");
    }
    (merged != *stored).then_some(Change::Update(merged))
}

/// Brings the store in line with upstream's bootstrap policy and krust's component roles.
pub async fn reconcile(rest: &Rest) -> ApiResult<Reconciled> {
    let options = WriteOptions {
        dry_run: false,
        field_validation: FieldValidation::Ignore,
        field_manager: "krust".into(),
        force: false,
        user: None,
    };
    let policy = crate::rbac::bootstrap::policy();
    let mut cluster_roles = policy.cluster_roles;
    cluster_roles.extend(crate::rbac::components::cluster_roles());
    let mut cluster_role_bindings = policy.cluster_role_bindings;
    cluster_role_bindings.extend(crate::rbac::components::cluster_role_bindings());
    let kinds = [
        ("clusterroles", cluster_roles),
        ("roles", policy.roles),
        ("clusterrolebindings", cluster_role_bindings),
        ("rolebindings", policy.role_bindings),
    ];
    let mut done = Reconciled::default();
    for (plural, objects) in kinds {
        let rt = rest
            .registry
            .lookup("rbac.authorization.k8s.io", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        for expected in objects {
            let name = expected.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let namespace = expected.pointer("/metadata/namespace").and_then(Value::as_str);
            let stored = match rest.get(&rt, namespace, name).await {
                Ok(stored) => Some(stored.object),
                Err(e) if e.code == 404 => None,
                Err(e) => return Err(e),
            };
            let Some(stored) = stored else {
                rest.create(&rt, namespace, expected.clone(), &options).await?;
                done.created += 1;
                continue;
            };
            if is_protected(&stored) {
                done.protected += 1;
                continue;
            }
            match change(&stored, &expected) {
                None => {}
                Some(Change::Update(merged)) => {
                    rest.update(&rt, namespace, name, merged, None, &options).await?;
                    done.updated += 1;
                }
                Some(Change::Replace) => {
                    rest.delete(&rt, namespace, name, &DeleteOptions::default()).await?;
                    rest.create(&rt, namespace, expected.clone(), &options).await?;
                    done.updated += 1;
                }
            }
        }
    }
    Ok(done)
}

fn is_protected(object: &Value) -> bool {
    object.pointer(&format!("/metadata/annotations/{}", AUTOUPDATE.replace('/', "~1")))
        == Some(&json!("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(rules: Value) -> Value {
        json!({"metadata": {"name": "view", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"}}, "rules": rules})
    }

    #[test]
    fn missing_rules_come_back_and_added_ones_stay() {
        let expected = role(json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]));
        let extra = json!({"verbs": ["list"], "apiGroups": [""], "resources": ["nodes"]});
        let stored = role(json!([extra]));
        let Some(Change::Update(merged)) = change(&stored, &expected) else { panic!("no update") };
        assert_eq!(merged["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(merged["rules"][0], extra);
        assert_eq!(change(&merged, &expected), None);
    }

    #[test]
    fn autoupdate_false_is_left_alone_and_changed_role_refs_are_replaced() {
        let expected = role(json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]));
        let mut stored = role(json!([]));
        stored["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert_eq!(change(&stored, &expected), None);
        assert!(is_protected(&stored));
        let binding = |role: &str| {
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "Group", "name": "g"}]})
        };
        assert_eq!(change(&binding("a"), &binding("b")), Some(Change::Replace));
        assert_eq!(change(&binding("a"), &binding("a")), None);
    }

    #[test]
    fn aggregated_roles_keep_their_collected_rules() {
        let expected = json!({"metadata": {"name": "admin"}, "aggregationRule": {
            "clusterRoleSelectors": [{"matchLabels": {"x": "true"}}]}});
        let stored = json!({"metadata": {"name": "admin"}, "aggregationRule": {
            "clusterRoleSelectors": [{"matchLabels": {"x": "true"}}]},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]});
        assert_eq!(change(&stored, &expected), None);
    }
}
