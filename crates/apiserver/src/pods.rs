//! What the API server does for pods beyond generic storage: the `binding` subresource the
//! scheduler assigns nodes through, and the `eviction` subresource drains go through (checking
//! PodDisruptionBudgets).

use serde_json::{Value, json};

use crate::rest::{DeleteOptions, ListOptions, Rest, WriteOptions};
use crate::selectors::LabelSelector;
use crate::status::{ApiError, ApiResult, Cause};

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

fn pods_type(rest: &Rest) -> ApiResult<std::sync::Arc<crate::resources::ResourceType>> {
    rest.registry.lookup("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not served"))
}

/// `POST pods/{name}/binding`: assigns the pod to `target.name` unless it already has a node
/// or is being deleted (409 then, so two schedulers cannot both bind it), and marks it
/// scheduled.
pub async fn bind(
    rest: &Rest,
    namespace: &str,
    name: &str,
    body: &Value,
    options: &WriteOptions,
) -> ApiResult<Value> {
    let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::new("FieldValueRequired", "target.name", "Required value")],
        ));
    }
    let kind = body.pointer("/target/kind").and_then(Value::as_str).unwrap_or("Node");
    if !kind.is_empty() && kind != "Node" {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::new(
                "FieldValueNotSupported",
                "target.kind",
                format!("Unsupported value: \"{kind}\": supported values: \"Node\""),
            )],
        ));
    }
    if let Some(body_name) = body.pointer("/metadata/name").and_then(Value::as_str)
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let annotations = body.pointer("/metadata/annotations").cloned();
    // The pod itself is not validated again by a binding (see `Rest::guaranteed_update`):
    // what the binding brings into it, its annotations, is checked here, alone and then
    // merged into the pod's (their total size is bounded).
    if let Some(annotations) = &annotations {
        check_annotations(name, annotations)?;
    }
    let rt = pods_type(rest)?;
    let now =
        jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now());
    rest.update_with(&rt, Some(namespace), name, options, Some("binding"), |current| {
        let mut pod = current.clone();
        if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(existing) =
            pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(Value::Object(extra)) = &annotations {
            let meta = pod["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::internal("pod without metadata"))?;
            let target = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(target) = target.as_object_mut() {
                for (k, v) in extra {
                    target.insert(k.clone(), v.clone());
                }
            }
            check_annotations(name, target)?;
        }
        set_condition(
            &mut pod,
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                   "lastTransitionTime": now.to_string()}),
        );
        Ok(pod)
    })
    .await?;
    Ok(success(201))
}

/// Upstream's metadata rules for `annotations` (keys, total size), as a Binding's 422.
fn check_annotations(name: &str, annotations: &Value) -> ApiResult<()> {
    let mut causes = Vec::new();
    if annotations.is_object() {
        let probe = json!({"metadata": {"name": name, "annotations": annotations}});
        crate::strategy::validate_metadata(
            crate::strategy::NameRule::Subdomain,
            &probe,
            &mut causes,
        );
    } else if !annotations.is_null() {
        causes.push(Cause::new("FieldValueInvalid", "metadata.annotations", "must be a map"));
    }
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid("Binding", "", name, causes)) }
}

/// Replaces the pod condition of the same type, or adds it.
fn set_condition(pod: &mut Value, condition: Value) {
    let Some(status) = pod.as_object_mut().map(|o| o.entry("status").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(status) = status.as_object_mut() else { return };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = conditions.as_array_mut() else { return };
    let kind = condition.get("type").cloned();
    match list.iter_mut().find(|c| c.get("type") == kind.as_ref()) {
        Some(existing) => *existing = condition,
        None => list.push(condition),
    }
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn is_terminal(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// An int-or-percent of `total`, rounded up as upstream does for PodDisruptionBudgets.
fn scaled(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((percent * total + 99) / 100)
        }
        _ => None,
    }
}

/// `POST pods/{name}/eviction`: deletes the pod unless that would take a PodDisruptionBudget
/// below what it allows (429 then, which `kubectl drain` retries).
pub async fn evict(
    rest: &Rest,
    namespace: &str,
    name: &str,
    body: &Value,
    mut delete: DeleteOptions,
) -> ApiResult<Value> {
    if let Some(body_name) = body.pointer("/metadata/name").and_then(Value::as_str)
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} != {body_name}"
        )));
    }
    if let Some(options) = body.get("deleteOptions").filter(|o| o.is_object()) {
        if let Some(g) = options.get("gracePeriodSeconds").and_then(Value::as_i64) {
            delete.grace_period_seconds = Some(g);
        }
        if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
            delete.precondition_uid = Some(uid.to_owned());
        }
        if let Some(d) = options.get("dryRun").and_then(Value::as_array) {
            delete.dry_run |= d.iter().any(|v| v == "All");
        }
    }
    let rt = pods_type(rest)?;
    let pod = rest.get(&rt, Some(namespace), name).await?.object;
    // A pod that is finished or already going costs no budget; an unready one is weighed by
    // the budget's unhealthyPodEvictionPolicy.
    let free = is_terminal(&pod)
        || pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
    if !free {
        check_budgets(rest, namespace, &pod, is_ready(&pod)).await?;
    }
    rest.delete(&rt, Some(namespace), name, &delete).await?;
    Ok(success(201))
}

async fn check_budgets(rest: &Rest, namespace: &str, pod: &Value, ready: bool) -> ApiResult<()> {
    let Some(pdbs) = rest.registry.lookup("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let mut matching = Vec::new();
    for pdb in rest.list(&pdbs, Some(namespace), &ListOptions::default()).await?.objects()? {
        let Some(selector) = pdb.pointer("/spec/selector") else { continue };
        let selector = LabelSelector::from_object(selector)
            .map_err(|e| ApiError::internal(format!("PodDisruptionBudget selector: {e}")))?;
        // In policy/v1 an empty selector covers every pod of the namespace.
        if selector.matches(pod) {
            matching.push((pdb, selector));
        }
    }
    if matching.len() > 1 {
        return Err(ApiError::internal(
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        ));
    }
    let Some((pdb, selector)) = matching.pop() else { return Ok(()) };
    let pods = pods_type(rest)?;
    let options = ListOptions { labels: selector, ..ListOptions::default() };
    let covered: Vec<Value> = rest
        .list(&pods, Some(namespace), &options)
        .await?
        .objects()?
        .into_iter()
        .filter(|p| !is_terminal(p))
        .collect();
    let expected = covered.len() as i64;
    let healthy = covered
        .iter()
        .filter(|p| {
            is_ready(p) && p.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null)
        })
        .count() as i64;
    let desired_healthy = if let Some(min) = pdb.pointer("/spec/minAvailable") {
        scaled(min, expected).unwrap_or(0)
    } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
        expected - scaled(max, expected).unwrap_or(0)
    } else {
        0
    };
    // An unready pod takes nothing from the healthy count: `AlwaysAllow` lets it go at
    // once, the default `IfHealthyBudget` only while the budget holds.
    let allowed = if ready {
        healthy > desired_healthy
    } else {
        pdb.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str)
            == Some("AlwaysAllow")
            || healthy >= desired_healthy
    };
    if !allowed {
        let pdb_name = pdb.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let mut error = ApiError::too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
        error.causes.push(Cause::new(
            "DisruptionBudget",
            "",
            format!(
                "The disruption budget {pdb_name} needs {desired_healthy} healthy pods and has {healthy} currently"
            ),
        ));
        // No Retry-After, as upstream: clients (kubectl drain) retry on their own schedule
        // and within their own timeout, which a server-set delay would override.
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_scale_percentages_up() {
        assert_eq!(scaled(&json!(2), 10), Some(2));
        assert_eq!(scaled(&json!("50%"), 3), Some(2));
        assert_eq!(scaled(&json!("10%"), 10), Some(1));
        assert_eq!(scaled(&json!("x"), 10), None);
    }

    #[test]
    fn binding_annotations_follow_the_metadata_rules() {
        assert!(check_annotations("p", &json!({"a.example/b": "c"})).is_ok());
        assert!(check_annotations("p", &Value::Null).is_ok());
        assert_eq!(check_annotations("p", &json!({"not a key!": "v"})).unwrap_err().code, 422);
        assert_eq!(check_annotations("p", &json!("text")).unwrap_err().code, 422);
        // Over the total size once merged into the pod's own.
        let big = "x".repeat(200 * 1024);
        assert!(check_annotations("p", &json!({"a": big})).is_ok());
        let merged = json!({"a": big, "b": big});
        assert_eq!(check_annotations("p", &merged).unwrap_err().code, 422);
    }

    #[test]
    fn conditions_are_replaced_by_type() {
        let mut pod =
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False"}]}});
        set_condition(&mut pod, json!({"type": "PodScheduled", "status": "True"}));
        set_condition(&mut pod, json!({"type": "Ready", "status": "False"}));
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}])
        );
    }
}
