//! PodDisruptionBudget: `kubectl get pdb` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, s};

/// The PodDisruptionBudgets strategy.
#[derive(Debug)]
pub struct PodDisruptionBudgets;

impl Strategy for PodDisruptionBudgets {
    fn status_keeps_metadata(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let shown = |p: &str| match obj.pointer(p) {
            Some(Value::String(v)) => v.clone(),
            Some(Value::Number(v)) => v.to_string(),
            _ => "N/A".to_owned(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(shown("/spec/minAvailable")),
            json!(shown("/spec/maxUnavailable")),
            json!(n(obj, "/status/disruptionsAllowed")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
