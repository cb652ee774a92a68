//! Secret: the default type, `stringData` folded into `data`, key names and the 1 MiB limit.

use serde_json::{Value, json};

use crate::registry::core::configmap::{CONFIG_DATA_LIMIT, validate_keys};
use crate::registry::set_default;
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The Secret strategy.
#[derive(Debug)]
pub struct Secrets;

impl Strategy for Secrets {
    fn default(&self, object: &mut Value) {
        let Some(obj) = object.as_object_mut() else { return };
        set_default(obj, "type", json!("Opaque"));
        // stringData is write-only: merge it into data, base64-encoded.
        if let Some(Value::Object(string_data)) = obj.remove("stringData") {
            use base64::Engine;
            let data = obj.entry("data").or_insert_with(|| json!({}));
            if let Some(data) = data.as_object_mut() {
                for (k, v) in string_data {
                    let text = v.as_str().unwrap_or("").to_owned();
                    data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let decoded = |field: &str, base64: bool| {
            object.get(field).and_then(Value::as_object).map_or(0, |m| {
                m.values()
                    .map(|v| {
                        v.as_str().map_or(0, |s| if base64 { s.len() / 4 * 3 } else { s.len() })
                    })
                    .sum::<usize>()
            })
        };
        if decoded("data", true) + decoded("stringData", false) > CONFIG_DATA_LIMIT {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "data",
                format!("Too long: may not be more than {CONFIG_DATA_LIMIT} bytes"),
            ));
        }
        validate_keys(object, &["data", "stringData"], causes);
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        crate::registry::immutable(new, old, "/type", causes);
        if old.get("immutable").and_then(Value::as_bool) == Some(true)
            && (new.get("data") != old.get("data") || new.get("immutable") != old.get("immutable"))
        {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Type", "string", 0), col("Data", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let count = obj.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/type")),
            json!(count.to_string()),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }
}
