//! ServiceCIDR: a range Service addresses come from (stored and served).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ServiceCIDR strategy.
#[derive(Debug)]
pub struct ServiceCIDRs;

impl Strategy for ServiceCIDRs {
    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        crate::registry::immutable(new, old, "/spec/cidrs", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("CIDRs", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let cidrs: Vec<&str> = obj
            .pointer("/spec/cidrs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        vec![
            json!(s(obj, "/metadata/name")),
            json!(cidrs.join(",")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
