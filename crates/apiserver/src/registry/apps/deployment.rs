//! Deployment: upstream's defaults (rolling update 25%/25%), validation and columns.

use serde_json::{Value, json};

use crate::registry::apps::{default_template, validate_workload, validate_workload_update};
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, containers_images, n, s, selector_string};

/// The Deployment strategy.
#[derive(Debug)]
pub struct Deployments;

impl Strategy for Deployments {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "progressDeadlineSeconds", json!(600));
        // Field by field, as upstream: an empty `strategy: {}` still gets its type.
        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
        if let Some(strategy) = strategy.as_object_mut() {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(rolling) = rolling.as_object_mut() {
                    set_default(rolling, "maxUnavailable", json!("25%"));
                    set_default(rolling, "maxSurge", json!("25%"));
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
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (c, i) = containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
        vec![
            json!(s(obj, "/metadata/name")),
            json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
            json!(n(obj, "/status/updatedReplicas")),
            json!(n(obj, "/status/availableReplicas")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
            json!(selector_string(obj.pointer("/spec/selector"))),
        ]
    }
}
