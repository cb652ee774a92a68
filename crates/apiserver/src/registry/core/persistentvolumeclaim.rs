//! PersistentVolumeClaim: upstream's defaults (`Filesystem`, phase `Pending`), its validation
//! (access modes, a storage request, a spec fixed after creation but for the request of a
//! bound claim, which may grow and never shrink), and `kubectl get pvc` columns.

use serde_json::{Value, json};

use crate::registry::core::persistentvolume::{access_modes, validate_access_modes};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The PersistentVolumeClaim strategy.
#[derive(Debug)]
pub struct PersistentVolumeClaims;

const STORAGE: &str = "/spec/resources/requests/storage";

impl Strategy for PersistentVolumeClaims {
    fn default(&self, object: &mut Value) {
        let Some(spec) = crate::registry::spec_mut(object) else { return };
        crate::registry::set_default(spec, "volumeMode", json!("Filesystem"));
    }

    fn prepare_create(&self, object: &mut Value) {
        if let Some(obj) = object.as_object_mut() {
            obj.insert("status".into(), json!({"phase": "Pending"}));
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        validate_access_modes(object.pointer("/spec/accessModes"), causes);
        if object.pointer(STORAGE).is_none() {
            causes.push(Cause::new(
                "FieldValueRequired",
                "spec.resources[storage]",
                "Required value",
            ));
        }
        if let Some(mode) = object.pointer("/spec/volumeMode").and_then(Value::as_str)
            && !["Block", "Filesystem"].contains(&mode)
        {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.volumeMode",
                format!("Unsupported value: {mode:?}: supported values: \"Block\", \"Filesystem\""),
            ));
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        // The spec is fixed but for the request of a bound claim, and for `volumeName`,
        // which the binder sets once.
        let mut new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
        let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let bound = old.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
        if bound
            && let (Some(n), Some(o)) =
                (new_spec.pointer_mut("/resources/requests/storage"), old.pointer(STORAGE))
        {
            *n = o.clone();
        }
        if old_spec.get("volumeName").is_none_or(|v| v.as_str() == Some("")) {
            for spec in [&mut new_spec, &mut old_spec] {
                if let Some(s) = spec.as_object_mut() {
                    s.remove("volumeName");
                }
            }
        }
        if new_spec != old_spec {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec",
                "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
        let size =
            |o: &Value| o.pointer(STORAGE).and_then(Value::as_str).and_then(crate::quantity::value);
        if let (Some(n), Some(o)) = (size(new), size(old))
            && n < o
        {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec.resources.requests.storage",
                "Forbidden: field can not be less than previous value",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/status/phase")),
            json!(s(obj, "/spec/volumeName")),
            json!(s(obj, "/status/capacity/storage")),
            json!(access_modes(obj.pointer("/status/accessModes"))),
            json!(or_none(s(obj, "/spec/storageClassName").to_owned())),
            json!("<unset>"),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(s(obj, "/spec/volumeMode")),
        ]
    }
}
