//! The patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes'
//! strategic merge patch with the merge keys of the built-in types.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// Which patch a request carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Parses the media type (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies an RFC 6902 JSON patch, within the request budget of [`crate::limits`]: at most
/// 10,000 operations (413 beyond, as upstream), `copy` operations that together copy at most
/// 3 MiB, and no operation that would nest the document deeper than a stored object may be
/// (422): a few copies of a value into itself double it each time, so a 5 KB patch could
/// otherwise grow an object to gigabytes.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    use crate::limits::{MAX_JSON_PATCH_COPY_BYTES, MAX_JSON_PATCH_OPERATIONS, MAX_OBJECT_DEPTH};
    use json_patch::PatchOperation;
    let count = patch.as_array().map_or(0, Vec::len);
    if count > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}"
        )));
    }
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let unprocessable = |message: String| {
        // A failed `test` op or a missing path is the client's mistake, as upstream reports it.
        let mut err = ApiError::invalid_patch(format!(
            "the server rejected our request due to an error in our request: {message}"
        ));
        err.code = 422;
        err
    };
    let mut out = target.clone();
    let mut copied = 0usize;
    for (index, op) in ops.iter().enumerate() {
        // How deep the value lands: the target path's length plus the value's own depth.
        let placed = match op {
            PatchOperation::Add(o) => Some((o.path.count(), Some(&o.value))),
            PatchOperation::Replace(o) => Some((o.path.count(), Some(&o.value))),
            PatchOperation::Copy(o) => Some((o.path.count(), out.pointer(o.from.as_str()))),
            PatchOperation::Move(o) => Some((o.path.count(), out.pointer(o.from.as_str()))),
            PatchOperation::Remove(_) | PatchOperation::Test(_) => None,
        };
        if let Some((path_len, Some(value))) = placed {
            let budget = MAX_JSON_PATCH_COPY_BYTES.saturating_sub(copied);
            let is_copy = matches!(op, PatchOperation::Copy(_));
            let (depth, bytes) = crate::limits::measure(
                value,
                MAX_OBJECT_DEPTH,
                if is_copy { budget } else { usize::MAX },
            );
            if path_len + depth > MAX_OBJECT_DEPTH {
                crate::limits::drop_flat(out);
                return Err(unprocessable(format!(
                    "operation {index} would nest the object deeper than {MAX_OBJECT_DEPTH} levels"
                )));
            }
            if is_copy {
                copied += bytes;
                if copied > MAX_JSON_PATCH_COPY_BYTES {
                    crate::limits::drop_flat(out);
                    return Err(unprocessable(format!(
                        "operation {index}: the copy operations of this patch would copy more than {MAX_JSON_PATCH_COPY_BYTES} bytes"
                    )));
                }
            }
        }
        // `out` is a copy that is dropped on failure, so the crate's undo log is not needed.
        if let Err(e) = json_patch::patch_unsafe(&mut out, std::slice::from_ref(op)) {
            crate::limits::drop_flat(out);
            return Err(unprocessable(format!(
                "operation '/{index}' failed at path '{}': {}",
                e.path, e.kind
            )));
        }
    }
    Ok(out)
}

impl ApiError {
    fn invalid_patch(message: String) -> ApiError {
        let mut e = ApiError::bad_request(message);
        e.reason = "Invalid";
        e
    }
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// How a list field is merged by a strategic merge patch.
pub(crate) enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeKey(&'static str),
    /// Elements are scalars merged as a set.
    Primitive,
    /// The list is replaced whole.
    Replace,
}

pub(crate) fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    let field = path.rsplit('.').next().unwrap_or(path);
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "imagePullSecrets"
        | "volumes"
        | "env"
        | "resourceClaims"
        | "schedulingGates"
        | "secrets" => ListStrategy::MergeKey("name"),
        "ports" if kind == "Service" && path == "spec.ports" => ListStrategy::MergeKey("port"),
        "ports"
            if path.ends_with("containers.ports")
                || path.ends_with("initContainers.ports")
                || path.ends_with("ephemeralContainers.ports") =>
        {
            ListStrategy::MergeKey("containerPort")
        }
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if kind == "Node" => ListStrategy::MergeKey("type"),
        "hostAliases" | "podIPs" | "hostIPs" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" if path == "metadata.finalizers" => ListStrategy::Primitive,
        "podCIDRs" => ListStrategy::Primitive,
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge_patch(kind: &str, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "error decoding patch: a strategic merge patch must be a JSON object",
        ));
    }
    let mut out = target.clone();
    merge_object(kind, &mut out, patch, "")?;
    Ok(out)
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn merge_object(kind: &str, target: &mut Value, patch: &Value, path: &str) -> Result<(), ApiError> {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch_map.clone();
            replacement.remove("$patch");
            *target = Value::Object(replacement);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "error decoding patch: unknown $patch directive {other:?}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else { return Ok(()) };
    if let Some(retain) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> =
                value.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(items)) = target_map.get_mut(list) {
                items.retain(|item| !remove.contains(&item));
            }
            continue;
        }
        let path = child_path(path, key);
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(obj) if obj.get("$patch").and_then(Value::as_str) == Some("delete") => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let entry = target_map.entry(key.clone()).or_insert(Value::Null);
                merge_object(kind, entry, value, &path)?;
                if entry.is_null() {
                    target_map.remove(key);
                }
            }
            Value::Array(items) => {
                let existing = target_map.remove(key).unwrap_or(Value::Null);
                let order =
                    patch_map.get(&format!("$setElementOrder/{key}")).and_then(Value::as_array);
                let merged = merge_list(kind, existing, items, &path, order)?;
                target_map.insert(key.clone(), merged);
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    kind: &str,
    existing: Value,
    patch: &[Value],
    path: &str,
    order: Option<&Vec<Value>>,
) -> Result<Value, ApiError> {
    let mut current = match existing {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    match list_strategy(kind, path) {
        ListStrategy::Replace => {
            Ok(Value::Array(patch.iter().filter(|v| !is_directive(v)).cloned().collect()))
        }
        ListStrategy::Primitive => {
            for item in patch {
                if !current.contains(item) {
                    current.push(item.clone());
                }
            }
            Ok(Value::Array(current))
        }
        ListStrategy::MergeKey(merge_key) => {
            if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
                return Ok(Value::Array(
                    patch.iter().filter(|v| !is_directive(v)).cloned().collect(),
                ));
            }
            for item in patch {
                let key_value = item.get(merge_key).cloned().ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "error decoding patch: map in list {path} lacks merge key {merge_key:?}"
                    ))
                })?;
                let position = current.iter().position(|c| c.get(merge_key) == Some(&key_value));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    current.retain(|c| c.get(merge_key) != Some(&key_value));
                    continue;
                }
                match position {
                    Some(i) => merge_object(kind, &mut current[i], item, path)?,
                    None => {
                        let mut fresh = Value::Null;
                        merge_object(kind, &mut fresh, item, path)?;
                        current.push(fresh);
                    }
                }
            }
            if let Some(order) = order {
                let rank = |v: &Value| {
                    order
                        .iter()
                        .position(|o| o.get(merge_key) == v.get(merge_key))
                        .unwrap_or(usize::MAX)
                };
                current.sort_by_key(rank);
            }
            Ok(Value::Array(current))
        }
    }
}

fn is_directive(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("$patch"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let live = json!({"spec": {"containers": [{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]}, {"name": "side", "image": "busybox"}], "tolerations": [{"key": "a"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "web"}, {"name": "side"}], "containers": [{"name": "web", "image": "nginx:2"}], "tolerations": [{"key": "b"}]}});
        let out = strategic_merge_patch("Pod", &live, &patch).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(
            out["spec"]["containers"][0]["ports"][0]["containerPort"], 80,
            "unpatched fields stay"
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "side", "other containers stay");
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "b"}]),
            "lists without a strategy are replaced"
        );
    }

    #[test]
    fn strategic_merge_directives() {
        let live = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}}, "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "j"}]}});
        let patch = json!({
            "metadata": {"finalizers": ["b"], "labels": {"x": null}, "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"containers": [{"name": "b", "$patch": "delete"}]}
        });
        let out = strategic_merge_patch("Pod", &live, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "a", "image": "i"}]));
        let replace = json!({"spec": {"$patch": "replace", "containers": []}});
        assert_eq!(
            strategic_merge_patch("Pod", &live, &replace).unwrap()["spec"],
            json!({"containers": []})
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_merge_patch_replaces_lists() {
        let live = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = strategic_merge_patch("Service", &live, &patch).unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(merge_patch(&live, &patch)["spec"]["ports"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn json_patch_test_failure_is_invalid() {
        let live = json!({"a": 1});
        assert_eq!(
            json_patch(&live, &json!([{"op": "replace", "path": "/a", "value": 2}])).unwrap()["a"],
            2
        );
        assert_eq!(
            json_patch(&live, &json!([{"op": "test", "path": "/a", "value": 3}])).unwrap_err().code,
            422
        );
        assert_eq!(json_patch(&live, &json!({"op": "x"})).unwrap_err().code, 400);
    }
}
