//! Namespace: DNS-1123 label names, the `kubernetes` finalizer, and deletion that waits for
//! the namespace controller to empty it.

use serde_json::{Value, json};

use crate::registry::set_default;
use crate::strategy::{NameRule, Strategy, Subresource};
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The Namespace strategy.
#[derive(Debug)]
pub struct Namespaces;

impl Strategy for Namespaces {
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn default(&self, object: &mut Value) {
        let Some(obj) = object.as_object_mut() else { return };
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        let status = obj.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            set_default(status, "phase", json!("Active"));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Status", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/status/phase")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource { name: "finalize", kind: None, verbs: &["update"] }]
    }

    fn finalized_by_spec(&self) -> bool {
        true
    }
}
