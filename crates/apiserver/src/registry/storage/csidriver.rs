//! CSIDriver: what a CSI driver needs from the cluster.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The CSIDrivers strategy.
#[derive(Debug)]
pub struct CSIDrivers;

impl Strategy for CSIDrivers {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("AttachRequired", "boolean", 0),
            col("PodInfoOnMount", "boolean", 0),
            col("StorageCapacity", "boolean", 0),
            col("TokenRequests", "string", 0),
            col("RequiresRepublish", "boolean", 0),
            col("Modes", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let flag =
            |p: &str, default: bool| obj.pointer(p).and_then(Value::as_bool).unwrap_or(default);
        let tokens = match obj.pointer("/spec/tokenRequests").and_then(Value::as_array) {
            None => "<unset>".to_owned(),
            Some(list) => list.iter().map(|t| s(t, "/audience")).collect::<Vec<_>>().join(","),
        };
        let modes: Vec<&str> = obj
            .pointer("/spec/volumeLifecycleModes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        vec![
            json!(s(obj, "/metadata/name")),
            json!(flag("/spec/attachRequired", true)),
            json!(flag("/spec/podInfoOnMount", false)),
            json!(flag("/spec/storageCapacity", false)),
            json!(tokens),
            json!(flag("/spec/requiresRepublish", false)),
            json!(or_none(modes.join(","))),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
