//! LocalStoragePaths (krust's own): with `--local-storage-allowed-paths`, a PersistentVolume's
//! `hostPath` or `local` path must lie under one of the listed folders, so whoever may create
//! volumes cannot hand pods `/etc` or the container runtime's state. Without the flag every
//! path is allowed, as upstream.

use std::path::{Component, Path};

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult, Cause};

/// The LocalStoragePaths plugin.
pub struct LocalStoragePaths {
    /// The folders volumes may name (absolute).
    pub allowed: Vec<String>,
}

/// Whether `path` lies at or under one of `allowed`, with no `..` to climb out.
pub fn allowed(path: &str, allowed: &[String]) -> bool {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return false;
    }
    allowed.iter().any(|a| p.starts_with(a))
}

impl Validating for LocalStoragePaths {
    fn name(&self) -> &'static str {
        "LocalStoragePaths"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        !self.allowed.is_empty()
            && matches!(attributes.operation, Operation::Create | Operation::Update)
            && attributes.subresource.is_none()
            && attributes.is("", "PersistentVolume")
    }

    fn validate<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(volume) = object else { return Ok(()) };
            for source in ["hostPath", "local"] {
                let pointer = format!("/spec/{source}/path");
                let Some(path) = volume.pointer(&pointer).and_then(Value::as_str) else {
                    continue;
                };
                if !allowed(path, &self.allowed) {
                    return Err(ApiError::invalid(
                        "PersistentVolume",
                        "",
                        attributes.name,
                        vec![Cause::new(
                            "FieldValueForbidden",
                            &format!("spec.{source}.path"),
                            format!(
                                "Forbidden: must be under one of the allowed local storage paths: {}",
                                self.allowed.join(", ")
                            ),
                        )],
                    ));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_under_an_allowed_folder() {
        let dirs = vec!["/var/lib/krust/storage".to_owned(), "/mnt".to_owned()];
        assert!(allowed("/mnt/disk1", &dirs));
        assert!(allowed("/var/lib/krust/storage/pvc-1", &dirs));
        assert!(!allowed("/mntx", &dirs));
        assert!(!allowed("/etc", &dirs));
        assert!(!allowed("/mnt/../etc", &dirs));
        assert!(!allowed("mnt/a", &dirs));
    }
}
