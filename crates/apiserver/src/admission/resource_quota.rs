//! ResourceQuota (validating): a create that would take a namespace past one of its quotas is
//! refused with upstream's 403 ("exceeded quota: …"), and an admitted create is charged to the
//! quotas' `status.used` at once (compare-and-swap on the quota), so that creates in a row see
//! each other before the quota controller recounts. What an object costs is [`cost`], a pure
//! function; quotas whose status was never calculated refuse as upstream does.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult};

/// The ResourceQuota plugin.
pub struct ResourceQuota;

/// The compute resources a pod's containers are charged for, as upstream names them.
const COMPUTE: [(&str, &str, &str); 6] = [
    ("requests.cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
    ("requests.ephemeral-storage", "requests", "ephemeral-storage"),
    ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
];

fn quantity(v: &Value) -> f64 {
    v.as_str().and_then(crate::quantity::value).unwrap_or(0.0)
}

/// What creating `object` (of `plural` in `group`) adds to each quota resource. Resources that
/// need a value the object lacks (a pod without a CPU request under a `requests.cpu` quota)
/// are listed in the second part, as upstream refuses those.
pub fn cost(group: &str, plural: &str, object: &Value) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut cost = BTreeMap::new();
    let counted = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
    cost.insert(format!("count/{counted}"), 1.0);
    if !group.is_empty() {
        return (cost, Vec::new());
    }
    if matches!(
        plural,
        "pods"
            | "services"
            | "configmaps"
            | "secrets"
            | "replicationcontrollers"
            | "resourcequotas"
            | "persistentvolumeclaims"
    ) {
        cost.insert(plural.to_owned(), 1.0);
    }
    let mut missing = Vec::new();
    match plural {
        "pods" => {
            let containers = |list: &str| {
                object
                    .pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            for (name, kind, resource) in COMPUTE {
                let mut sum = 0.0;
                let mut every = true;
                for c in containers("containers") {
                    match c.pointer(&format!("/resources/{kind}/{resource}")) {
                        Some(q) => sum += quantity(q),
                        None => every = false,
                    }
                }
                // An init container runs alone: the pod needs the most any one of them asks.
                for c in containers("initContainers") {
                    if let Some(q) = c.pointer(&format!("/resources/{kind}/{resource}")) {
                        sum = sum.max(quantity(q));
                    }
                }
                cost.insert(name.to_owned(), sum);
                if !every {
                    missing.push(name.to_owned());
                }
            }
            // Extended resources (`example.com/dongle`) are quota'd by their requests only.
            let mut extended: BTreeMap<String, f64> = BTreeMap::new();
            for c in containers("containers") {
                for (resource, q) in c
                    .pointer("/resources/requests")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if !matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                        *extended.entry(format!("requests.{resource}")).or_default() += quantity(q);
                    }
                }
            }
            for c in containers("initContainers") {
                for (resource, q) in c
                    .pointer("/resources/requests")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if !matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                        let e = extended.entry(format!("requests.{resource}")).or_default();
                        *e = e.max(quantity(q));
                    }
                }
            }
            cost.extend(extended);
            for (short, long) in [
                ("cpu", "requests.cpu"),
                ("memory", "requests.memory"),
                ("ephemeral-storage", "requests.ephemeral-storage"),
            ] {
                let v = cost.get(long).copied().unwrap_or(0.0);
                cost.insert(short.to_owned(), v);
                if missing.iter().any(|m| m == long) {
                    missing.push(short.to_owned());
                }
            }
        }
        "services" => {
            let kind = object.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let ports = object.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
            if kind == "LoadBalancer" {
                cost.insert("services.loadbalancers".into(), 1.0);
            }
            if matches!(kind, "NodePort" | "LoadBalancer") {
                cost.insert("services.nodeports".into(), ports as f64);
            }
        }
        "persistentvolumeclaims" => {
            let size = object.pointer("/spec/resources/requests/storage").map_or(0.0, quantity);
            cost.insert("requests.storage".into(), size);
            if let Some(class) = object.pointer("/spec/storageClassName").and_then(Value::as_str) {
                let prefix = format!("{class}.storageclass.storage.k8s.io/");
                cost.insert(format!("{prefix}persistentvolumeclaims"), 1.0);
                cost.insert(format!("{prefix}requests.storage"), size);
            }
        }
        _ => {}
    }
    (cost, missing)
}

/// Whether a quota's scopes (`spec.scopes` and `spec.scopeSelector`) select `object`: a
/// quota without scopes counts everything; a scoped one counts only pods that match each
/// scope, as upstream's pod evaluator.
pub fn in_scope(quota: &Value, plural: &str, object: &Value) -> bool {
    let mut wanted: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_owned(), "Exists".to_owned(), Vec::new()))
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = e.get("scopeName").and_then(Value::as_str).unwrap_or("").to_owned();
        let operator = e.get("operator").and_then(Value::as_str).unwrap_or("").to_owned();
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        wanted.push((name, operator, values));
    }
    if wanted.is_empty() {
        return true;
    }
    if plural != "pods" {
        return false;
    }
    let spec = object.get("spec");
    let terminating = spec
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .and_then(Value::as_i64)
        .is_some_and(|d| d >= 0);
    let best_effort = ["containers", "initContainers"].iter().all(|list| {
        spec.and_then(|s| s.get(*list)).and_then(Value::as_array).into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|kind| {
                c.pointer(&format!("/resources/{kind}"))
                    .and_then(Value::as_object)
                    .is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
            })
        })
    });
    let priority_class = spec
        .and_then(|s| s.get("priorityClassName"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    wanted.iter().all(|(scope, operator, values)| {
        let holds = match scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => {
                return match operator.as_str() {
                    "In" => priority_class.is_some_and(|p| values.iter().any(|v| v == p)),
                    "NotIn" => priority_class.is_none_or(|p| !values.iter().any(|v| v == p)),
                    "Exists" => priority_class.is_some(),
                    "DoesNotExist" => priority_class.is_none(),
                    _ => false,
                };
            }
            _ => false,
        };
        if operator == "DoesNotExist" { !holds } else { holds }
    })
}

use crate::quantity::format_value as shown;

/// One resource over its limit.
struct Over<'r> {
    resource: &'r str,
    requested: f64,
    used: f64,
    hard: f64,
}

/// Whether `charged` fits in `quota` as it stands: upstream's 403s when it does not, or when
/// the quota's usage was never calculated.
fn check(name: &str, quota: &Value, charged: &[(&String, f64)]) -> ApiResult<()> {
    let hard = quota.pointer("/spec/hard").and_then(Value::as_object);
    let Some(used) = quota.pointer("/status/used").and_then(Value::as_object) else {
        return Err(ApiError::forbidden(format!(
            "status unknown for quota: {name}, resources: {}",
            charged.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(",")
        )));
    };
    let over: Vec<Over<'_>> = charged
        .iter()
        .map(|(r, c)| Over {
            resource: r.as_str(),
            requested: *c,
            used: used.get(*r).map_or(0.0, quantity),
            hard: hard.and_then(|h| h.get(*r)).map_or(0.0, quantity),
        })
        .filter(|o| o.used + o.requested > o.hard + 1e-9)
        .collect();
    if over.is_empty() {
        return Ok(());
    }
    let list = |value: fn(&Over<'_>) -> f64| {
        over.iter()
            .map(|o| format!("{}={}", o.resource, shown(value(o))))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(ApiError::forbidden(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        list(|o| o.requested),
        list(|o| o.used),
        list(|o| o.hard),
    )))
}

impl Validating for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.rt.namespaced
            && attributes.subresource.is_none()
            && attributes.namespace.is_some()
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let (Some(object), Some(namespace)) = (object, attributes.namespace) else {
                return Ok(());
            };
            let Some(quotas) = objects.registry().lookup("", "v1", "resourcequotas") else {
                return Ok(());
            };
            let listed = objects.list(&quotas, Some(namespace)).await?;
            if listed.is_empty() {
                return Ok(());
            }
            let (cost, missing) = cost(&attributes.rt.group, &attributes.rt.plural, object);
            for quota in listed {
                let name = quota
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if !in_scope(&quota, &attributes.rt.plural, object) {
                    continue;
                }
                let hard = quota
                    .pointer("/spec/hard")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let charged: Vec<(&String, f64)> = hard
                    .keys()
                    .filter_map(|r| {
                        cost.get(r).filter(|c| **c > 0.0 || missing.contains(r)).map(|c| (r, *c))
                    })
                    .collect();
                if charged.is_empty() {
                    continue;
                }
                let needs: Vec<&str> = charged
                    .iter()
                    .filter(|(r, _)| missing.contains(r))
                    .map(|(r, _)| r.as_str())
                    .collect();
                if !needs.is_empty() {
                    return Err(ApiError::forbidden(format!(
                        "failed quota: {name}: must specify {}",
                        needs.join(",")
                    )));
                }
                if attributes.dry_run {
                    check(&name, &quota, &charged)?;
                    continue;
                }
                // Checked and charged in one compare-and-swap on the quota: two creates at
                // once cannot both take its last unit, and the next create sees this one's
                // charge before the controller recounts.
                objects
                    .update_status(
                        &quotas,
                        Some(namespace),
                        &name,
                        "resourcequota-admission",
                        &mut |current| {
                            check(&name, current, &charged)?;
                            let mut next = current.clone();
                            if let Some(used) =
                                next.pointer_mut("/status/used").and_then(Value::as_object_mut)
                            {
                                for (r, c) in &charged {
                                    let now = used.get(*r).map_or(0.0, quantity);
                                    used.insert((*r).clone(), json!(shown(now + c)));
                                }
                            }
                            Ok(next)
                        },
                    )
                    .await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_quotas_select_pods_by_deadline_qos_and_priority_class() {
        let best_effort = json!({"spec": {"containers": [{"name": "c"}]}});
        let burstable = json!({"spec": {"activeDeadlineSeconds": 60, "priorityClassName": "high",
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        let quota = |spec: Value| json!({"spec": spec});
        let be = quota(json!({"scopes": ["BestEffort"]}));
        assert!(in_scope(&be, "pods", &best_effort) && !in_scope(&be, "pods", &burstable));
        let term = quota(json!({"scopes": ["Terminating", "NotBestEffort"]}));
        assert!(in_scope(&term, "pods", &burstable) && !in_scope(&term, "pods", &best_effort));
        let high = quota(
            json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
        );
        assert!(in_scope(&high, "pods", &burstable) && !in_scope(&high, "pods", &best_effort));
        // A scoped quota counts pods only; an unscoped one, everything.
        assert!(!in_scope(&be, "services", &json!({})));
        assert!(in_scope(&quota(json!({})), "services", &json!({})));
        let (cost, _) = cost(
            "",
            "pods",
            &json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/dongle": "2", "ephemeral-storage": "1Gi"}}}]}}),
        );
        assert_eq!(cost["requests.example.com/dongle"], 2.0);
        assert_eq!(cost["ephemeral-storage"], 1073741824.0);
    }

    #[test]
    fn objects_cost_what_upstream_charges() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "0.5"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}});
        let (pods, missing) = cost("", "pods", &pod);
        let cost_of = cost;
        let cost = pods;
        assert_eq!(cost["pods"], 1.0);
        assert_eq!(cost["count/pods"], 1.0);
        assert_eq!(cost["requests.cpu"], 2.0, "the init container's 2 outweighs 0.6");
        assert_eq!(cost["cpu"], 2.0);
        assert!(missing.contains(&"requests.memory".to_owned()), "b asks no memory");
        assert!(missing.contains(&"limits.cpu".to_owned()));
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let (cost, _) = cost_of("", "services", &svc);
        assert_eq!((cost["services"], cost["services.nodeports"]), (1.0, 2.0));
        let (cost, _) = cost_of("apps", "replicasets", &json!({}));
        assert_eq!(cost.get("count/replicasets.apps"), Some(&1.0));
        assert_eq!(shown(0.25), "250m");
        assert_eq!(shown(3.0), "3");
    }
}
