//! ComponentStatus: read-only, answered from the server's own view of its parts (the store,
//! the scheduler and the controller manager run in this process), never stored.

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::strategy::{ComputedRequest, Strategy};
use crate::table::{Column, NAME, col, s};

/// The ComponentStatus strategy.
#[derive(Debug)]
pub struct ComponentStatuses;

fn status(name: &str, health: &Result<(), String>) -> Value {
    let (ok, message, error) = match health {
        Ok(()) => ("True", "ok", None),
        Err(e) => ("False", "", Some(e.as_str())),
    };
    let mut condition = json!({"type": "Healthy", "status": ok, "message": message});
    if let Some(e) = error {
        condition["error"] = json!(e);
    }
    json!({"apiVersion": "v1", "kind": "ComponentStatus",
           "metadata": {"name": name, "creationTimestamp": null},
           "conditions": [condition]})
}

impl Strategy for ComponentStatuses {
    fn is_computed(&self) -> bool {
        true
    }

    fn computed_objects<'a>(
        &'a self,
        request: ComputedRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async move {
            let store = request.source.store_health().await;
            // The scheduler and controller manager are tasks of this server: they are as
            // healthy as the server answering. The store is asked.
            Ok(vec![
                status("controller-manager", &Ok(())),
                status("etcd-0", &store),
                status("scheduler", &Ok(())),
            ])
        })
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Status", "string", 0),
            col("Message", "string", 0),
            col("Error", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        let healthy = s(obj, "/conditions/0/status") == "True";
        vec![
            json!(s(obj, "/metadata/name")),
            json!(if healthy { "Healthy" } else { "Unhealthy" }),
            json!(s(obj, "/conditions/0/message")),
            json!(s(obj, "/conditions/0/error")),
        ]
    }
}
