//! Priority: a new pod gets the priority (and preemption policy) of its PriorityClass, or of
//! the class marked `globalDefault` when it names none.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::{ApiError, ApiResult};

/// The priority classes every cluster has (upstream creates the same two at start-up).
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64); 2] =
    [("system-node-critical", 2_000_001_000), ("system-cluster-critical", 2_000_000_000)];

/// The Priority plugin.
pub struct Priority;

impl Mutating for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.is("", "Pod")
            && attributes.subresource.is_none()
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(pod) = object else { return Ok(None) };
            if attributes.operation != Operation::Create
                || !attributes.is("", "Pod")
                || attributes.subresource.is_some()
            {
                return Ok(None);
            }
            // A pod without a spec is refused by validation, which runs next.
            let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
                return Ok(None);
            };
            let class_name =
                spec.get("priorityClassName").and_then(Value::as_str).unwrap_or("").to_owned();
            let Some(classes) =
                objects.registry().lookup("scheduling.k8s.io", "v1", "priorityclasses")
            else {
                return Ok(None);
            };
            let class = if class_name.is_empty() {
                // The class marked globalDefault applies to pods that name none.
                objects
                    .list(&classes, None)
                    .await?
                    .into_iter()
                    .find(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            } else {
                match objects.get(&classes, None, &class_name).await {
                    Ok(class) => Some(class),
                    Err(e) if e.code == 404 => {
                        return Err(ApiError::forbidden(format!(
                            "no PriorityClass with name {class_name} was found"
                        )));
                    }
                    Err(e) => return Err(e),
                }
            };
            let (priority, policy) = match &class {
                Some(c) => (
                    c.get("value").and_then(Value::as_i64).unwrap_or(0),
                    c.get("preemptionPolicy")
                        .and_then(Value::as_str)
                        .unwrap_or("PreemptLowerPriority"),
                ),
                None => (0, "PreemptLowerPriority"),
            };
            if let Some(given) = spec.get("priority").and_then(Value::as_i64)
                && given != priority
            {
                return Err(ApiError::forbidden(
                    "the integer value of priority must not be provided in pod spec; priority admission controller computed the value from the given PriorityClass name",
                ));
            }
            spec.insert("priority".into(), json!(priority));
            spec.insert("preemptionPolicy".into(), json!(policy));
            if let Some(c) = &class
                && class_name.is_empty()
                && let Some(name) = c.pointer("/metadata/name")
            {
                spec.insert("priorityClassName".into(), name.clone());
            }
            Ok(None)
        })
    }
}
