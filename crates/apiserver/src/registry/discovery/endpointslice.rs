//! EndpointSlice: `kubectl get endpointslices` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The EndpointSlices strategy.
#[derive(Debug)]
pub struct EndpointSlices;

impl Strategy for EndpointSlices {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let ports: Vec<String> = obj
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| n(p, "/port").to_string())
            .collect();
        let addresses: Vec<&str> = obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
            .collect();
        let endpoints = if addresses.len() > 3 {
            format!("{} + {} more...", addresses[..3].join(","), addresses.len() - 3)
        } else {
            addresses.join(",")
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/addressType")),
            json!(or_none(ports.join(",")).replace("<none>", "<unset>")),
            json!(or_none(endpoints).replace("<none>", "<unset>")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
