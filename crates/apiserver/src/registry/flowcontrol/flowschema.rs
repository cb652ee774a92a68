//! FlowSchema: which requests go to which priority level.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The FlowSchemas strategy.
#[derive(Debug)]
pub struct FlowSchemas;

impl Strategy for FlowSchemas {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("PriorityLevel", "string", 0),
            col("MatchingPrecedence", "string", 0),
            col("DistinguisherMethod", "string", 0),
            AGE,
            col("MissingPL", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let dangling = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| s(c, "/type") == "Dangling"))
            .map_or("?", |c| s(c, "/status"));
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/priorityLevelConfiguration/name")),
            json!(n(obj, "/spec/matchingPrecedence")),
            json!(or_none(s(obj, "/spec/distinguisherMethod/type").to_owned())),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(dangling),
        ]
    }
}
