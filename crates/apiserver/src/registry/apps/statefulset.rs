//! StatefulSet: defaults (ordered pod management, rolling updates), validation and columns.

use serde_json::{Value, json};

use crate::registry::apps::{default_template, validate_workload, validate_workload_update};
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, containers_images, n, s};

/// The StatefulSet strategy.
#[derive(Debug)]
pub struct StatefulSets;

impl Strategy for StatefulSets {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "replicas", json!(1));
        set_default(spec, "podManagementPolicy", json!("OrderedReady"));
        set_default(spec, "revisionHistoryLimit", json!(10));
        // Field by field, as upstream's defaulting: a strategy given in part is completed.
        set_default(spec, "updateStrategy", json!({}));
        if let Some(strategy) = spec.get_mut("updateStrategy").and_then(Value::as_object_mut) {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                set_default(strategy, "rollingUpdate", json!({}));
                if let Some(rolling) =
                    strategy.get_mut("rollingUpdate").and_then(Value::as_object_mut)
                {
                    set_default(rolling, "partition", json!(0));
                }
            }
        }
        set_default(
            spec,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        default_template(spec);
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        validate_workload(object, causes);
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        validate_workload_update(new, old, causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (c, i) = containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
        vec![
            json!(s(obj, "/metadata/name")),
            json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
        ]
    }
}
