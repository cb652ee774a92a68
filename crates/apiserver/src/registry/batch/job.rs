//! Job: upstream's defaults, and `kubectl get jobs` columns.

use serde_json::{Value, json};

use crate::registry::apps::default_template;
use crate::registry::{set_default, spec_mut};
use crate::strategy::Strategy;
use crate::table::{
    AGE, Column, NAME, age_of, col, containers_images, human_duration, n, s, selector_string,
};

/// The Job strategy.
#[derive(Debug)]
pub struct Jobs;

impl Strategy for Jobs {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "backoffLimit", json!(6));
        set_default(spec, "completionMode", json!("NonIndexed"));
        set_default(spec, "parallelism", json!(1));
        default_template(spec);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (c, i) = containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
        let completions = obj.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
        let succeeded = n(obj, "/status/succeeded");
        let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
        let has = |t: &str| {
            conditions
                .into_iter()
                .flatten()
                .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
        };
        let status = if has("Complete") {
            "Complete"
        } else if has("Failed") {
            "Failed"
        } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
            "Terminating"
        } else {
            "Running"
        };
        let duration = match (
            obj.pointer("/status/startTime").and_then(Value::as_str),
            obj.pointer("/status/completionTime").and_then(Value::as_str),
        ) {
            (Some(start), end) => {
                let start = start.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(now);
                let end = end
                    .and_then(|e| e.parse::<jiff::Timestamp>().ok())
                    .map_or(now, |t| t.as_second());
                human_duration(end - start)
            }
            _ => String::new(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(status),
            json!(format!("{succeeded}/{completions}")),
            json!(duration),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
            json!(selector_string(obj.pointer("/spec/selector"))),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.successful"]
    }
}
