//! Endpoints: `kubectl get endpoints` shows the first addresses and ports.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The Endpoints strategy.
#[derive(Debug)]
pub struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Endpoints", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let mut eps = Vec::new();
        for subset in obj.get("subsets").and_then(Value::as_array).into_iter().flatten() {
            let ports: Vec<i64> = subset
                .get("ports")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| n(p, "/port")).collect())
                .unwrap_or_default();
            for addr in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                if ports.is_empty() {
                    eps.push(s(addr, "/ip").to_owned());
                }
                for p in &ports {
                    eps.push(format!("{}:{p}", s(addr, "/ip")));
                }
            }
        }
        let text = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(text)),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
