//! HorizontalPodAutoscaler, served as `autoscaling/v2` and `autoscaling/v1` over one storage
//! (`v2`): `kubectl get hpa` columns read either shape.

use serde_json::{Value, json};

use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, s};

/// The HorizontalPodAutoscaler strategy (both versions).
#[derive(Debug)]
pub struct HorizontalPodAutoscalers;

/// The Targets cell: each metric's current value against its target, as kubectl shows it.
fn targets(obj: &Value) -> String {
    if let Some(target) =
        obj.pointer("/spec/targetCPUUtilizationPercentage").and_then(Value::as_i64)
    {
        let current = obj
            .pointer("/status/currentCPUUtilizationPercentage")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unknown>".to_owned(), |c| format!("{c}%"));
        return format!("cpu: {current}/{target}%");
    }
    let metrics =
        obj.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".to_owned();
    }
    let statuses = obj.pointer("/status/currentMetrics").and_then(Value::as_array);
    let shown: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let current = statuses.and_then(|st| st.get(i));
            match s(m, "/type") {
                kind @ ("Resource" | "ContainerResource") => {
                    let key = if kind == "Resource" { "resource" } else { "containerResource" };
                    let name = s(m, &format!("/{key}/name"));
                    let target =
                        m.pointer(&format!("/{key}/target")).cloned().unwrap_or(Value::Null);
                    let now = current.and_then(|c| c.get(key)).and_then(|c| c.get("current"));
                    if let Some(avg) = target.get("averageValue").and_then(Value::as_str) {
                        let cur = now
                            .and_then(|c| c.get("averageValue"))
                            .and_then(Value::as_str)
                            .unwrap_or("<unknown>");
                        format!("{name}: {cur}/{avg}")
                    } else {
                        let cur = now
                            .and_then(|c| c.get("averageUtilization"))
                            .and_then(Value::as_i64)
                            .map_or_else(|| "<unknown>".to_owned(), |c| format!("{c}%"));
                        let goal = target
                            .get("averageUtilization")
                            .and_then(Value::as_i64)
                            .map_or_else(|| "<auto>".to_owned(), |t| format!("{t}%"));
                        format!("{name}: {cur}/{goal}")
                    }
                }
                "Pods" => format!(
                    "{}/{}",
                    current.map_or("<unknown>", |c| s(c, "/pods/current/averageValue")),
                    s(m, "/pods/target/averageValue")
                ),
                _ => "<unknown type>".to_owned(),
            }
        })
        .collect();
    if shown.len() > 2 {
        format!("{} + {} more...", shown[..2].join(", "), shown.len() - 2)
    } else {
        shown.join(", ")
    }
}

impl Strategy for HorizontalPodAutoscalers {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let v2 = object.get("apiVersion").and_then(Value::as_str) != Some("autoscaling/v1");
        let Some(spec) = crate::registry::spec_mut(object) else { return };
        crate::registry::set_default(spec, "minReplicas", json!(1));
        if !v2 {
            return;
        }
        // v2's defaults: 80% of the pods' CPU requests when no metric is named, and a
        // behavior's missing rules and fields completed with the controller's defaults.
        if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            spec.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]),
            );
        }
        if let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
            let defaults = [
                (
                    "scaleUp",
                    json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                        {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
                ),
                (
                    "scaleDown",
                    json!({"selectPolicy": "Max", "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
                ),
            ];
            for (direction, default) in defaults {
                let rules = behavior.entry(direction).or_insert_with(|| json!({}));
                if rules.is_null() {
                    *rules = json!({});
                }
                let Some(rules) = rules.as_object_mut() else { continue };
                for (field, value) in default.as_object().into_iter().flatten() {
                    let missing = rules
                        .get(field)
                        .is_none_or(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty));
                    if missing {
                        rules.insert(field.clone(), value.clone());
                    }
                }
            }
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        validate_spec(object, causes);
    }

    fn validate_update(&self, new: &Value, _old: &Value, causes: &mut Vec<Cause>) {
        validate_spec(new, causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let min = obj
            .pointer("/spec/minReplicas")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unset>".to_owned(), |m| m.to_string());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(format!(
                "{}/{}",
                s(obj, "/spec/scaleTargetRef/kind"),
                s(obj, "/spec/scaleTargetRef/name")
            )),
            json!(targets(obj)),
            json!(min),
            json!(n(obj, "/spec/maxReplicas")),
            json!(n(obj, "/status/currentReplicas")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}

fn invalid(causes: &mut Vec<Cause>, field: &str, value: &Value, message: &str) {
    causes.push(Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {message}"),
    ));
}

fn required(causes: &mut Vec<Cause>, field: &str) {
    causes.push(Cause::new("FieldValueRequired", field, "Required value"));
}

/// Upstream's checks of an HPA's spec (both versions): the target, the replica bounds, and
/// for v2 each metric's source and target and the behavior's windows and policies.
fn validate_spec(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").unwrap_or(&Value::Null);
    let target = spec.get("scaleTargetRef").unwrap_or(&Value::Null);
    for field in ["kind", "name"] {
        match target.get(field).and_then(Value::as_str) {
            None | Some("") => required(causes, &format!("spec.scaleTargetRef.{field}")),
            Some(v) if v.contains('/') || v.contains('%') || v == "." || v == ".." => invalid(
                causes,
                &format!("spec.scaleTargetRef.{field}"),
                &json!(v),
                "may not contain '/'",
            ),
            Some(_) => {}
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64);
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    if let Some(min) = min
        && min < 1
    {
        invalid(causes, "spec.minReplicas", &json!(min), "must be greater than or equal to 1");
    }
    if max < 1 {
        invalid(causes, "spec.maxReplicas", &json!(max), "must be greater than 0");
    }
    if let Some(min) = min
        && max < min
    {
        invalid(
            causes,
            "spec.maxReplicas",
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        );
    }
    if let Some(cpu) = spec.get("targetCPUUtilizationPercentage").and_then(Value::as_i64)
        && cpu < 1
    {
        invalid(
            causes,
            "spec.targetCPUUtilizationPercentage",
            &json!(cpu),
            "must be greater than 0",
        );
    }
    for (i, metric) in
        spec.get("metrics").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        validate_metric(metric, &format!("spec.metrics[{i}]"), causes);
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        for direction in ["scaleUp", "scaleDown"] {
            if let Some(rules) = behavior.get(direction).filter(|r| !r.is_null()) {
                validate_rules(rules, &format!("spec.behavior.{direction}"), causes);
            }
        }
    }
}

const METRIC_SOURCES: [(&str, &str); 5] = [
    ("Object", "object"),
    ("Pods", "pods"),
    ("Resource", "resource"),
    ("ContainerResource", "containerResource"),
    ("External", "external"),
];

fn validate_metric(metric: &Value, path: &str, causes: &mut Vec<Cause>) {
    let kind = metric.get("type").and_then(Value::as_str).unwrap_or("");
    let set: Vec<&str> = METRIC_SOURCES
        .iter()
        .filter(|(_, field)| metric.get(*field).is_some_and(|v| !v.is_null()))
        .map(|(t, _)| *t)
        .collect();
    if kind.is_empty() {
        required(causes, &format!("{path}.type"));
        return;
    }
    let Some((_, field)) = METRIC_SOURCES.iter().find(|(t, _)| *t == kind) else {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{path}.type"),
            format!(
                "Unsupported value: {kind:?}: supported values: \"ContainerResource\", \"External\", \"Object\", \"Pods\", \"Resource\""
            ),
        ));
        return;
    };
    if set.len() > 1 || (set.len() == 1 && set[0] != kind) {
        causes.push(Cause::new(
            "FieldValueForbidden",
            &format!("{path}.{field}"),
            "Forbidden: must populate the given metric source only",
        ));
    }
    let Some(source) = metric.get(*field).filter(|v| !v.is_null()) else {
        required(causes, &format!("{path}.{field}"));
        return;
    };
    let source_path = format!("{path}.{field}");
    if matches!(kind, "Resource" | "ContainerResource")
        && source.get("name").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        required(causes, &format!("{source_path}.name"));
    }
    if kind == "ContainerResource"
        && source.get("container").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        required(causes, &format!("{source_path}.container"));
    }
    let target = source.get("target").unwrap_or(&Value::Null);
    let target_path = format!("{source_path}.target");
    match target.get("type").and_then(Value::as_str).unwrap_or("") {
        "" => required(causes, &format!("{target_path}.type")),
        "Utilization" => match target.get("averageUtilization").and_then(Value::as_i64) {
            None => required(causes, &format!("{target_path}.averageUtilization")),
            Some(u) if u < 1 => invalid(
                causes,
                &format!("{target_path}.averageUtilization"),
                &json!(u),
                "must be greater than 0",
            ),
            Some(_) => {}
        },
        "AverageValue" | "Value" => {}
        other => causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{target_path}.type"),
            format!("Unsupported value: {other:?}: supported values: \"AverageValue\", \"Utilization\", \"Value\""),
        )),
    }
}

fn validate_rules(rules: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(window) = rules.get("stabilizationWindowSeconds").and_then(Value::as_i64) {
        let field = format!("{path}.stabilizationWindowSeconds");
        if window < 0 {
            invalid(causes, &field, &json!(window), "must be greater than or equal to zero");
        } else if window > 3600 {
            invalid(causes, &field, &json!(window), "must be less than or equal to 3600");
        }
    }
    if let Some(select) = rules.get("selectPolicy").and_then(Value::as_str)
        && !matches!(select, "Max" | "Min" | "Disabled")
    {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{path}.selectPolicy"),
            format!(
                "Unsupported value: {select:?}: supported values: \"Disabled\", \"Max\", \"Min\""
            ),
        ));
    }
    for (i, policy) in
        rules.get("policies").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let p = format!("{path}.policies[{i}]");
        match policy.get("type").and_then(Value::as_str).unwrap_or("") {
            "Pods" | "Percent" => {}
            other => causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("{p}.type"),
                format!("Unsupported value: {other:?}: supported values: \"Percent\", \"Pods\""),
            )),
        }
        let period = policy.get("periodSeconds").and_then(Value::as_i64).unwrap_or(0);
        if period <= 0 {
            invalid(
                causes,
                &format!("{p}.periodSeconds"),
                &json!(period),
                "must be greater than zero",
            );
        } else if period > 1800 {
            invalid(
                causes,
                &format!("{p}.periodSeconds"),
                &json!(period),
                "must be less than or equal to 1800",
            );
        }
        let value = policy.get("value").and_then(Value::as_i64).unwrap_or(0);
        if value <= 0 {
            invalid(causes, &format!("{p}.value"), &json!(value), "must be greater than zero");
        }
    }
}

/// Where `autoscaling/v1` keeps what only `v2` can say, so that a v1 read-modify-write keeps
/// it (upstream's round-trip annotations).
const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The CPU utilization v1 targets when it names none (upstream's default).
const DEFAULT_CPU_UTILIZATION: i64 = 80;

fn is_cpu_utilization(metric: &Value) -> bool {
    s(metric, "/type") == "Resource"
        && s(metric, "/resource/name") == "cpu"
        && metric.pointer("/resource/target/averageUtilization").is_some()
}

fn annotations(object: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let meta = object.get_mut("metadata")?.as_object_mut()?;
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    annotations.as_object_mut()
}

fn take_annotation(object: &mut Value, key: &str) -> Option<Value> {
    let text = annotations(object)?.remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

fn put_annotation(object: &mut Value, key: &str, value: &Value) {
    if let Some(map) = annotations(object) {
        map.insert(key.to_owned(), json!(value.to_string()));
    }
}

fn drop_empty_annotations(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        && meta.get("annotations").and_then(Value::as_object).is_some_and(|a| a.is_empty())
    {
        meta.remove("annotations");
    }
}

/// A stored (`v2`) object as `autoscaling/v1` shows it.
pub(crate) fn v2_to_v1(mut object: Value) -> Value {
    let metrics = object.pointer_mut("/spec/metrics").map(Value::take);
    let behavior = object.pointer_mut("/spec/behavior").map(Value::take);
    let mut others = Vec::new();
    let mut target = None;
    for metric in metrics.as_ref().and_then(Value::as_array).into_iter().flatten() {
        if target.is_none() && is_cpu_utilization(metric) {
            target = metric.pointer("/resource/target/averageUtilization").cloned();
        } else {
            others.push(metric.clone());
        }
    }
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(t) = target {
            spec.insert("targetCPUUtilizationPercentage".into(), t);
        }
    }
    for key in
        [METRICS_ANNOTATION, CURRENT_METRICS_ANNOTATION, CONDITIONS_ANNOTATION, BEHAVIOR_ANNOTATION]
    {
        if let Some(map) = annotations(&mut object) {
            map.remove(key);
        }
    }
    if !others.is_empty() {
        put_annotation(&mut object, METRICS_ANNOTATION, &Value::Array(others));
    }
    if let Some(b) = behavior.filter(|b| !b.is_null()) {
        put_annotation(&mut object, BEHAVIOR_ANNOTATION, &b);
    }
    let current = object.pointer_mut("/status/currentMetrics").map(Value::take);
    let conditions = object.pointer_mut("/status/conditions").map(Value::take);
    let cpu_now = current
        .as_ref()
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter().find(|m| s(m, "/type") == "Resource" && s(m, "/resource/name") == "cpu")
        })
        .and_then(|m| m.pointer("/resource/current/averageUtilization"))
        .cloned();
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(c) = cpu_now {
            status.insert("currentCPUUtilizationPercentage".into(), c);
        }
    }
    // The annotation is needed only when v1's one field cannot say it all.
    let only_cpu = |list: &Vec<Value>| {
        list.len() == 1
            && s(&list[0], "/type") == "Resource"
            && s(&list[0], "/resource/name") == "cpu"
    };
    if let Some(c) = current.filter(|c| c.as_array().is_some_and(|a| !a.is_empty() && !only_cpu(a)))
    {
        put_annotation(&mut object, CURRENT_METRICS_ANNOTATION, &c);
    }
    if let Some(c) = conditions.filter(|c| c.as_array().is_some_and(|a| !a.is_empty())) {
        put_annotation(&mut object, CONDITIONS_ANNOTATION, &c);
    }
    drop_empty_annotations(&mut object);
    object
}

/// An `autoscaling/v1` object as it is stored (`v2`).
pub(crate) fn v1_to_v2(mut object: Value) -> Value {
    let mut metrics = match take_annotation(&mut object, METRICS_ANNOTATION) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    let behavior = take_annotation(&mut object, BEHAVIOR_ANNOTATION);
    let target = object.pointer_mut("/spec/targetCPUUtilizationPercentage").map(Value::take);
    let target = target.and_then(|t| t.as_i64());
    if target.is_some() || metrics.is_empty() {
        let utilization = target.unwrap_or(DEFAULT_CPU_UTILIZATION);
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": utilization}}}));
    }
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("targetCPUUtilizationPercentage");
        spec.insert("metrics".into(), Value::Array(metrics));
        if let Some(b) = behavior {
            spec.insert("behavior".into(), b);
        }
    }
    let current = take_annotation(&mut object, CURRENT_METRICS_ANNOTATION);
    let conditions = take_annotation(&mut object, CONDITIONS_ANNOTATION);
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = status.remove("currentCPUUtilizationPercentage");
        match (current, cpu) {
            (Some(c), _) => {
                status.insert("currentMetrics".into(), c);
            }
            (None, Some(cpu)) => {
                status.insert(
                    "currentMetrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
                );
            }
            (None, None) => {}
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    drop_empty_annotations(&mut object);
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_round_trip_through_storage() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
            "status": {"currentReplicas": 2, "desiredReplicas": 2, "currentCPUUtilizationPercentage": 40}});
        let stored = v1_to_v2(v1.clone());
        assert_eq!(stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert_eq!(
            stored["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            40
        );
        assert!(stored["metadata"].get("annotations").is_none());
        assert_eq!(v2_to_v1(stored), v1);
        // What v1 cannot say survives a v1 read-modify-write in annotations.
        let v2 = json!({"metadata": {"name": "web"}, "spec": {"maxReplicas": 5, "metrics": [
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}});
        let as_v1 = v2_to_v1(v2.clone());
        assert_eq!(as_v1["spec"]["targetCPUUtilizationPercentage"], 70);
        assert!(
            as_v1["metadata"]["annotations"][METRICS_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("memory")
        );
        let back = v1_to_v2(as_v1);
        assert_eq!(back["spec"]["behavior"], v2["spec"]["behavior"]);
        assert_eq!(back["spec"]["metrics"].as_array().unwrap().len(), 2);
        assert_eq!(back["spec"]["metrics"][0]["resource"]["name"], "memory");
        // A v1 object without a target gets upstream's default of 80%.
        let bare = v1_to_v2(json!({"metadata": {"name": "x"}, "spec": {"maxReplicas": 2}}));
        assert_eq!(bare["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
    }
}
