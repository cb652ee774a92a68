//! CSIStorageCapacity: the capacity a storage class has for a topology segment.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{Column, NAME, col, s};

/// The CSIStorageCapacities strategy.
#[derive(Debug)]
pub struct CSIStorageCapacities;

impl Strategy for CSIStorageCapacities {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("StorageClassName", "string", 0), col("Capacity", "string", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        let capacity = match s(obj, "/capacity") {
            "" => "<unset>",
            c => c,
        };
        vec![json!(s(obj, "/metadata/name")), json!(s(obj, "/storageClassName")), json!(capacity)]
    }
}
