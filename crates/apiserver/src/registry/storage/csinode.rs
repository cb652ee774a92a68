//! CSINode: the CSI drivers a node has.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The CSINodes strategy.
#[derive(Debug)]
pub struct CSINodes;

impl Strategy for CSINodes {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Drivers", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let drivers = obj.pointer("/spec/drivers").and_then(Value::as_array).map_or(0, Vec::len);
        vec![
            json!(s(obj, "/metadata/name")),
            json!(drivers),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
