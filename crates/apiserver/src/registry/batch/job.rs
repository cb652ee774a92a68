//! Job: upstream's defaults, and `kubectl get jobs` columns.

use serde_json::{Value, json};

use crate::registry::apps::default_template;
use crate::registry::core::pod::validate_pod_spec;
use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{
    AGE, Column, NAME, age_of, col, containers_images, human_duration, n, s, selector_string,
};

/// The label (and selector) that ties a Job's pods to it by UID.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The label with the Job's name on its pods.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// Validates a Job's pod template (at `path`, for the messages): a valid pod spec whose
/// restart policy is `OnFailure` or `Never`. Returns that policy. The CronJob strategy
/// checks its Job template with it too.
pub(crate) fn validate_pod_template<'v>(
    template: Option<&'v Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) -> &'v str {
    validate_pod_spec(template.and_then(|t| t.get("spec")), &format!("{path}.spec"), causes);
    let restart = template
        .and_then(|t| t.pointer("/spec/restartPolicy"))
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if restart != "OnFailure" && restart != "Never" {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{path}.spec.restartPolicy"),
            format!("Unsupported value: \"{restart}\": supported values: \"OnFailure\", \"Never\""),
        ));
    }
    restart
}

/// The Job strategy.
#[derive(Debug)]
pub struct Jobs;

impl Strategy for Jobs {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        // Neither given: one pod, once. Only parallelism given: a work queue (no count).
        if spec.get("completions").is_none_or(Value::is_null)
            && spec.get("parallelism").is_none_or(Value::is_null)
        {
            spec.insert("completions".into(), json!(1));
        }
        set_default(spec, "parallelism", json!(1));
        set_default(spec, "backoffLimit", json!(6));
        set_default(spec, "completionMode", json!("NonIndexed"));
        set_default(spec, "suspend", json!(false));
        let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        set_default(spec, "podReplacementPolicy", json!(replacement));
        if let Some(rules) = spec
            .get_mut("podFailurePolicy")
            .and_then(|p| p.get_mut("rules"))
            .and_then(Value::as_array_mut)
        {
            for rule in rules {
                for pattern in rule
                    .get_mut("onPodConditions")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = pattern.as_object_mut() {
                        set_default(p, "status", json!("True"));
                    }
                }
            }
        }
        default_template(spec);
    }

    /// Upstream's generated selector: unless `manualSelector` is set, the Job's pods are
    /// told apart by its UID, which only a create knows.
    fn prepare_create(&self, object: &mut Value) {
        let uid = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_owned();
        let name =
            object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some(spec) = spec_mut(object) else { return };
        if spec.get("manualSelector") == Some(&json!(true)) {
            return;
        }
        let template = spec.entry("template").or_insert_with(|| json!({}));
        if let Some(t) = template.as_object_mut() {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert(CONTROLLER_UID.into(), json!(uid));
                    l.insert(JOB_NAME.into(), json!(name));
                    l.insert("controller-uid".into(), json!(uid));
                    l.insert("job-name".into(), json!(name));
                }
            }
        }
        spec.insert("selector".into(), json!({"matchLabels": {CONTROLLER_UID: uid}}));
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let spec = object.get("spec");
        let int = |field: &str| spec.and_then(|s| s.get(field)).and_then(Value::as_i64);
        for field in [
            "parallelism",
            "completions",
            "backoffLimit",
            "activeDeadlineSeconds",
            "ttlSecondsAfterFinished",
            "backoffLimitPerIndex",
            "maxFailedIndexes",
        ] {
            if let Some(v) = int(field) {
                let floor = if field == "activeDeadlineSeconds" { 1 } else { 0 };
                if v < floor {
                    let what = if floor == 1 {
                        "must be greater than 0"
                    } else {
                        "must be greater than or equal to 0"
                    };
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("spec.{field}"),
                        format!("Invalid value: {v}: {what}"),
                    ));
                }
            }
        }
        let mode = spec
            .and_then(|s| s.get("completionMode"))
            .and_then(Value::as_str)
            .unwrap_or("NonIndexed");
        match mode {
            "NonIndexed" => {
                if int("backoffLimitPerIndex").is_some() {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.backoffLimitPerIndex",
                        "Invalid value: requires indexed completion mode",
                    ));
                }
                if spec.and_then(|s| s.get("successPolicy")).is_some_and(|p| !p.is_null()) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.successPolicy",
                        "Invalid value: requires indexed completion mode",
                    ));
                }
            }
            "Indexed" => {
                if int("completions").is_none() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        "spec.completions",
                        "Required value: when completion mode is Indexed",
                    ));
                }
                if let Some(c) = int("completions").filter(|c| *c > 100_000) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.completions",
                        format!("Invalid value: {c}: must be less than or equal to 100000 when completion mode is Indexed"),
                    ));
                }
                if int("parallelism").unwrap_or(1) > 100_000 {
                    causes.push(Cause::new("FieldValueInvalid", "spec.parallelism", "Invalid value: must be less than or equal to 100000 when completion mode is Indexed"));
                }
                if int("maxFailedIndexes").is_some() && int("backoffLimitPerIndex").is_none() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        "spec.backoffLimitPerIndex",
                        "Required value: when maxFailedIndexes is specified",
                    ));
                }
            }
            other => causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.completionMode",
                format!(
                    "Unsupported value: \"{other}\": supported values: \"NonIndexed\", \"Indexed\""
                ),
            )),
        }
        let template = spec.and_then(|s| s.get("template"));
        let restart = validate_pod_template(template, "spec.template", causes);
        if spec.and_then(|s| s.get("podFailurePolicy")).is_some_and(|p| !p.is_null())
            && restart != "Never"
        {
            causes.push(Cause::new("FieldValueInvalid", "spec.template.spec.restartPolicy", format!("Invalid value: \"{restart}\": only \"Never\" is supported when podFailurePolicy is specified")));
        }
        match spec.and_then(|s| s.get("selector")).filter(|s| !s.is_null()) {
            None => {
                causes.push(Cause::new("FieldValueRequired", "spec.selector", "Required value"))
            }
            Some(selector) => {
                let labels = template
                    .and_then(|t| t.pointer("/metadata/labels"))
                    .cloned()
                    .unwrap_or(json!({}));
                let matches = selector
                    .get("matchLabels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| labels.get(k) == Some(v));
                if !matches {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.template.metadata.labels",
                        format!(
                            "Invalid value: {labels}: `selector` does not match template `labels`"
                        ),
                    ));
                }
            }
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        crate::registry::immutable(new, old, "/spec/selector", causes);
        crate::registry::immutable(new, old, "/spec/completionMode", causes);
        // Indexed Jobs may change completions together with parallelism (elastic); others
        // not at all.
        let indexed = new.pointer("/spec/completionMode") == Some(&json!("Indexed"));
        let elastic = indexed
            && new.pointer("/spec/completions") == new.pointer("/spec/parallelism")
            && old.pointer("/spec/completions") == old.pointer("/spec/parallelism");
        if !elastic {
            crate::registry::immutable(new, old, "/spec/completions", causes);
        }
        // The template may change only while the Job is suspended, and then only in its
        // scheduling directives; we allow what upstream allows most of the time: nothing.
        if new.pointer("/spec/suspend") != Some(&json!(true)) {
            crate::registry::immutable(new, old, "/spec/template", causes);
        }
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
