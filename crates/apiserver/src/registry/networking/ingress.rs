//! Ingress: `kubectl get ingress` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The Ingress strategy.
#[derive(Debug)]
pub struct Ingresses;

impl Strategy for Ingresses {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let hosts: Vec<&str> = obj
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| s(r, "/host"))
            .filter(|h| !h.is_empty())
            .collect();
        let hosts = if hosts.is_empty() { "*".to_owned() } else { hosts.join(",") };
        let address: Vec<&str> = obj
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|i| s(i, "/ip")).collect())
            .unwrap_or_default();
        let tls = obj.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(s(obj, "/spec/ingressClassName").to_owned())),
            json!(hosts),
            json!(address.join(",")),
            json!(if tls { "80, 443" } else { "80" }),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
