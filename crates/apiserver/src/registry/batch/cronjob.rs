//! CronJob: upstream's defaults and `kubectl get cronjobs` columns.

use serde_json::{Value, json};

use crate::registry::core::pod::default_pod_spec;
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
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
        // The Job template's spec gets a Job's defaults.
        if let Some(job_spec) = spec.get_mut("jobTemplate").and_then(|t| t.get_mut("spec")) {
            let mut job = json!({"spec": job_spec.take()});
            crate::registry::batch::job::Jobs.default(&mut job);
            if let Some(defaulted) = job.get_mut("spec") {
                *job_spec = defaulted.take();
            }
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        // Its Jobs are named `<name>-<minutes>` (11 more characters) and must fit in 63.
        if name.len() > 52 {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "metadata.name",
                format!("Invalid value: {name:?}: must be no more than 52 characters"),
            ));
        }
        let spec = object.get("spec");
        match spec.and_then(|s| s.get("schedule")).and_then(Value::as_str) {
            None | Some("") => {
                causes.push(Cause::new("FieldValueRequired", "spec.schedule", "Required value"))
            }
            Some(schedule) => {
                if let Err(e) = cron::Schedule::parse(schedule) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.schedule",
                        format!("Invalid value: {schedule:?}: {e}"),
                    ));
                }
            }
        }
        if let Some(zone) = spec.and_then(|s| s.get("timeZone")).and_then(Value::as_str)
            && (zone.is_empty()
                || jiff::tz::TimeZone::get(zone).is_err()
                || zone.eq_ignore_ascii_case("local"))
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.timeZone",
                format!("Invalid value: {zone:?}: unknown time zone {zone}"),
            ));
        }
        if let Some(policy) = spec.and_then(|s| s.get("concurrencyPolicy")).and_then(Value::as_str)
            && !["Allow", "Forbid", "Replace"].contains(&policy)
        {
            causes.push(Cause::new("FieldValueNotSupported", "spec.concurrencyPolicy", format!("Unsupported value: {policy:?}: supported values: \"Allow\", \"Forbid\", \"Replace\"")));
        }
        for field in
            ["startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"]
        {
            if let Some(v) = spec.and_then(|s| s.get(field)).and_then(Value::as_i64)
                && v < 0
            {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("spec.{field}"),
                    format!("Invalid value: {v}: must be greater than or equal to 0"),
                ));
            }
        }
        let template = spec.and_then(|s| s.pointer("/jobTemplate/spec/template"));
        crate::registry::batch::job::validate_pod_template(
            template,
            "spec.jobTemplate.spec.template",
            causes,
        );
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
