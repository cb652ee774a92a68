//! Event (`events.k8s.io/v1`): the core group's events in their newer shape, over the same
//! storage (a write in either version reads back in the other), served with the core Event's
//! strategy (its columns and selectable fields read both shapes).

use serde_json::{Map, Value};

pub use crate::registry::core::event::Events;

/// Core field ↔ events.k8s.io field, for the fields that only changed name.
const RENAMED: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(object: Value, forward: bool) -> Value {
    let Value::Object(map) = object else { return object };
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        let renamed = RENAMED.iter().find_map(|(core, events)| {
            let (from, to) = if forward { (core, events) } else { (events, core) };
            (key == *from).then_some(*to)
        });
        out.insert(renamed.map_or(key, str::to_owned), value);
    }
    Value::Object(out)
}

/// A stored (core/v1) event as events.k8s.io/v1 shows it.
pub(crate) fn from_core(object: Value) -> Value {
    let mut out = rename(object, true);
    if let Some(map) = out.as_object_mut() {
        // events.k8s.io requires an eventTime; upstream fills it from the old timestamps.
        if map.get("eventTime").is_none_or(Value::is_null) {
            let when = ["deprecatedFirstTimestamp", "deprecatedLastTimestamp"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str))
                .or_else(|| {
                    map.get("metadata")
                        .and_then(|m| m.get("creationTimestamp"))
                        .and_then(Value::as_str)
                })
                .map(|t| t.replace('Z', ".000000Z"));
            if let Some(when) = when {
                map.insert("eventTime".into(), Value::String(when));
            }
        }
    }
    out
}

/// An events.k8s.io/v1 event as core/v1 stores it.
pub(crate) fn to_core(object: Value) -> Value {
    let mut out = rename(object, false);
    if let Some(map) = out.as_object_mut() {
        map.insert("apiVersion".into(), Value::String("v1".into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_back_in_either_version() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started", "message": "hi",
            "source": {"component": "kubelet"}, "count": 2, "firstTimestamp": "2026-01-01T00:00:00Z", "type": "Normal"});
        let new = from_core(core.clone());
        assert_eq!(new["regarding"]["name"], "p");
        assert_eq!(new["note"], "hi");
        assert_eq!(new["deprecatedCount"], 2);
        assert_eq!(new["eventTime"], "2026-01-01T00:00:00.000000Z");
        let mut back = to_core(new);
        back.as_object_mut().unwrap().remove("eventTime");
        assert_eq!(back, core);
    }
}
