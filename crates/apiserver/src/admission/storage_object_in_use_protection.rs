//! StorageObjectInUseProtection, as upstream's: every new claim carries the
//! `kubernetes.io/pvc-protection` finalizer and every new volume `kubernetes.io/pv-protection`,
//! so deleting one that a pod (or a claim) still uses waits until it is no longer used; the
//! PersistentVolume controller removes them then.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::ApiResult;

/// The claims' finalizer.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The volumes' finalizer.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// The StorageObjectInUseProtection plugin.
pub struct StorageObjectInUseProtection;

impl Mutating for StorageObjectInUseProtection {
    fn name(&self) -> &'static str {
        "StorageObjectInUseProtection"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.subresource.is_none()
            && (attributes.is("", "PersistentVolumeClaim") || attributes.is("", "PersistentVolume"))
    }

    fn admit<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(None) };
            if !self.applies(attributes) {
                return Ok(None);
            }
            let finalizer = if attributes.rt.kind == "PersistentVolume" {
                PV_PROTECTION
            } else {
                PVC_PROTECTION
            };
            let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
                return Ok(None);
            };
            let list = meta.entry("finalizers").or_insert_with(|| json!([]));
            if list.is_null() {
                *list = json!([]);
            }
            if let Some(list) = list.as_array_mut()
                && !list.iter().any(|f| f.as_str() == Some(finalizer))
            {
                list.push(json!(finalizer));
            }
            Ok(None)
        })
    }
}
