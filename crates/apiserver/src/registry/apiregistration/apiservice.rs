//! APIService: a group/version served locally or by an aggregated server.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The APIServices strategy.
#[derive(Debug)]
pub struct APIServices;

impl Strategy for APIServices {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Service", "string", 0), col("Available", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let service = match obj.pointer("/spec/service") {
            Some(svc) if !svc.is_null() => format!("{}/{}", s(svc, "/namespace"), s(svc, "/name")),
            _ => "Local".to_owned(),
        };
        let available = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| s(c, "/type") == "Available"))
            .map_or_else(
                || "Unknown".to_owned(),
                |c| match (s(c, "/status"), s(c, "/reason")) {
                    ("True", _) => "True".to_owned(),
                    (status, "") => status.to_owned(),
                    (status, reason) => format!("{status} ({reason})"),
                },
            );
        vec![
            json!(s(obj, "/metadata/name")),
            json!(service),
            json!(available),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
