//! ValidatingAdmissionPolicy: CEL validations (stored and served).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ValidatingAdmissionPolicies strategy.
#[derive(Debug)]
pub struct ValidatingAdmissionPolicies;

impl Strategy for ValidatingAdmissionPolicies {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Validations", "integer", 0), col("ParamKind", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let validations =
            obj.pointer("/spec/validations").and_then(Value::as_array).map_or(0, Vec::len);
        let param = match obj.pointer("/spec/paramKind") {
            Some(p) if !p.is_null() => format!("{}/{}", s(p, "/apiVersion"), s(p, "/kind")),
            _ => "<unset>".to_owned(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(validations),
            json!(param),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
