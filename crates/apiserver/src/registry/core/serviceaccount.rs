//! ServiceAccount: `kubectl get sa` shows its secrets.

use serde_json::{Value, json};

use crate::strategy::{Strategy, Subresource};
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The ServiceAccount strategy.
#[derive(Debug)]
pub struct ServiceAccounts;

impl Strategy for ServiceAccounts {
    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "token",
            kind: Some(("authentication.k8s.io", "v1", "TokenRequest")),
            verbs: &["create"],
        }]
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Secrets", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let secrets = obj.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
        vec![
            json!(s(obj, "/metadata/name")),
            json!(secrets.to_string()),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
