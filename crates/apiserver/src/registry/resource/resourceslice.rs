//! ResourceSlice: devices a driver publishes for a node or pool.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ResourceSlices strategy.
#[derive(Debug)]
pub struct ResourceSlices;

impl Strategy for ResourceSlices {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Node", "string", 0),
            col("Driver", "string", 0),
            col("Pool", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/nodeName")),
            json!(s(obj, "/spec/driver")),
            json!(s(obj, "/spec/pool/name")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
