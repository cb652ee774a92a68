//! RuntimeClass: which runtime handler runs a pod; the handler is immutable.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The RuntimeClasses strategy.
#[derive(Debug)]
pub struct RuntimeClasses;

impl Strategy for RuntimeClasses {
    fn validate(&self, obj: &Value, causes: &mut Vec<crate::status::Cause>) {
        let handler = s(obj, "/handler");
        if handler.is_empty() {
            causes.push(crate::status::Cause::new(
                "FieldValueRequired",
                "handler",
                "Required value",
            ));
        } else if !crate::strategy::is_dns_label(handler) {
            causes.push(crate::status::Cause::new("FieldValueInvalid", "handler", format!("Invalid value: \"{handler}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")));
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        crate::registry::immutable(new, old, "/handler", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Handler", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/handler")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
