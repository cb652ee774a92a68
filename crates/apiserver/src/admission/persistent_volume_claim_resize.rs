//! PersistentVolumeClaimResize, as upstream's: a claim's request may grow only once it is
//! bound, and only when its StorageClass says `allowVolumeExpansion: true` (403 otherwise).
//! Shrinking is refused by the claim's validation.

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult};

const STORAGE: &str = "/spec/resources/requests/storage";

/// The PersistentVolumeClaimResize plugin.
pub struct PersistentVolumeClaimResize;

fn size(claim: &Value) -> Option<f64> {
    claim.pointer(STORAGE).and_then(Value::as_str).and_then(crate::quantity::value)
}

impl Validating for PersistentVolumeClaimResize {
    fn name(&self) -> &'static str {
        "PersistentVolumeClaimResize"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Update
            && attributes.subresource.is_none()
            && attributes.is("", "PersistentVolumeClaim")
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let (Some(claim), Some(old)) = (object, attributes.old) else { return Ok(()) };
            let (Some(new_size), Some(old_size)) = (size(claim), size(old)) else { return Ok(()) };
            if new_size <= old_size {
                return Ok(());
            }
            let refuse = |why: &str| {
                Err(ApiError::forbidden(format!(
                    "persistentvolumeclaims {:?} is forbidden: {why}",
                    attributes.name
                )))
            };
            if old.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
                return refuse("Only bound persistent volume claims can be expanded");
            }
            let class =
                claim.pointer("/spec/storageClassName").and_then(Value::as_str).unwrap_or("");
            let allowed = match objects.registry().lookup("storage.k8s.io", "v1", "storageclasses")
            {
                Some(classes) if !class.is_empty() => {
                    match objects.get(&classes, None, class).await {
                        Ok(c) => {
                            c.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true)
                        }
                        Err(e) if e.code == 404 => false,
                        Err(e) => return Err(e),
                    }
                }
                _ => false,
            };
            if !allowed {
                return refuse(
                    "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
                );
            }
            Ok(())
        })
    }
}
