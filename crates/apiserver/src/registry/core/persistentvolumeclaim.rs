//! PersistentVolumeClaim: `kubectl get pvc` columns.

use serde_json::{Value, json};

use crate::registry::core::persistentvolume::access_modes;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The PersistentVolumeClaim strategy.
#[derive(Debug)]
pub struct PersistentVolumeClaims;

impl Strategy for PersistentVolumeClaims {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/status/phase")),
            json!(s(obj, "/spec/volumeName")),
            json!(s(obj, "/status/capacity/storage")),
            json!(access_modes(obj.pointer("/status/accessModes"))),
            json!(or_none(s(obj, "/spec/storageClassName").to_owned())),
            json!("<unset>"),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(s(obj, "/spec/volumeMode")),
        ]
    }
}
