//! ResourceClaim: a request for devices; `kubectl get` shows its state.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ResourceClaims strategy.
#[derive(Debug)]
pub struct ResourceClaims;

impl Strategy for ResourceClaims {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("State", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let mut state = Vec::new();
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
        if deleting {
            state.push("deleted");
        }
        if obj.pointer("/status/allocation").is_none_or(Value::is_null) {
            if !deleting {
                state.push("pending");
            }
        } else {
            state.push("allocated");
            if obj
                .pointer("/status/reservedFor")
                .and_then(Value::as_array)
                .is_some_and(|r| !r.is_empty())
            {
                state.push("reserved");
            }
        }
        vec![
            json!(s(obj, "/metadata/name")),
            json!(state.join(",")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
