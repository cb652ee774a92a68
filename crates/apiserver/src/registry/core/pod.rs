//! Pod: upstream's defaults (the pod spec's and the QoS class), validation including which
//! fields an update may change, graceful deletion, and `kubectl get pods` columns.

use serde_json::{Map, Value, json};

use crate::registry::set_default;
use crate::status::Cause;
use crate::strategy::{Strategy, Subresource, is_dns_label};
use crate::table::{AGE, Column, NAME, col, or_none, pod_status, s};

/// The pod strategy.
#[derive(Debug)]
pub struct Pods;

impl Strategy for Pods {
    fn default(&self, object: &mut Value) {
        if let Some(spec) = object.get_mut("spec") {
            default_pod_spec(spec);
        }
        let qos = qos_class(object.get("spec").unwrap_or(&Value::Null));
        let Some(obj) = object.as_object_mut() else { return };
        let status = obj.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            set_default(status, "phase", json!("Pending"));
            // Computed once, at create (status is cleared then); the resources it is
            // computed from cannot change afterwards.
            set_default(status, "qosClass", json!(qos));
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        validate_pod_spec(object.get("spec"), "spec", causes);
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        if let Some(cause) = forbidden_pod_update(new, old) {
            causes.push(cause);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (status, restarts, ready, total) = pod_status(obj);
        let gates =
            obj.pointer("/spec/readinessGates").and_then(Value::as_array).map_or(0, Vec::len);
        vec![
            json!(s(obj, "/metadata/name")),
            json!(format!("{ready}/{total}")),
            json!(status),
            json!(restarts.to_string()),
            json!(crate::table::age_of(obj, "/metadata/creationTimestamp", now)),
            json!(or_none(s(obj, "/status/podIP").to_owned())),
            json!(or_none(s(obj, "/spec/nodeName").to_owned())),
            json!(or_none(s(obj, "/status/nominatedNodeName").to_owned())),
            json!(if gates == 0 { "<none>".to_owned() } else { format!("0/{gates}") }),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn subresources(&self) -> &'static [Subresource] {
        &[
            Subresource {
                name: "attach",
                kind: Some(("", "v1", "PodAttachOptions")),
                verbs: &["create", "get"],
            },
            Subresource { name: "binding", kind: Some(("", "v1", "Binding")), verbs: &["create"] },
            Subresource {
                name: "eviction",
                kind: Some(("policy", "v1", "Eviction")),
                verbs: &["create"],
            },
            Subresource {
                name: "exec",
                kind: Some(("", "v1", "PodExecOptions")),
                verbs: &["create", "get"],
            },
            Subresource { name: "log", kind: None, verbs: &["get"] },
            Subresource {
                name: "proxy",
                kind: Some(("", "v1", "PodProxyOptions")),
                verbs: &["create", "delete", "get", "patch", "update"],
            },
            Subresource {
                name: "portforward",
                kind: Some(("", "v1", "PodPortForwardOptions")),
                verbs: &["create", "get"],
            },
        ]
    }

    fn grace_period(&self, pod: &Value, requested: Option<i64>) -> Option<i64> {
        let on_node =
            pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let finished = matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        // A pod no node runs (yet or any more) has nothing to stop: it goes at once.
        if !on_node || finished {
            return Some(0);
        }
        Some(
            requested
                .or_else(|| {
                    pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0),
        )
    }
}

/// Validates a pod spec found at `path` (a pod's `spec` or a template's `spec.template.spec`).
pub(crate) fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        causes.push(Cause::new("FieldValueRequired", path, "Required value"));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{path}.containers"),
            "Required value",
        )),
        Some(list) if list.is_empty() => causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{path}.containers"),
            "Required value",
        )),
        Some(list) => {
            let mut names = std::collections::HashSet::new();
            for (i, c) in list.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{path}.containers[{i}].name"),
                        "Required value",
                    ));
                } else if !is_dns_label(name) {
                    causes.push(Cause::new("FieldValueInvalid", &format!("{path}.containers[{i}].name"), format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")));
                } else if !names.insert(name.to_owned()) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        &format!("{path}.containers[{i}].name"),
                        format!("Duplicate value: \"{name}\""),
                    ));
                }
                if c.get("image").and_then(Value::as_str).unwrap_or("").trim().is_empty() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{path}.containers[{i}].image"),
                        "Required value",
                    ));
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push(Cause::new("FieldValueNotSupported", &format!("{path}.restartPolicy"), format!("Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\"")));
    }
}

/// Upstream's defaults of a pod spec, for pods and every template of one.
pub(crate) fn default_pod_spec(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else { return };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_owned();
                set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                default_requests_from_limits(c);
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// A container that sets a limit but no request for a resource requests its limit (upstream's
/// defaulting, which is also what makes a limits-only pod Guaranteed).
fn default_requests_from_limits(container: &mut Map<String, Value>) {
    let Some(resources) = container.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else { return };
    let requests = resources.entry("requests").or_insert_with(|| json!({}));
    if requests.is_null() {
        *requests = json!({});
    }
    if let Some(requests) = requests.as_object_mut() {
        for (name, quantity) in limits {
            requests.entry(name).or_insert(quantity);
        }
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (upstream's rule).
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

/// The QoS class of a pod spec, by upstream's rule over CPU and memory of every container
/// (init containers included): no request or limit anywhere is `BestEffort`; limits for both
/// on every container, with the requests summing to the limits, is `Guaranteed`; anything
/// else is `Burstable`.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut requests = [0.0f64; 2];
    let mut limits = [0.0f64; 2];
    let mut any = false;
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|list| spec.get(list).and_then(Value::as_array))
        .flatten();
    for c in containers {
        let mut limited = [false; 2];
        for (i, resource) in ["cpu", "memory"].into_iter().enumerate() {
            let value = |kind: &str| {
                c.pointer(&format!("/resources/{kind}/{resource}"))
                    .and_then(Value::as_str)
                    .and_then(crate::quantity::value)
                    .filter(|v| *v > 0.0)
            };
            if let Some(v) = value("requests") {
                requests[i] += v;
                any = true;
            }
            if let Some(v) = value("limits") {
                limits[i] += v;
                limited[i] = true;
                any = true;
            }
        }
        if !(limited[0] && limited[1]) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed
        && requests.iter().zip(limits).all(|(r, l)| (r - l).abs() <= l.abs() * 1e-12)
    {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Upstream's list of what a pod update may change, as its message names them.
const POD_UPDATE_MESSAGE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Checks an update of a pod's spec against the stored one: only images, a shorter active
/// deadline, added tolerations, removed scheduling gates (and a negative grace period set to
/// 1) may change; anything else is upstream's 422.
fn forbidden_pod_update(new: &Value, old: &Value) -> Option<Cause> {
    let (Some(new_spec), Some(old_spec)) = (new.get("spec"), old.get("spec")) else { return None };
    let mut masked = new_spec.clone();
    let map = masked.as_object_mut()?;
    for list in ["containers", "initContainers"] {
        let old_list = old_spec.get(list).and_then(Value::as_array);
        if let (Some(items), Some(old_items)) =
            (map.get_mut(list).and_then(Value::as_array_mut), old_list)
            && items.len() == old_items.len()
        {
            for (item, old_item) in items.iter_mut().zip(old_items) {
                if let (Some(item), Some(image)) = (item.as_object_mut(), old_item.get("image")) {
                    item.insert("image".into(), image.clone());
                }
            }
        }
    }
    // The active deadline may be set or shortened, never removed or lengthened.
    let deadline = |spec: &Value| spec.get("activeDeadlineSeconds").and_then(Value::as_i64);
    match (deadline(old_spec), deadline(new_spec)) {
        (_, None) | (None, Some(_)) => {}
        (Some(old), Some(new)) if new <= old => {}
        _ => return Some(forbidden()),
    }
    if deadline(new_spec).is_some() || deadline(old_spec).is_some() {
        copy_field(map, old_spec, "activeDeadlineSeconds");
    }
    // Tolerations may only be added.
    let tolerations = |spec: &Value| spec.get("tolerations").and_then(Value::as_array).cloned();
    let old_tolerations = tolerations(old_spec).unwrap_or_default();
    let new_tolerations = tolerations(new_spec).unwrap_or_default();
    if old_tolerations.iter().all(|t| new_tolerations.contains(t)) {
        copy_field(map, old_spec, "tolerations");
    }
    // Scheduling gates may only be removed.
    let gates = |spec: &Value| spec.get("schedulingGates").and_then(Value::as_array).cloned();
    let old_gates = gates(old_spec).unwrap_or_default();
    if gates(new_spec).unwrap_or_default().iter().all(|g| old_gates.contains(g)) {
        copy_field(map, old_spec, "schedulingGates");
    }
    let grace = |spec: &Value| spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64);
    if grace(old_spec).is_some_and(|g| g < 0) && grace(new_spec) == Some(1) {
        copy_field(map, old_spec, "terminationGracePeriodSeconds");
    }
    (masked != *old_spec).then(forbidden)
}

fn copy_field(map: &mut Map<String, Value>, old_spec: &Value, field: &str) {
    match old_spec.get(field) {
        Some(v) => {
            map.insert(field.to_owned(), v.clone());
        }
        None => {
            map.remove(field);
        }
    }
}

fn forbidden() -> Cause {
    Cause::new("FieldValueForbidden", "spec", format!("Forbidden: {POD_UPDATE_MESSAGE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let best = pod(json!([{"name": "a", "image": "i"}]));
        assert_eq!(qos_class(&best["spec"]), "BestEffort");
        let mut equal = pod(json!([{"name": "a", "image": "i", "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "0.1", "memory": "64Mi"}}}]));
        assert_eq!(qos_class(&equal["spec"]), "Guaranteed");
        // Limits alone default the requests, so the pod is Guaranteed too.
        let mut limits_only = pod(json!([{"name": "a", "image": "i", "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"}}}]));
        Pods.default(&mut limits_only);
        assert_eq!(limits_only["status"]["qosClass"], "Guaranteed");
        assert_eq!(limits_only["spec"]["containers"][0]["resources"]["requests"]["cpu"], "1");
        let burstable = pod(json!([{"name": "a", "image": "i", "resources": {
            "requests": {"cpu": "100m"}}}]));
        assert_eq!(qos_class(&burstable["spec"]), "Burstable");
        // One container without memory limits makes the whole pod Burstable.
        equal["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b", "image": "i", "resources": {"limits": {"cpu": "1"}}}));
        assert_eq!(qos_class(&equal["spec"]), "Burstable");
    }

    #[test]
    fn pod_updates_change_only_what_upstream_allows() {
        let mut old = json!({"spec": {"restartPolicy": "Always", "activeDeadlineSeconds": 100,
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "containers": [{"name": "c", "image": "one"}]}});
        Pods.default(&mut old);
        let check = |change: &dyn Fn(&mut Value)| {
            let mut new = old.clone();
            change(&mut new);
            Pods.default(&mut new);
            let mut causes = Vec::new();
            Pods.validate_update(&new, &old, &mut causes);
            causes
        };
        assert!(check(&|p| p["spec"]["containers"][0]["image"] = json!("two")).is_empty());
        assert!(check(&|p| p["spec"]["activeDeadlineSeconds"] = json!(50)).is_empty());
        assert!(
            check(&|p| p["spec"]["tolerations"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "b", "operator": "Exists"})))
            .is_empty()
        );
        let denied = check(&|p| p["spec"]["restartPolicy"] = json!("Never"));
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].field, "spec");
        assert!(denied[0].message.starts_with(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
        ));
        assert_eq!(check(&|p| p["spec"]["activeDeadlineSeconds"] = json!(200)).len(), 1);
        assert_eq!(check(&|p| p["spec"]["tolerations"] = json!([])).len(), 1);
        assert_eq!(check(&|p| p["spec"]["containers"][0]["name"] = json!("d")).len(), 1);
        assert_eq!(check(&|p| p["spec"]["nodeName"] = json!("n1")).len(), 1);
    }
}
