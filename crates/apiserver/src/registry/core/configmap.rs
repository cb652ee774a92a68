//! ConfigMap: key names and upstream's 1 MiB limit on the data.

use serde_json::{Value, json};

use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// Most bytes a ConfigMap's or Secret's data may hold (upstream's `MaxSecretSize`): they are
/// mounted into pods and cached by every node, so the object limit alone is too generous.
pub const CONFIG_DATA_LIMIT: usize = 1024 * 1024;

/// The ConfigMap strategy.
#[derive(Debug)]
pub struct ConfigMaps;

impl Strategy for ConfigMaps {
    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        let size = |field: &str| {
            object
                .get(field)
                .and_then(Value::as_object)
                .map_or(0, |m| m.values().map(|v| v.as_str().map_or(0, str::len)).sum::<usize>())
        };
        // binaryData is base64 in JSON; its decoded size is three quarters of it.
        let total = size("data") + size("binaryData") / 4 * 3;
        if total > CONFIG_DATA_LIMIT {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "[]",
                format!("Too long: may not be more than {CONFIG_DATA_LIMIT} bytes"),
            ));
        }
        validate_keys(object, &["data", "binaryData"], causes);
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        let frozen = old.get("immutable").and_then(Value::as_bool) == Some(true);
        let changed =
            ["data", "binaryData", "immutable"].iter().any(|f| new.get(*f) != old.get(*f));
        if frozen && changed {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Data", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let count = obj.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
            + obj.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(count.to_string()),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}

/// The keys of a ConfigMap's or Secret's maps: what a file name in a volume may be.
pub(crate) fn validate_keys(object: &Value, fields: &[&str], causes: &mut Vec<Cause>) {
    for field in fields {
        if let Some(map) = object.get(*field).and_then(Value::as_object) {
            for key in map.keys() {
                let ok = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && key != "."
                    && key != "..";
                if !ok {
                    causes.push(Cause::new("FieldValueInvalid", &format!("{field}[{key}]"), format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
                }
            }
        }
    }
}
