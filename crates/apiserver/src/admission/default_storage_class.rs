//! DefaultStorageClass, as upstream's: a new claim that names no class (the field absent,
//! not `""`, which asks for none) gets the class annotated
//! `storageclass.kubernetes.io/is-default-class: "true"`, the newest when several are.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::ApiResult;

/// The annotation that marks the cluster's default StorageClass.
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The claim annotation older clients name the class with instead of the field.
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// The DefaultStorageClass plugin.
pub struct DefaultStorageClass;

/// The default among `classes`: the newest of the ones marked, then by name, as upstream.
pub fn default_class(classes: &[Value]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| {
            c.pointer(&format!("/metadata/annotations/{}", IS_DEFAULT_CLASS.replace('/', "~1")))
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by(|a, b| {
            let key = |c: &Value| {
                (
                    c.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned(),
                )
            };
            key(a).cmp(&key(b))
        })
        .and_then(|c| c.pointer("/metadata/name").and_then(Value::as_str))
}

impl Mutating for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.is("", "PersistentVolumeClaim")
            && attributes.subresource.is_none()
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(claim) = object else { return Ok(None) };
            if !self.applies(attributes)
                || claim.pointer("/spec/storageClassName").is_some_and(|v| !v.is_null())
                || claim
                    .pointer(&format!("/metadata/annotations/{}", BETA_CLASS.replace('/', "~1")))
                    .is_some()
            {
                return Ok(None);
            }
            let Some(classes) = objects.registry().lookup("storage.k8s.io", "v1", "storageclasses")
            else {
                return Ok(None);
            };
            let all = objects.list(&classes, None).await?;
            let Some(name) = default_class(&all) else { return Ok(None) };
            if let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("storageClassName".into(), json!(name));
            }
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_marked_class_is_the_default() {
        let class = |name: &str, created: &str, default: bool| {
            json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {IS_DEFAULT_CLASS: if default { "true" } else { "false" }}}})
        };
        let classes = vec![
            class("old", "2026-01-01T00:00:00Z", true),
            class("new", "2026-02-01T00:00:00Z", true),
            class("newest", "2026-03-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&classes), Some("new"));
        assert_eq!(default_class(&classes[2..]), None);
    }
}
