//! PodTemplate: a stored pod template, defaulted and validated as a pod's spec is.

use serde_json::{Value, json};

use crate::registry::core::pod::{default_pod_spec, validate_pod_spec};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{Column, col, containers_images, label_map_string, or_none, s};

/// The PodTemplate strategy.
#[derive(Debug)]
pub struct PodTemplates;

impl Strategy for PodTemplates {
    fn default(&self, object: &mut Value) {
        if let Some(spec) = object.pointer_mut("/template/spec") {
            default_pod_spec(spec);
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        validate_pod_spec(object.pointer("/template/spec"), "template.spec", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            crate::table::NAME,
            col("Containers", "string", 0),
            col("Images", "string", 0),
            col("Pod Labels", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        let (c, i) = containers_images(obj.pointer("/template/spec").unwrap_or(&Value::Null));
        vec![
            json!(s(obj, "/metadata/name")),
            json!(c),
            json!(i),
            json!(or_none(label_map_string(obj.pointer("/template/metadata/labels")))),
        ]
    }
}
