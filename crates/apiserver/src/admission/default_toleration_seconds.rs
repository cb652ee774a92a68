//! DefaultTolerationSeconds: every new pod tolerates a not-ready or unreachable node for five
//! minutes unless it says otherwise.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::ApiResult;

/// The taints the node lifecycle controller puts on nodes that stop reporting.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// See [`NOT_READY_TAINT`].
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// The DefaultTolerationSeconds plugin.
pub struct DefaultTolerationSeconds;

impl Mutating for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.is("", "Pod")
            && attributes.subresource.is_none()
    }

    fn admit<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(None) };
            if attributes.operation != Operation::Create
                || !attributes.is("", "Pod")
                || attributes.subresource.is_some()
            {
                return Ok(None);
            }
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
                return Ok(None);
            };
            let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
            if tolerations.is_null() {
                *tolerations = json!([]);
            }
            if let Some(list) = tolerations.as_array_mut() {
                for key in [NOT_READY_TAINT, UNREACHABLE_TAINT] {
                    let covered = list.iter().any(|t| {
                        let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                        let t_key = t.get("key").and_then(Value::as_str).unwrap_or("");
                        let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
                        (effect.is_empty() || effect == "NoExecute")
                            && (t_key == key || (t_key.is_empty() && exists))
                    });
                    if !covered {
                        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                                         "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
                    }
                }
            }
            Ok(None)
        })
    }
}
