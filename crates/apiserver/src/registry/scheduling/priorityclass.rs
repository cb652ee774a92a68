//! PriorityClass: the value is immutable; `kubectl get pc` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The PriorityClasses strategy.
#[derive(Debug)]
pub struct PriorityClasses;

impl Strategy for PriorityClasses {
    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        crate::registry::immutable(new, old, "/value", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Value", "integer", 0),
            col("Global-Default", "boolean", 0),
            AGE,
            col("PreemptionPolicy", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(n(obj, "/value")),
            json!(obj.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(or_none(s(obj, "/preemptionPolicy").to_owned())),
        ]
    }
}
