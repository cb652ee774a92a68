//! PriorityLevelConfiguration: a share of the server's concurrency.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The PriorityLevelConfigurations strategy.
#[derive(Debug)]
pub struct PriorityLevelConfigurations;

impl Strategy for PriorityLevelConfigurations {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Type", "string", 0),
            col("NominalConcurrencyShares", "string", 0),
            col("Queues", "string", 0),
            col("HandSize", "string", 0),
            col("QueueLengthLimit", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let number = |p: &str| {
            obj.pointer(p).and_then(Value::as_i64).map_or_else(|| json!("<none>"), |v| json!(v))
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/type")),
            number("/spec/limited/nominalConcurrencyShares"),
            number("/spec/limited/limitResponse/queuing/queues"),
            number("/spec/limited/limitResponse/queuing/handSize"),
            number("/spec/limited/limitResponse/queuing/queueLengthLimit"),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
