//! PersistentVolume: upstream's defaults (`Retain`, `Filesystem`, phase `Pending`), its
//! validation of the volume source, capacity, access modes and reclaim policy, and
//! `kubectl get pv` columns.

use serde_json::{Value, json};

use crate::status::Cause;
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

/// The volume sources a PersistentVolume may name, by field.
const SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

/// Upstream's access modes, in its order of "supported values".
pub(crate) const ACCESS_MODES: &[&str] =
    &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];

/// The access modes' checks shared with claims: at least one, each known, and
/// `ReadWriteOncePod` alone.
pub(crate) fn validate_access_modes(modes: Option<&Value>, causes: &mut Vec<Cause>) {
    let modes: Vec<&str> =
        modes.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if modes.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.accessModes",
            "Required value: at least 1 access mode is required",
        ));
    }
    for mode in &modes {
        if !ACCESS_MODES.contains(mode) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.accessModes",
                format!(
                    "Unsupported value: {mode:?}: supported values: {}",
                    ACCESS_MODES.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.accessModes",
            "Forbidden: may not use ReadWriteOncePod with other access modes",
        ));
    }
}

impl Strategy for PersistentVolumes {
    fn default(&self, object: &mut Value) {
        let Some(spec) = crate::registry::spec_mut(object) else { return };
        crate::registry::set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        crate::registry::set_default(spec, "volumeMode", json!("Filesystem"));
    }

    fn prepare_create(&self, object: &mut Value) {
        if let Some(obj) = object.as_object_mut() {
            obj.insert("status".into(), json!({"phase": "Pending"}));
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let spec = object.get("spec").cloned().unwrap_or_else(|| json!({}));
        let named: Vec<&str> = SOURCES
            .iter()
            .copied()
            .filter(|f| spec.get(*f).is_some_and(|v| !v.is_null()))
            .collect();
        match named.as_slice() {
            [] => causes.push(Cause::new(
                "FieldValueRequired",
                "spec",
                "Required value: must specify a volume type",
            )),
            [_] => {}
            [_, rest @ ..] => {
                for field in rest {
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        &format!("spec.{field}"),
                        "Forbidden: may not specify more than 1 volume type",
                    ));
                }
            }
        }
        validate_access_modes(spec.get("accessModes"), causes);
        match spec.get("capacity").and_then(Value::as_object) {
            None => {
                causes.push(Cause::new("FieldValueRequired", "spec.capacity", "Required value"))
            }
            Some(c) if c.len() != 1 || !c.contains_key("storage") => causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.capacity",
                format!(
                    "Unsupported value: {}: supported values: \"storage\"",
                    Value::Object(c.clone())
                ),
            )),
            Some(_) => {}
        }
        if let Some(policy) = spec.get("persistentVolumeReclaimPolicy").and_then(Value::as_str)
            && !["Delete", "Recycle", "Retain"].contains(&policy)
        {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.persistentVolumeReclaimPolicy",
                format!(
                    "Unsupported value: {policy:?}: supported values: \"Delete\", \"Recycle\", \"Retain\""
                ),
            ));
        }
        if let Some(host_path) = spec.get("hostPath")
            && host_path.get("path").and_then(Value::as_str).unwrap_or("").is_empty()
        {
            causes.push(Cause::new("FieldValueRequired", "spec.hostPath.path", "Required value"));
        }
        if let Some(local) = spec.get("local") {
            if local.get("path").and_then(Value::as_str).unwrap_or("").is_empty() {
                causes.push(Cause::new("FieldValueRequired", "spec.local.path", "Required value"));
            }
            if spec.pointer("/nodeAffinity/required").is_none() {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    "spec.nodeAffinity",
                    "Required value: Local volume requires node affinity",
                ));
            }
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        if SOURCES
            .iter()
            .any(|f| new.pointer(&format!("/spec/{f}")) != old.pointer(&format!("/spec/{f}")))
        {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec.persistentvolumesource",
                "Forbidden: spec.persistentvolumesource is immutable after creation",
            ));
        }
        crate::registry::immutable(new, old, "/spec/volumeMode", causes);
        if old.pointer("/spec/nodeAffinity").is_some() {
            crate::registry::immutable(new, old, "/spec/nodeAffinity", causes);
        }
    }

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
