//! Decoding a request's object through its built-in `k8s-openapi` type: field types checked
//! (a wrong type is 400) and unknown fields handled as `fieldValidation` asks. Custom
//! resources pass through unchanged.

use serde_json::Value;

use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::strategy::FieldValidation;

/// Go's `omitempty` on ObjectMeta: upstream never writes an empty list or map there, so the
/// last finalizer, owner, label or annotation removed leaves no `[]` or `{}` behind.
fn omit_empty_metadata(object: &mut Value) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    for key in ["finalizers", "ownerReferences", "labels", "annotations"] {
        let empty = meta.get(key).is_some_and(|v| {
            v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(serde_json::Map::is_empty)
        });
        if empty {
            meta.remove(key);
        }
    }
}

impl ResourceType {
    /// Decodes `object` through its built-in type: field types are checked (a wrong type is 400),
    /// unknown fields are reported according to `validation`, and the canonical form is returned.
    /// Custom resources pass through unchanged.
    pub fn canonicalize(
        &self,
        object: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let Some(codec) = self.codec else {
            let mut object = object;
            omit_empty_metadata(&mut object);
            return Ok((object, Vec::new()));
        };
        let mut canonical = codec(&object)
            .map_err(|e| ApiError::bad_request(format!("error decoding {}: {e}", self.kind)))?;
        let mut unknown = Vec::new();
        unknown_fields(&object, &canonical, &mut String::new(), &mut unknown);
        omit_empty_metadata(&mut canonical);
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
        &self,
        mut object: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let Some(map) = object.as_object_mut() else {
            return self.canonicalize(object, validation);
        };
        let Some(status) = map.remove("status") else { return Ok((object, Vec::new())) };
        let mut probe = serde_json::Map::new();
        for key in ["apiVersion", "kind"] {
            if let Some(v) = map.get(key) {
                probe.insert(key.into(), v.clone());
            }
        }
        probe.insert("status".into(), status);
        let (mut canonical, warnings) = self.canonicalize(Value::Object(probe), validation)?;
        if let Some(status) = canonical.as_object_mut().and_then(|c| c.remove("status")) {
            map.insert("status".into(), status);
        }
        Ok((object, warnings))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn status_writes_decode_status_and_still_reject_bad_status() {
        let registry = Registry::new();
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}});
        let (out, _) = pods.canonicalize_status(pod.clone(), FieldValidation::Strict).unwrap();
        assert_eq!(out, pods.canonicalize(pod, FieldValidation::Strict).unwrap().0);
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": 7}});
        assert!(pods.canonicalize_status(bad, FieldValidation::Strict).is_err());
        // A type with a required spec (a CRD) still decodes from its status alone.
        let crds =
            registry.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"acceptedNames": {"plural": "widgets", "kind": "Widget"}, "storedVersions": ["v1"]}});
        let (out, _) = crds.canonicalize_status(crd.clone(), FieldValidation::Strict).unwrap();
        assert_eq!(out["status"]["storedVersions"], serde_json::json!(["v1"]));
    }

    #[test]
    fn empty_metadata_lists_and_maps_are_omitted_as_upstream_writes_them() {
        let registry = Registry::new();
        let cm = registry.lookup("", "v1", "configmaps").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x",
            "finalizers": [], "labels": {}, "annotations": {"a": "b"}, "ownerReferences": []}});
        let (out, warnings) = cm.canonicalize(obj, FieldValidation::Strict).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(out["metadata"], json!({"name": "x", "annotations": {"a": "b"}}));
    }

    #[test]
    fn unknown_fields_follow_field_validation() {
        let registry = Registry::new();
        let cm = registry.lookup("", "v1", "configmaps").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1});
        let err = cm.canonicalize(obj.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("unknown field \"bogus\""), "{}", err.message);
        let (out, warnings) = cm.canonicalize(obj.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"bogus\""]);
        assert!(out.get("bogus").is_none());
        let (_, warnings) = cm.canonicalize(obj, FieldValidation::Ignore).unwrap();
        assert!(warnings.is_empty());
        let wrong_type = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 5}});
        assert_eq!(cm.canonicalize(wrong_type, FieldValidation::Ignore).unwrap_err().code, 400);
        // Nested unknown fields are named by their full path, list items by index, in
        // the order they appear, and known siblings after them are not reported.
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "oops": 1},
        "spec": {"containers": [
            {"name": "a", "image": "x"},
            {"name": "b", "image": "y", "imagex": "z", "ports": [{"containerPort": 80, "hostIPx": "1"}]}
        ]}});
        let (_, warnings) = pods.canonicalize(pod, FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            [
                "unknown field \"metadata.oops\"",
                "unknown field \"spec.containers[1].imagex\"",
                "unknown field \"spec.containers[1].ports[0].hostIPx\"",
            ]
        );
    }
}
