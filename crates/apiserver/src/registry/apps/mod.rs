//! The `apps` group.

pub mod controllerrevision;
pub mod daemonset;
pub mod deployment;
pub mod replicaset;
pub mod statefulset;

use serde_json::Value;

use crate::registry::core::pod::{default_pod_spec, validate_pod_spec};
use crate::status::Cause;

/// What every `apps/v1` workload requires: a selector (immutable once set), a non-negative
/// replica count, a valid pod template whose labels the selector matches.
pub(crate) fn validate_workload(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec");
    if spec.and_then(|s| s.get("selector")).is_none_or(Value::is_null) {
        causes.push(Cause::new("FieldValueRequired", "spec.selector", "Required value"));
    }
    if let Some(replicas) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64)
        && replicas < 0
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.replicas",
            format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    let template = spec.and_then(|s| s.get("template"));
    validate_pod_spec(template.and_then(|t| t.get("spec")), "spec.template.spec", causes);
    if let (Some(selector), Some(labels)) = (
        spec.and_then(|s| s.pointer("/selector/matchLabels")).and_then(Value::as_object),
        template.and_then(|t| t.pointer("/metadata/labels")),
    ) {
        let ok = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if !ok {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.template.metadata.labels",
                format!("Invalid value: {labels}: `selector` does not match template `labels`"),
            ));
        }
    }
}

/// `apps/v1` selectors cannot change.
pub(crate) fn validate_workload_update(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    crate::registry::immutable(new, old, "/spec/selector", causes);
}

/// Defaults the pod template of a workload.
pub(crate) fn default_template(spec: &mut serde_json::Map<String, Value>) {
    if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(t);
    }
}
