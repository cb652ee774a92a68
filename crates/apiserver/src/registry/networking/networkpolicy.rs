//! NetworkPolicy: stored and served; enforced with the services issue.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The NetworkPolicies strategy.
#[derive(Debug)]
pub struct NetworkPolicies;

impl Strategy for NetworkPolicies {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Pod-Selector", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(crate::table::label_selector_string(obj.pointer("/spec/podSelector")))),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
