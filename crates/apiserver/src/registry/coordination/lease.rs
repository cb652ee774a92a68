//! Lease: leader election and node heartbeats.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The Leases strategy.
#[derive(Debug)]
pub struct Leases;

impl Strategy for Leases {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Holder", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/holderIdentity")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
