//! DaemonSet: defaults (rolling update, one unavailable at a time), validation and columns.

use serde_json::{Value, json};

use crate::registry::apps::{default_template, validate_workload, validate_workload_update};
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{
    AGE, Column, NAME, age_of, col, containers_images, label_map_string, n, or_none, s,
    selector_string,
};

/// The DaemonSet strategy.
#[derive(Debug)]
pub struct DaemonSets;

impl Strategy for DaemonSets {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
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
                    set_default(rolling, "maxUnavailable", json!(1));
                    set_default(rolling, "maxSurge", json!(0));
                }
            }
        }
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
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (c, i) = containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
        let node_selector = label_map_string(obj.pointer("/spec/template/spec/nodeSelector"));
        vec![
            json!(s(obj, "/metadata/name")),
            json!(n(obj, "/status/desiredNumberScheduled")),
            json!(n(obj, "/status/currentNumberScheduled")),
            json!(n(obj, "/status/numberReady")),
            json!(n(obj, "/status/updatedNumberScheduled")),
            json!(n(obj, "/status/numberAvailable")),
            json!(or_none(node_selector)),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
            json!(selector_string(obj.pointer("/spec/selector"))),
        ]
    }
}
