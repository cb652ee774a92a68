//! ControllerRevision: an immutable snapshot of a workload's template.

use serde_json::{Value, json};

use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, s};

/// The ControllerRevision strategy.
#[derive(Debug)]
pub struct ControllerRevisions;

impl Strategy for ControllerRevisions {
    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        crate::registry::immutable(new, old, "/data", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Controller", "string", 0), col("Revision", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let owner = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            })
            .map(|r| {
                let group = s(r, "/apiVersion").split('/').next().unwrap_or("");
                format!("{}.{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(owner),
            json!(n(obj, "/revision")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
