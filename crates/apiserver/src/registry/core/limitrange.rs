//! LimitRange: upstream's defaults for `Container` items (a missing default limit is the
//! max, a missing default request the default limit, else the min); enforced by the
//! LimitRanger admission plugin (`admission/limit_ranger.rs`).

use serde_json::{Value, json};

use crate::strategy::Strategy;

/// The LimitRange strategy.
#[derive(Debug)]
pub struct LimitRanges;

impl Strategy for LimitRanges {
    fn default(&self, object: &mut Value) {
        let Some(limits) = object.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else {
            return;
        };
        for item in limits.iter_mut().filter_map(Value::as_object_mut) {
            if item.get("type").and_then(Value::as_str) != Some("Container") {
                continue;
            }
            let get = |item: &serde_json::Map<String, Value>, f: &str| {
                item.get(f).and_then(Value::as_object).cloned().unwrap_or_default()
            };
            let mut default = get(item, "default");
            for (k, v) in get(item, "max") {
                default.entry(k).or_insert(v);
            }
            let mut request = get(item, "defaultRequest");
            for (k, v) in default.iter().chain(get(item, "min").iter()) {
                request.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if !default.is_empty() {
                item.insert("default".into(), json!(default));
            }
            if !request.is_empty() {
                item.insert("defaultRequest".into(), json!(request));
            }
        }
    }
}
