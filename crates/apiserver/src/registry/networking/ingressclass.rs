//! IngressClass: which controller serves Ingresses of a class.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The IngressClasses strategy.
#[derive(Debug)]
pub struct IngressClasses;

impl Strategy for IngressClasses {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Controller", "string", 0), col("Parameters", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let parameters = match s(obj, "/spec/parameters/name") {
            "" => "<none>".to_owned(),
            name => format!("{}/{name}", s(obj, "/spec/parameters/kind")),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/controller")),
            json!(parameters),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
