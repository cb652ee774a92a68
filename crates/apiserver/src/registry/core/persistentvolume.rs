//! PersistentVolume: `kubectl get pv` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The PersistentVolume strategy.
#[derive(Debug)]
pub struct PersistentVolumes;

/// kubectl's short forms of access modes.
pub(crate) fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

impl Strategy for PersistentVolumes {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("Reclaim Policy", "string", 0),
            col("Status", "string", 0),
            col("Claim", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Reason", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let claim = match s(obj, "/spec/claimRef/name") {
            "" => String::new(),
            name => format!("{}/{name}", s(obj, "/spec/claimRef/namespace")),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/capacity/storage")),
            json!(access_modes(obj.pointer("/spec/accessModes"))),
            json!(s(obj, "/spec/persistentVolumeReclaimPolicy")),
            json!(s(obj, "/status/phase")),
            json!(claim),
            json!(s(obj, "/spec/storageClassName")),
            json!(
                or_none(s(obj, "/spec/volumeAttributesClassName").to_owned())
                    .replace("<none>", "<unset>")
            ),
            json!(s(obj, "/status/reason")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(s(obj, "/spec/volumeMode")),
        ]
    }
}
