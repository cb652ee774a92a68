//! ReplicationController: the ReplicaSet's predecessor, with a plain map as its selector.
//! Defaults as upstream (selector and labels from the template's labels), validation of the
//! selector against the template, and `kubectl get rc` columns.

use serde_json::{Value, json};

use crate::registry::core::pod::{default_pod_spec, validate_pod_spec};
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, containers_images, label_map_string, n, s};

/// The ReplicationController strategy.
#[derive(Debug)]
pub struct ReplicationControllers;

impl Strategy for ReplicationControllers {
    fn default(&self, object: &mut Value) {
        let template_labels = object
            .pointer("/spec/template/metadata/labels")
            .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            .cloned();
        if let Some(labels) = &template_labels {
            // Upstream: an RC without labels takes its template's.
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                let empty =
                    meta.get("labels").is_none_or(|l| l.as_object().is_none_or(|m| m.is_empty()));
                if empty {
                    meta.insert("labels".into(), labels.clone());
                }
            }
        }
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "replicas", json!(1));
        let no_selector =
            spec.get("selector").is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty()));
        if no_selector && let Some(labels) = template_labels {
            spec.insert("selector".into(), labels);
        }
        if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
            default_pod_spec(t);
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let spec = object.get("spec");
        let selector = spec.and_then(|s| s.get("selector")).and_then(Value::as_object);
        if selector.is_none_or(|m| m.is_empty()) {
            causes.push(Cause::new("FieldValueRequired", "spec.selector", "Required value"));
        }
        if let Some(replicas) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64)
            && replicas < 0
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            ));
        }
        let Some(template) = spec.and_then(|s| s.get("template")).filter(|t| !t.is_null()) else {
            causes.push(Cause::new("FieldValueRequired", "spec.template", "Required value"));
            return;
        };
        let labels = template.pointer("/metadata/labels").and_then(Value::as_object);
        if let Some(selector) = selector.filter(|m| !m.is_empty()) {
            let matches = labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)));
            if !matches {
                let shown = labels.map(|l| Value::Object(l.clone())).unwrap_or(Value::Null);
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.template.metadata.labels",
                    format!("Invalid value: {shown}: `selector` does not match template `labels`"),
                ));
            }
        }
        validate_pod_spec(template.get("spec"), "spec.template.spec", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
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
            json!(n(obj, "/spec/replicas")),
            json!(n(obj, "/status/replicas")),
            json!(n(obj, "/status/readyReplicas")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
            json!(label_map_string(obj.pointer("/spec/selector"))),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }
}
