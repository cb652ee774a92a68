//! LimitRanger (mutating and validating): the namespace's LimitRanges give a new pod's
//! containers the default requests and limits they leave out (noted in the
//! `kubernetes.io/limit-ranger` annotation, as upstream), then hold containers, pods and
//! claims within `min`, `max` and `maxLimitRequestRatio` — 403 with upstream's messages
//! otherwise. The rules are pure functions of the LimitRange items and the object.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult};

/// The LimitRanger plugin.
pub struct LimitRanger;

/// The annotation recording which defaults were set.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn quantity(v: &Value) -> Option<f64> {
    v.as_str().and_then(crate::quantity::value)
}

fn shown(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The items of `type` in the namespace's LimitRanges.
fn items<'v>(ranges: &'v [Value], kind: &str) -> Vec<&'v Map<String, Value>> {
    ranges
        .iter()
        .flat_map(|r| r.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten())
        .filter_map(Value::as_object)
        .filter(|i| i.get("type").and_then(Value::as_str) == Some(kind))
        .collect()
}

/// Sets the containers' missing requests and limits from the `Container` items' defaults;
/// returns what the annotation says (empty: nothing set).
pub fn apply_defaults(pod: &mut Value, ranges: &[Value]) -> String {
    let mut notes: Vec<String> = Vec::new();
    let container_items = items(ranges, "Container");
    for list in ["initContainers", "containers"] {
        let Some(containers) =
            pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers.iter_mut() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            let mut set_requests: Vec<String> = Vec::new();
            let mut set_limits: Vec<String> = Vec::new();
            for item in &container_items {
                for (field, set) in
                    [("default", &mut set_limits), ("defaultRequest", &mut set_requests)]
                {
                    let kind = if field == "default" { "limits" } else { "requests" };
                    for (resource, value) in
                        item.get(field).and_then(Value::as_object).into_iter().flatten()
                    {
                        let Some(c) = c.as_object_mut() else { continue };
                        let resources = c.entry("resources").or_insert_with(|| json!({}));
                        if !resources.is_object() {
                            *resources = json!({});
                        }
                        let Some(r) = resources.as_object_mut() else { continue };
                        let map = r.entry(kind).or_insert_with(|| json!({}));
                        if !map.is_object() {
                            *map = json!({});
                        }
                        let Some(m) = r.get_mut(kind).and_then(Value::as_object_mut) else {
                            continue;
                        };
                        if !m.contains_key(resource) {
                            m.insert(resource.clone(), value.clone());
                            if !set.contains(resource) {
                                set.push(resource.clone());
                            }
                        }
                    }
                }
            }
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {} {name}",
                    set_requests.join(", "),
                    if list == "containers" { "container" } else { "init container" }
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!(
                    "{} limit for {} {name}",
                    set_limits.join(", "),
                    if list == "containers" { "container" } else { "init container" }
                ));
            }
        }
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("LimitRanger plugin set: {}", notes.join("; "))
    }
}

/// Checks one set of requests and limits against an item: its violations, worded as
/// upstream's.
fn check(
    item: &Map<String, Value>,
    what: &str,
    requests: &Map<String, Value>,
    limits: &Map<String, Value>,
    out: &mut Vec<String>,
) {
    for (resource, min) in item.get("min").and_then(Value::as_object).into_iter().flatten() {
        let Some(floor) = quantity(min) else { continue };
        match requests.get(resource) {
            Some(r) if quantity(r).is_some_and(|v| v < floor) => out.push(format!(
                "minimum {resource} usage per {what} is {}, but request is {}",
                shown(min),
                shown(r)
            )),
            Some(_) => {}
            None => out.push(format!(
                "minimum {resource} usage per {what} is {}.  No request is specified",
                shown(min)
            )),
        }
        if let Some(l) = limits.get(resource)
            && quantity(l).is_some_and(|v| v < floor)
        {
            out.push(format!(
                "minimum {resource} usage per {what} is {}, but limit is {}",
                shown(min),
                shown(l)
            ));
        }
    }
    for (resource, max) in item.get("max").and_then(Value::as_object).into_iter().flatten() {
        let Some(ceiling) = quantity(max) else { continue };
        match limits.get(resource) {
            Some(l) if quantity(l).is_some_and(|v| v > ceiling) => out.push(format!(
                "maximum {resource} usage per {what} is {}, but limit is {}",
                shown(max),
                shown(l)
            )),
            Some(_) => {}
            None => out.push(format!(
                "maximum {resource} usage per {what} is {}.  No limit is specified",
                shown(max)
            )),
        }
        if let Some(r) = requests.get(resource)
            && quantity(r).is_some_and(|v| v > ceiling)
        {
            out.push(format!(
                "maximum {resource} usage per {what} is {}, but request is {}",
                shown(max),
                shown(r)
            ));
        }
    }
    for (resource, ratio) in
        item.get("maxLimitRequestRatio").and_then(Value::as_object).into_iter().flatten()
    {
        let Some(most) = quantity(ratio) else { continue };
        let (Some(l), Some(r)) =
            (limits.get(resource).and_then(quantity), requests.get(resource).and_then(quantity))
        else {
            if limits.contains_key(resource) || requests.contains_key(resource) {
                out.push(format!("{resource} max limit to request ratio per {what} is {}, but no request is specified or request is 0", shown(ratio)));
            }
            continue;
        };
        if r == 0.0 {
            out.push(format!("{resource} max limit to request ratio per {what} is {}, but no request is specified or request is 0", shown(ratio)));
        } else if l / r > most {
            out.push(format!("{resource} max limit to request ratio per {what} is {}, but provided ratio is {:.6}", shown(ratio), l / r));
        }
    }
}

fn map_at(v: &Value, pointer: &str) -> Map<String, Value> {
    v.pointer(pointer).and_then(Value::as_object).cloned().unwrap_or_default()
}

/// What a pod (or claim) breaks of the namespace's LimitRanges.
pub fn violations(plural: &str, object: &Value, ranges: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    match plural {
        "pods" => {
            let containers: Vec<&Value> = ["containers", "initContainers"]
                .iter()
                .flat_map(|l| {
                    object
                        .pointer(&format!("/spec/{l}"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .collect();
            for item in items(ranges, "Container") {
                for c in &containers {
                    check(
                        item,
                        "Container",
                        &map_at(c, "/resources/requests"),
                        &map_at(c, "/resources/limits"),
                        &mut out,
                    );
                }
            }
            for item in items(ranges, "Pod") {
                // The pod's totals: its containers summed (as upstream's pod item does).
                let mut totals = [Map::new(), Map::new()];
                for (i, kind) in ["requests", "limits"].iter().enumerate() {
                    let mut sums: std::collections::BTreeMap<String, f64> =
                        std::collections::BTreeMap::new();
                    for c in object
                        .pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for (r, q) in map_at(c, &format!("/resources/{kind}")) {
                            *sums.entry(r).or_default() += quantity(&q).unwrap_or(0.0);
                        }
                    }
                    for (r, v) in sums {
                        totals[i].insert(r, json!(crate::quantity::format_value(v)));
                    }
                }
                check(item, "Pod", &totals[0], &totals[1], &mut out);
            }
        }
        "persistentvolumeclaims" => {
            for item in items(ranges, "PersistentVolumeClaim") {
                check(
                    item,
                    "PersistentVolumeClaim",
                    &map_at(object, "/spec/resources/requests"),
                    &map_at(object, "/spec/resources/limits"),
                    &mut out,
                );
            }
        }
        _ => {}
    }
    out
}

async fn ranges_of(objects: &dyn Objects, namespace: &str) -> ApiResult<Vec<Value>> {
    let Some(rt) = objects.registry().lookup("", "v1", "limitranges") else {
        return Ok(Vec::new());
    };
    objects.list(&rt, Some(namespace)).await
}

fn applies_to(attributes: &Attributes<'_>) -> bool {
    attributes.subresource.is_none()
        && attributes.namespace.is_some()
        && ((attributes.operation == Operation::Create && attributes.is("", "Pod"))
            || (matches!(attributes.operation, Operation::Create | Operation::Update)
                && attributes.is("", "PersistentVolumeClaim")))
}

impl Mutating for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        applies_to(attributes) && attributes.is("", "Pod")
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let (Some(object), Some(namespace)) = (object, attributes.namespace) else {
                return Ok(None);
            };
            let ranges = ranges_of(objects, namespace).await?;
            if ranges.is_empty() {
                return Ok(None);
            }
            let note = apply_defaults(object, &ranges);
            if !note.is_empty()
                && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
            {
                let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
                if !annotations.is_object() {
                    *annotations = json!({});
                }
                if let Some(a) = annotations.as_object_mut() {
                    a.insert(ANNOTATION.into(), json!(note));
                }
            }
            Ok(None)
        })
    }
}

impl Validating for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        applies_to(attributes)
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
            let ranges = ranges_of(objects, namespace).await?;
            if ranges.is_empty() {
                return Ok(());
            }
            let found = violations(&attributes.rt.plural, object, &ranges);
            match found.as_slice() {
                [] => Ok(()),
                [one] => Err(ApiError::forbidden(format!(
                    "{} {:?} is forbidden: {one}",
                    attributes.rt.plural, attributes.name
                ))),
                many => Err(ApiError::forbidden(format!(
                    "{} {:?} is forbidden: [{}]",
                    attributes.rt.plural,
                    attributes.name,
                    many.join(", ")
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Value {
        json!({"spec": {"limits": [{"type": "Container",
            "min": {"cpu": "100m", "memory": "10Mi"}, "max": {"cpu": "500m", "memory": "500Mi"},
            "default": {"cpu": "500m", "memory": "500Mi"}, "defaultRequest": {"cpu": "100m", "memory": "200Mi"},
            "maxLimitRequestRatio": {"cpu": "5"}}]}})
    }

    #[test]
    fn defaults_fill_what_containers_leave_out_and_are_noted() {
        let mut pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "300m"}}}]}});
        let note = apply_defaults(&mut pod, &[range()]);
        assert_eq!(
            pod.pointer("/spec/containers/0/resources"),
            Some(
                &json!({"limits": {"cpu": "500m", "memory": "500Mi"}, "requests": {"cpu": "100m", "memory": "200Mi"}})
            )
        );
        assert_eq!(pod.pointer("/spec/containers/1/resources/requests/cpu"), Some(&json!("300m")));
        assert_eq!(
            note,
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; cpu, memory limit for container b"
        );
        assert!(violations("pods", &pod, &[range()]).is_empty());
    }

    #[test]
    fn bounds_and_ratios_are_enforced_with_upstreams_words() {
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"cpu": "1", "memory": "200Mi"}}}]}});
        let found = violations("pods", &pod, &[range()]);
        assert!(
            found.contains(
                &"minimum cpu usage per Container is 100m, but request is 50m".to_owned()
            ),
            "{found:?}"
        );
        assert!(
            found.contains(&"maximum cpu usage per Container is 500m, but limit is 1".to_owned()),
            "{found:?}"
        );
        assert!(found.contains(&"cpu max limit to request ratio per Container is 5, but provided ratio is 20.000000".to_owned()), "{found:?}");
        let claims = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}}]}});
        let small = json!({"spec": {"resources": {"requests": {"storage": "500Mi"}}}});
        assert_eq!(
            violations("persistentvolumeclaims", &small, &[claims]),
            vec![
                "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"
                    .to_owned()
            ]
        );
    }
}
