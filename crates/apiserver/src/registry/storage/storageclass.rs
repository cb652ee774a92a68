//! StorageClass: defaults, the fields that cannot change, and `kubectl get sc` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The StorageClasses strategy.
#[derive(Debug)]
pub struct StorageClasses;

impl Strategy for StorageClasses {
    fn default(&self, object: &mut Value) {
        let Some(obj) = object.as_object_mut() else { return };
        crate::registry::set_default(obj, "reclaimPolicy", json!("Delete"));
        crate::registry::set_default(obj, "volumeBindingMode", json!("Immediate"));
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        for field in ["/provisioner", "/parameters", "/reclaimPolicy", "/volumeBindingMode"] {
            crate::registry::immutable(new, old, field, causes);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Provisioner", "string", 0),
            col("ReclaimPolicy", "string", 0),
            col("VolumeBindingMode", "string", 0),
            col("AllowVolumeExpansion", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let default = obj
            .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
            .and_then(Value::as_str)
            == Some("true");
        let name = s(obj, "/metadata/name");
        vec![
            json!(if default { format!("{name} (default)") } else { name.to_owned() }),
            json!(s(obj, "/provisioner")),
            json!(s(obj, "/reclaimPolicy")),
            json!(s(obj, "/volumeBindingMode")),
            json!(
                obj.get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
            ),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
