//! Per-type rules applied on every write: decoding through the `k8s-openapi` type (with
//! strict/warn/ignore handling of unknown fields), validation of metadata and required fields,
//! and upstream's defaulting for what users hit most.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;
use crate::status::{ApiError, Cause};

/// How unknown or duplicate fields in a request are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Fail with 400.
    Strict,
    /// Succeed with `Warning` headers.
    Warn,
    /// Drop silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter; empty means upstream's default for the API (Warn).
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value.unwrap_or("") {
            "Strict" => Ok(FieldValidation::Strict),
            "Warn" | "" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict, got {other:?}"
            ))),
        }
    }
}

/// Decodes `object` through its built-in type: field types are checked (a wrong type is 400),
/// unknown fields are reported according to `validation`, and the canonical form is returned.
/// Custom resources pass through unchanged.
pub fn canonicalize(
    rt: &ResourceType,
    object: Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let Some(codec) = rt.codec else { return Ok((object, Vec::new())) };
    let original = object.clone();
    let canonical = codec(object)
        .map_err(|e| ApiError::bad_request(format!("error decoding {}: {e}", rt.kind)))?;
    let mut unknown = Vec::new();
    unknown_fields(&original, &canonical, &mut String::new(), &mut unknown);
    let warnings: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
        .collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            let list = warnings.join(", ");
            Err(ApiError::bad_request(format!("strict decoding error: {list}")))
        }
        FieldValidation::Warn => Ok((canonical, warnings)),
        _ => Ok((canonical, Vec::new())),
    }
}

/// [`canonicalize`] for a write to the `status` subresource: the registry keeps only
/// `status` of it (everything else is carried over from the stored object, already
/// canonical), so only `status` is decoded, not the whole object once more (every served
/// type decodes without its spec; the unit test checks pods and CRDs).
pub fn canonicalize_status(
    rt: &ResourceType,
    mut object: Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let Some(map) = object.as_object_mut() else { return canonicalize(rt, object, validation) };
    let Some(status) = map.remove("status") else { return Ok((object, Vec::new())) };
    let mut probe = serde_json::Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = map.get(key) {
            probe.insert(key.into(), v.clone());
        }
    }
    probe.insert("status".into(), status);
    let (mut canonical, warnings) = canonicalize(rt, Value::Object(probe), validation)?;
    if let Some(status) = canonical.as_object_mut().and_then(|c| c.remove("status")) {
        map.insert("status".into(), status);
    }
    Ok((object, warnings))
}

/// Collects the paths of `input` that `output` (its decoded form) lost. The path is one
/// buffer grown and cut back while walking: most objects have no unknown field, and a
/// string per visited field was a noticeable share of every write.
fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    use std::fmt::Write;
    let len = path.len();
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                if value.is_null() {
                    continue;
                }
                path.push('.');
                path.push_str(key);
                match o.get(key) {
                    None => out.push(path.clone()),
                    Some(next) => unknown_fields(value, next, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (a, b)) in i.iter().zip(o.iter()).enumerate() {
                let _ = write!(path, "[{idx}]");
                unknown_fields(a, b, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Validates a name for `rt` as upstream does (DNS-1123 subdomain for most types, DNS-1123
/// label for namespaces, DNS-1035 label for services).
pub fn validate_name(rt: &ResourceType, name: &str) -> Option<Cause> {
    let (ok, rule) = match rt.kind.as_str() {
        "Namespace" => (
            is_dns_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        "Service" => (
            is_dns1035_label(name),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
        // RBAC names are path segments, so only the path-unsafe characters are banned.
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => (
            !name.is_empty()
                && !name.contains('/')
                && !name.contains('%')
                && name != "."
                && name != "..",
            "may not contain '/' or '%'",
        ),
        _ => (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
    };
    (!ok).then(|| {
        Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {rule}"),
        )
    })
}

const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// Most bytes a ConfigMap's or Secret's data may hold (upstream's `MaxSecretSize`).
pub const CONFIG_DATA_LIMIT: usize = 1024 * 1024;

/// Validates labels, annotations and the name of `object`.
pub fn validate_metadata(rt: &ResourceType, object: &Value, causes: &mut Vec<Cause>) {
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Some(cause) = validate_name(rt, name) {
        causes.push(cause);
    }
    if let Some(labels) = meta.and_then(|m| m.get("labels")).and_then(Value::as_object) {
        for (k, v) in labels {
            if !valid_qualified_name(k) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)")));
            }
            let v = v.as_str().unwrap_or("");
            if !valid_label_value(v) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)")));
            }
        }
    }
    if let Some(annotations) = meta.and_then(|m| m.get("annotations")).and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !valid_qualified_name(k) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.annotations", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'")));
            }
        }
        if total > ANNOTATIONS_LIMIT {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than {ANNOTATIONS_LIMIT} bytes"),
            ));
        }
    }
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.' starting and ending
/// alphanumeric.
pub(crate) fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, '-', '_' or '.' starting and ending alphanumeric.
pub(crate) fn valid_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// Validates the fields users most often get wrong, per type.
pub fn validate_spec(rt: &ResourceType, object: &Value, causes: &mut Vec<Cause>) {
    match rt.kind.as_str() {
        // Upstream's limit on what a ConfigMap or Secret carries (1 MiB): they are mounted
        // into pods and cached by every node, so the object limit alone is too generous.
        "ConfigMap" if rt.is_builtin() => {
            let size = |field: &str| {
                object.get(field).and_then(Value::as_object).map_or(0, |m| {
                    m.values().map(|v| v.as_str().map_or(0, str::len)).sum::<usize>()
                })
            };
            // binaryData is base64 in JSON; its decoded size is three quarters of it.
            let total = size("data") + size("binaryData") / 4 * 3;
            if total > CONFIG_DATA_LIMIT {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    "[]",
                    format!("Too long: may not be more than {CONFIG_DATA_LIMIT} bytes"),
                ));
            }
        }
        "Secret" if rt.is_builtin() => {
            let decoded = |field: &str, base64: bool| {
                object.get(field).and_then(Value::as_object).map_or(0, |m| {
                    m.values()
                        .map(|v| {
                            v.as_str().map_or(0, |s| if base64 { s.len() / 4 * 3 } else { s.len() })
                        })
                        .sum::<usize>()
                })
            };
            if decoded("data", true) + decoded("stringData", false) > CONFIG_DATA_LIMIT {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    "data",
                    format!("Too long: may not be more than {CONFIG_DATA_LIMIT} bytes"),
                ));
            }
        }
        "Pod" => validate_pod_spec(object.get("spec"), "spec", causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            let spec = object.get("spec");
            if spec.and_then(|s| s.get("selector")).is_none() {
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
                        "Invalid value: `selector` does not match template `labels`",
                    ));
                }
            }
        }
        "Service" => {
            if let Some(ports) = object.pointer("/spec/ports").and_then(Value::as_array) {
                for (i, port) in ports.iter().enumerate() {
                    let p = port.get("port").and_then(Value::as_i64).unwrap_or(0);
                    if !(1..=65535).contains(&p) {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("spec.ports[{i}].port"),
                            format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
                        ));
                    }
                }
            }
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(map) = object.get(field).and_then(Value::as_object) {
                    for key in map.keys() {
                        let ok = !key.is_empty()
                            && key.len() <= 253
                            && key
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                            && key != "."
                            && key != "..";
                        if !ok {
                            causes.push(Cause::new("FieldValueInvalid", &format!("{field}[{key}]"), format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
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

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

fn default_pod_spec(spec: &mut Value) {
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
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
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

/// Applies upstream's defaults to a new or updated object.
pub fn apply_defaults(rt: &ResourceType, object: &mut Value) {
    match rt.kind.as_str() {
        "Pod" => {
            if let Some(spec) = object.get_mut("spec") {
                default_pod_spec(spec);
            }
            let Some(obj) = object.as_object_mut() else { return };
            let status = obj.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                set_default(status, "phase", json!("Pending"));
                set_default(status, "qosClass", json!("BestEffort"));
            }
        }
        "Deployment" => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            // Field by field, as upstream: an empty `strategy: {}` still gets its type.
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(strategy) = strategy.as_object_mut() {
                set_default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(rolling) = rolling.as_object_mut() {
                        set_default(rolling, "maxUnavailable", json!("25%"));
                        set_default(rolling, "maxSurge", json!("25%"));
                    }
                }
            }
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        "ReplicaSet" | "StatefulSet" => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
            set_default(spec, "replicas", json!(1));
            if rt.kind == "StatefulSet" {
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
            }
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        "DaemonSet" => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        "Job" => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            if spec.get("parallelism").is_none() {
                spec.insert("parallelism".into(), json!(1));
            }
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        "Service" => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if p.get("targetPort").is_none()
                        && let Some(port) = p.get("port").cloned()
                    {
                        p.insert("targetPort".into(), port);
                    }
                }
            }
        }
        "Namespace" => {
            let Some(obj) = object.as_object_mut() else { return };
            let spec = obj.entry("spec").or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            let status = obj.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                set_default(status, "phase", json!("Active"));
            }
        }
        "Secret" => {
            let Some(obj) = object.as_object_mut() else { return };
            set_default(obj, "type", json!("Opaque"));
            // stringData is write-only: merge it into data, base64-encoded.
            if let Some(Value::Object(string_data)) = obj.remove("stringData") {
                use base64::Engine;
                let data = obj.entry("data").or_insert_with(|| json!({}));
                if let Some(data) = data.as_object_mut() {
                    for (k, v) in string_data {
                        let text = v.as_str().unwrap_or("").to_owned();
                        data.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

/// Whether two objects differ outside `metadata` and `status` (what bumps `generation`).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else { return old != new };
    // Compared in place: everything but metadata and status.
    let counted = |k: &String| k != "metadata" && k != "status";
    old.keys().filter(|k| counted(k)).count() != new.keys().filter(|k| counted(k)).count()
        || old.iter().filter(|(k, _)| counted(k)).any(|(k, v)| new.get(k) != Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn status_writes_decode_status_and_still_reject_bad_status() {
        let registry = Registry::new();
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}});
        let (out, _) = canonicalize_status(&pods, pod.clone(), FieldValidation::Strict).unwrap();
        assert_eq!(out, canonicalize(&pods, pod, FieldValidation::Strict).unwrap().0);
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": 7}});
        assert!(canonicalize_status(&pods, bad, FieldValidation::Strict).is_err());
        // A type with a required spec (a CRD) still decodes from its status alone.
        let crds =
            registry.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"acceptedNames": {"plural": "widgets", "kind": "Widget"}, "storedVersions": ["v1"]}});
        let (out, _) = canonicalize_status(&crds, crd.clone(), FieldValidation::Strict).unwrap();
        assert_eq!(out["status"]["storedVersions"], serde_json::json!(["v1"]));
    }

    #[test]
    fn names_follow_dns_rules() {
        let registry = Registry::new();
        let cm = registry.lookup("", "v1", "configmaps").unwrap();
        let svc = registry.lookup("", "v1", "services").unwrap();
        let ns = registry.lookup("", "v1", "namespaces").unwrap();
        assert!(validate_name(&cm, "a.b-c").is_none());
        assert!(validate_name(&cm, "Upper").is_some());
        assert!(validate_name(&cm, &"a".repeat(254)).is_some());
        assert!(validate_name(&svc, "1abc").is_some());
        assert!(validate_name(&ns, "a.b").is_some());
    }

    #[test]
    fn unknown_fields_follow_field_validation() {
        let registry = Registry::new();
        let cm = registry.lookup("", "v1", "configmaps").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1});
        let err = canonicalize(&cm, obj.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("unknown field \"bogus\""), "{}", err.message);
        let (out, warnings) = canonicalize(&cm, obj.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"bogus\""]);
        assert!(out.get("bogus").is_none());
        let (_, warnings) = canonicalize(&cm, obj, FieldValidation::Ignore).unwrap();
        assert!(warnings.is_empty());
        let wrong_type = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 5}});
        assert_eq!(canonicalize(&cm, wrong_type, FieldValidation::Ignore).unwrap_err().code, 400);
        // Nested unknown fields are named by their full path, list items by index, in
        // the order they appear, and known siblings after them are not reported.
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "oops": 1},
        "spec": {"containers": [
            {"name": "a", "image": "x"},
            {"name": "b", "image": "y", "imagex": "z", "ports": [{"containerPort": 80, "hostIPx": "1"}]}
        ]}});
        let (_, warnings) = canonicalize(&pods, pod, FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            [
                "unknown field \"metadata.oops\"",
                "unknown field \"spec.containers[1].imagex\"",
                "unknown field \"spec.containers[1].ports[0].hostIPx\"",
            ]
        );
    }

    #[test]
    fn pull_policy_defaults_by_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
