//! CronJob: upstream's defaults and `kubectl get cronjobs` columns.

use serde_json::{Value, json};

use crate::registry::core::pod::default_pod_spec;
use crate::registry::{set_default, spec_mut};
use crate::strategy::Strategy;
use crate::table::{
    AGE, Column, NAME, age_of, col, containers_images, or_none, s, selector_string,
};

/// The CronJob strategy.
#[derive(Debug)]
pub struct CronJobs;

impl Strategy for CronJobs {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "concurrencyPolicy", json!("Allow"));
        set_default(spec, "suspend", json!(false));
        set_default(spec, "successfulJobsHistoryLimit", json!(3));
        set_default(spec, "failedJobsHistoryLimit", json!(1));
        if let Some(t) =
            spec.get_mut("jobTemplate").and_then(|t| t.pointer_mut("/spec/template/spec"))
        {
            default_pod_spec(t);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (c, i) = containers_images(
            obj.pointer("/spec/jobTemplate/spec/template/spec").unwrap_or(&Value::Null),
        );
        let last = if obj.pointer("/status/lastScheduleTime").is_some() {
            age_of(obj, "/status/lastScheduleTime", now)
        } else {
            "<none>".to_owned()
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/schedule")),
            json!(or_none(s(obj, "/spec/timeZone").to_owned())),
            json!(obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
            json!(obj.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len)),
            json!(last),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(c),
            json!(i),
            json!(selector_string(obj.pointer("/spec/jobTemplate/spec/selector"))),
        ]
    }
}
