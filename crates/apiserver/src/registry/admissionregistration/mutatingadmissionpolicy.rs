//! MutatingAdmissionPolicy: CEL mutations (stored and served).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The MutatingAdmissionPolicy strategy.
#[derive(Debug)]
pub struct MutatingAdmissionPolicies;

impl Strategy for MutatingAdmissionPolicies {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Mutations", "integer", 0), col("ParamKind", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let mutations =
            obj.pointer("/spec/mutations").and_then(Value::as_array).map_or(0, Vec::len);
        let param = match obj.pointer("/spec/paramKind") {
            Some(p) if !p.is_null() => format!("{}/{}", s(p, "/apiVersion"), s(p, "/kind")),
            _ => "<unset>".to_owned(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(mutations),
            json!(param),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
