//! ValidatingAdmissionPolicyBinding: where a policy applies (stored and served).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ValidatingAdmissionPolicyBindings strategy.
#[derive(Debug)]
pub struct ValidatingAdmissionPolicyBindings;

impl Strategy for ValidatingAdmissionPolicyBindings {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("PolicyName", "string", 0), col("ParamRef", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let param = match obj.pointer("/spec/paramRef") {
            Some(p) if !s(p, "/name").is_empty() => match s(p, "/namespace") {
                "" => format!("*/{}", s(p, "/name")),
                ns => format!("{ns}/{}", s(p, "/name")),
            },
            _ => "<unset>".to_owned(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/policyName")),
            json!(param),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
