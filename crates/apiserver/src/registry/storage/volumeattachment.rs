//! VolumeAttachment: a volume attached to a node by a CSI driver.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The VolumeAttachments strategy.
#[derive(Debug)]
pub struct VolumeAttachments;

impl Strategy for VolumeAttachments {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Attacher", "string", 0),
            col("PV", "string", 0),
            col("Node", "string", 0),
            col("Attached", "boolean", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/attacher")),
            json!(s(obj, "/spec/source/persistentVolumeName")),
            json!(s(obj, "/spec/nodeName")),
            json!(obj.pointer("/status/attached").and_then(Value::as_bool).unwrap_or(false)),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
