//! NamespaceLifecycle: nothing is created in a namespace that does not exist or is being
//! deleted.

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult};

/// The NamespaceLifecycle plugin.
pub struct NamespaceLifecycle;

impl Validating for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.rt.namespaced
            && attributes.namespace.is_some()
            && attributes.subresource.is_none()
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        _object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let (Operation::Create, Some(namespace), true) =
                (attributes.operation, attributes.namespace, attributes.rt.namespaced)
            else {
                return Ok(());
            };
            if attributes.subresource.is_some() {
                return Ok(());
            }
            let namespaces = objects.served("", "v1", "namespaces")?;
            let ns = objects.get(&namespaces, None, namespace).await?;
            if ns.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                )));
            }
            Ok(())
        })
    }
}
