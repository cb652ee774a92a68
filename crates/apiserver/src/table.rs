//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with
//! kubectl's usual columns per type and `Name`/`Age` for the rest.

use serde_json::{Value, json};

/// What a Table row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter.
    pub fn parse(value: Option<&str>) -> Result<IncludeObject, crate::status::ApiError> {
        match value.unwrap_or("Metadata") {
            "None" => Ok(IncludeObject::None),
            "Metadata" | "" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(crate::status::ApiError::bad_request(format!(
                "includeObject must be one of None, Metadata or Object, got {other:?}"
            ))),
        }
    }
}

/// One Table column definition.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

/// A column of `kind` (`string`, `integer`, `date`) shown at `priority` (0 always, 1 with
/// `-o wide`).
pub(crate) const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, format: "", priority, description: "" }
}

pub(crate) const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
pub(crate) const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

pub(crate) fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn or_none(text: String) -> String {
    if text.is_empty() { "<none>".to_owned() } else { text }
}

/// Renders a duration the way kubectl's AGE column does.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let rest = seconds % 60;
        return if rest == 0 { format!("{minutes}m") } else { format!("{minutes}m{rest}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let rest = minutes % 60;
        return if rest == 0 { format!("{hours}h") } else { format!("{hours}h{rest}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let rest = hours % 24;
        return if rest == 0 { format!("{days}d") } else { format!("{days}d{rest}h") };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 365 * 8 {
        let rest = days % 365;
        return if rest == 0 { format!("{years}y") } else { format!("{years}y{rest}d") };
    }
    format!("{years}y")
}

pub(crate) fn age_of(v: &Value, pointer: &str, now: i64) -> String {
    let Some(ts) = v.pointer(pointer).and_then(Value::as_str) else { return "<unknown>".into() };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

pub(crate) fn containers_images(template_spec: &Value) -> (String, String) {
    let list =
        template_spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<&str> = list.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = list.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// `k=v,k=v` for a map of labels ("" when absent).
pub(crate) fn label_map_string(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A `LabelSelector` in the query syntax (`a=b,c in (d),!e`), as upstream formats it; "" when
/// absent or empty.
pub(crate) fn label_selector_string(selector: Option<&Value>) -> String {
    let Some(selector) = selector else { return String::new() };
    let mut parts = Vec::new();
    let labels = label_map_string(selector.get("matchLabels"));
    if !labels.is_empty() {
        parts.push(labels);
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key = s(e, "/key");
            parts.push(match s(e, "/operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "DoesNotExist" => format!("!{key}"),
                _ => key.to_owned(),
            });
        }
    }
    parts.join(",")
}

pub(crate) fn selector_string(selector: Option<&Value>) -> String {
    or_none(label_selector_string(selector))
}

pub(crate) fn pod_status(pod: &Value) -> (String, i64, usize, usize) {
    let mut reason = s(pod, "/status/phase").to_owned();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_owned();
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    for cs in &statuses {
        restarts += n(cs, "/restartCount");
        if cs.get("ready").and_then(Value::as_bool) == Some(true) {
            ready += 1;
        }
        let waiting = s(cs, "/state/waiting/reason");
        let terminated = s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_owned();
        } else if !terminated.is_empty() {
            reason = terminated.to_owned();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        reason = "Terminating".into();
    }
    (reason, restarts, ready, total)
}

/// The cells of a type without columns of its own: its name and age.
pub(crate) fn name_and_age(obj: &Value, now: i64) -> Vec<Value> {
    vec![json!(s(obj, "/metadata/name")), json!(age_of(obj, "/metadata/creationTimestamp", now))]
}

fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// Builds a Table for `objects` with their type's `columns` (its strategy's), each row's
/// cells from `cells` (given the object and now, in seconds). `with_columns` is false for
/// watch events after the first, which upstream sends without column definitions.
pub fn table(
    columns: &[Column],
    cells: &dyn Fn(&Value, i64) -> Vec<Value>,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Value,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let column_defs: Vec<Value> = if with_columns {
        columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(obj, now)});
            if let Some(object) = row_object(obj, include) {
                row["object"] = object;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
            (3 * 365 * 86400, "3y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows_have_kubectl_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        use crate::strategy::Strategy;
        let pods = &crate::registry::core::pod::Pods;
        let t = table(
            &pods.columns(),
            &|o, now| pods.cells(o, now),
            &[pod],
            IncludeObject::Metadata,
            json!({"resourceVersion": "5"}),
            true,
        );
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
