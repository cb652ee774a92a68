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
            for (short, long) in [("cpu", "requests.cpu"), ("memory", "requests.memory")] {
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

/// A number as a quota shows it.
fn shown(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else {
        format!("{}m", (value * 1000.0).ceil() as i64)
    }
}

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
