//! Event (core/v1): the columns of `kubectl get events` and the fields it selects on.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{Column, age_of, col, s};

/// The strategy of events in both versions (`v1` and `events.k8s.io/v1` store alike).
#[derive(Debug)]
pub struct Events;

impl Strategy for Events {
    fn columns(&self) -> Vec<Column> {
        vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let last = if obj.pointer("/lastTimestamp").and_then(Value::as_str).is_some() {
            age_of(obj, "/lastTimestamp", now)
        } else if obj.pointer("/eventTime").and_then(Value::as_str).is_some() {
            age_of(obj, "/eventTime", now)
        } else {
            age_of(obj, "/metadata/creationTimestamp", now)
        };
        let (kind, name) = if obj.get("involvedObject").is_some() {
            (s(obj, "/involvedObject/kind"), s(obj, "/involvedObject/name"))
        } else {
            (s(obj, "/regarding/kind"), s(obj, "/regarding/name"))
        };
        vec![
            json!(last),
            json!(s(obj, "/type")),
            json!(s(obj, "/reason")),
            json!(format!("{}/{name}", kind.to_lowercase())),
            json!(if obj.get("note").is_some() { s(obj, "/note") } else { s(obj, "/message") }),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "reportingController",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
        ]
    }
}
